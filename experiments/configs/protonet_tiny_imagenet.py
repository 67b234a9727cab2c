r"""ProtoNet on Tiny ImageNet's few-shot split (120 base / 40 val / 40 novel wnids).

    python -m experiments.meta_train \
        --config=experiments/configs/protonet_tiny_imagenet.py[:VARIANTS] --workdir=DIR \
        --config.data.data_dir=../shared/data/images/tiny-imagenet-200.zip

The split is fixed in fsl_jax/data/tiny_imagenet.py; images at their native
64x64. The recipe is Snell et al.'s for mini-ImageNet (Conv4, higher-way
training episodes: 30-way 1-shot / 20-way 5-shot, 15 queries, Adam 1e-3
halved every 2000 steps), evaluated 5-way on the novel classes with 1,000
fixed-seed episodes.

Variants (comma-separated after ':'):
  resnet12  the ResNet-12 backbone (64-160-320-640, DropBlock) with 5-way training
  aug       training augmentation: random crop (pad 8), colour jitter, flip
  5shot     5-shot training and evaluation
  runlocal  seconds: a few tiny steps, for smoke tests
  cpu60     the 60-minute 2-core CPU budget of RESULTS.md (steps measured there)
"""

from experiments.configs import natural


def get_config(arg: str | None = None):
  c, words = natural.snell("tiny_imagenet", 64, arg)
  if "cpu60" in words:
    # Fits the hour on 2 cores (RESULTS.md has the measured steps/s).
    c.train.steps = 150 if "resnet12" in words else 2200
    c.log_every = 10 if "resnet12" in words else 50
    c.checkpoint_every, c.val_every, c.val_episodes = 100, 0, 0
  if "runlocal" in words:
    natural.runlocal(c)
  return c
