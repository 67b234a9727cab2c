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
  cpu60     the 60-minute 2-core CPU budget of RESULTS.md (steps measured there;
            ResNet-12 at 32x32 input there)
"""

from experiments.configs import natural


def get_config(arg: str | None = None):
  c, words = natural.snell("tiny_imagenet", 64, arg)
  if "cpu60" in words:
    # Fits the hour on 2 cores (RESULTS.md has the measured steps/s).
    c.train.steps, c.log_every = 2200, 50
    # Validation on the 40 val classes picks the checkpoint and the setting
    # (aug or not); each image is embedded once, so 1,000 val episodes take
    # seconds (Conv4) to ~45 s (ResNet-12) of the hour.
    c.checkpoint_every, c.val_every, c.val_episodes = 275, 275, 1000
    c.keep_checkpoints = 9
    if "resnet12" in words:
      # A ResNet-12 step at 64x64 takes 6.1 s here (360 steps an hour); at 32x32
      # (the CIFAR-FS input of MetaOptNet's ResNet-12) 1.4 s, so the hour holds
      # 2,200 steps. DropBlock's 2x2 blocks are MetaOptNet's for 32x32 input.
      c.data.image_size, c.model_kwargs.block_size = 32, 2
      if "aug" in words:
        c.train.augment = natural.standard_augment(32)
  if "runlocal" in words:
    natural.runlocal(c)
  return c
