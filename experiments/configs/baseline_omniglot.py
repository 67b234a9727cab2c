"""Baseline++ + Conv4 on Omniglot (Chen et al., 2019): pretrain, then fine-tune.

    python -m experiments.meta_train --config=experiments/configs/baseline_omniglot.py \
        --workdir=/tmp/baseline [--config.train.shots=5 ...]

Training is plain classification over all 3168 training classes (792 lake
`train` characters x 4 rotations) with a cosine classifier; the "episodes"
are class-balanced minibatches of 32 classes x 4 images. Evaluation fits a
new 5-way cosine classifier on each episode's support set (100 Adam steps,
lr 0.01) on the frozen backbone. Chen et al.'s values where they apply (Adam
1e-3, scale 10 for many classes), Omniglot-sensible ones elsewhere.

`learner_kwargs.num_classes` must match `data.train_split` and
`data.rotations`: the global class ids are r * C + c. If it is too small the
training loss is NaN from the first step.

Arguments after ':' pick a variant:
  (none)    the full run: 20k steps of 128-image batches
  runlocal  seconds: a handful of tiny steps, for smoke tests
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.learner = "baseline"
  c.learner_kwargs = ml_collections.ConfigDict()
  # Lake `train`: 792 classes x 4 rotations. Use 964 * 4 = 3856 with
  # data.train_split = 'trainval'; C (no x4) with data.rotations = False.
  c.learner_kwargs.num_classes = 792 * 4
  c.learner_kwargs.scale = 10.0
  c.learner_kwargs.finetune_steps = 100
  c.learner_kwargs.finetune_lr = 0.01
  c.model = "conv4"
  c.model_kwargs = ml_collections.ConfigDict()
  c.devices = 0  # 0 = all local devices (episodes are sharded over them)

  c.data = ml_collections.ConfigDict()
  c.data.name = "omniglot"
  c.data.scheme = "lake"          # lake | vinyals
  c.data.train_split = "train"    # train | trainval (then num_classes = 3856)
  c.data.val_split = "val"        # '' disables validation
  c.data.image_size = 28
  c.data.rotations = True         # 90/180/270 rotations as extra training classes
  c.data.data_dir = ""            # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.data.download = False

  # A class-balanced minibatch: 32 classes x (1 + 3) images; shots and
  # queries play the same role in training.
  c.train = ml_collections.ConfigDict()
  c.train.ways = 32
  c.train.shots = 1
  c.train.queries = 3
  c.train.meta_batch = 1
  c.train.steps = 20000

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "constant"
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
    # The synthetic Omniglot of fsl_jax.data.testing (mock_omniglot defaults)
    # has 20 lake `train` classes: 20 x 4 rotations.
    c.learner_kwargs.num_classes = 20 * 4
  elif arg:
    raise ValueError(f"Unknown variant {arg!r}; use runlocal.")
  return c
