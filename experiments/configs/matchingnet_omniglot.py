"""Matching Networks + Conv4 on Omniglot (Vinyals et al., 2016), no FCE.

    python -m experiments.meta_train --config=experiments/configs/matchingnet_omniglot.py \
        --workdir=/tmp/matchingnet [--config.train.shots=5 ...]

Omniglot-sensible values rather than the paper's exact recipe: 20-way 1-shot
training episodes with 5 queries per class (Vinyals et al. train with the
test-time way and shot; 20-way is their harder Omniglot task), cosine
attention scaled by 10, Adam 1e-3 halved every 2000 steps as for ProtoNet.

Arguments after ':' pick a variant:
  (none)    the full run: 20-way training episodes, 20k steps
  runlocal  seconds: a handful of tiny steps, for smoke tests
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.learner = "matchingnet"
  c.learner_kwargs = ml_collections.ConfigDict()
  c.learner_kwargs.scale = 10.0   # Vinyals et al.: 1 (plain cosine)
  c.model = "conv4"
  c.model_kwargs = ml_collections.ConfigDict()
  c.devices = 0  # 0 = all local devices (episodes are sharded over them)

  c.data = ml_collections.ConfigDict()
  c.data.name = "omniglot"
  c.data.scheme = "lake"          # lake | vinyals
  c.data.train_split = "train"    # train | trainval
  c.data.val_split = "val"        # '' disables validation
  c.data.image_size = 28
  c.data.rotations = True         # 90/180/270 rotations as extra training classes
  c.data.data_dir = ""            # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.data.download = False

  c.train = ml_collections.ConfigDict()
  c.train.ways = 20
  c.train.shots = 1
  c.train.queries = 5
  c.train.meta_batch = 1
  c.train.steps = 20000

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "step"   # halve every 2000 steps
  c.optimizer.decay_every = 2000
  c.optimizer.decay_rate = 0.5
  c.optimizer.warmup_steps = 0
  c.optimizer.grad_clip = 0.0

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.ways = 5
  c.eval.shots = 1
  c.eval.queries = 15
  c.eval.episodes = 1000
  c.eval.seed = 1234

  c.log_every = 100
  c.val_every = 2000
  c.val_episodes = 200
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3

  if arg == "runlocal":
    c.train.ways, c.train.steps, c.train.meta_batch = 5, 6, 2
    c.eval.episodes, c.log_every, c.checkpoint_every = 20, 2, 3
    c.val_every, c.val_episodes = 4, 10
    c.model_kwargs.hidden = 8
  elif arg:
    raise ValueError(f"Unknown variant {arg!r}; use runlocal.")
  return c
