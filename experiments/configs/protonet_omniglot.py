"""ProtoNet + Conv4 on Omniglot (Snell et al., 2017).

    python -m experiments.meta_train --config=experiments/configs/protonet_omniglot.py \
        --workdir=/tmp/protonet [--config.train.shots=5 ...]

Arguments after ':' pick a variant:
  (none)    the full run: 60-way training episodes, 20k steps
  runlocal  seconds: a handful of tiny steps, for smoke tests
  demo      `make demo`: a few minutes on a 2-core CPU
  cpu60     the 60-minute 2-core CPU budget of RESULTS.md
"""

import ml_collections

from experiments.configs import natural


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = natural.base("omniglot", 28)  # the episodic body every meta-learning config shares
  c.data.scheme = "lake"          # lake | vinyals
  c.data.rotations = True         # 90/180/270 rotations as extra training classes
  # data.data_dir '' = $TFDS_DATA_DIR or ~/tensorflow_datasets. Your own images
  # (data.name = image_folder | omniglot_folder; fsl_jax/data/folders.py): one
  # folder (or .zip) per split in data.train_dir / val_dir / test_dir;
  # omniglot_folder reads alphabet/characterNN/*.png.

  # Snell et al.: 60-way training episodes, 5 queries/class, shots matching test;
  # Adam 1e-3 halved every 2000 steps (the body's optimizer).
  c.train.ways, c.train.queries = 60, 5

  if arg == "runlocal":
    c.train.ways, c.train.steps, c.train.meta_batch = 5, 6, 2
    c.eval.episodes, c.log_every, c.checkpoint_every = 20, 2, 3
    c.val_every, c.val_episodes = 4, 10
    c.model_kwargs.hidden, c.model_kwargs.num_blocks = 8, 2  # seconds to compile
  elif arg == "demo":
    c.train.ways, c.train.steps = 20, 500
    c.optimizer.decay_every = 200
    c.log_every, c.checkpoint_every, c.val_every = 50, 200, 0
  elif arg == "cpu60":
    c.data.train_split, c.data.val_split = "trainval", ""
    # Snell's 60-way 1-shot episodes with 2 queries per class instead of 5
    # (180 images, half of Snell's 360), and a cosine decay of the rate to 0
    # over 7600 steps, which fits the hour on 2 cores (RESULTS.md; Snell's
    # halving every 2000 steps over 8000 reached 93.7% 20-way 1-shot).
    c.train.ways, c.train.queries = 60, 2
    c.train.steps = 7600
    c.optimizer.schedule = "cosine"
    c.log_every, c.checkpoint_every, c.val_every = 50, 400, 0
  elif arg:
    raise ValueError(f"Unknown variant {arg!r}; use runlocal, demo or cpu60.")
  return c
