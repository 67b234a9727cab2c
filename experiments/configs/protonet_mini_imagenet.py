r"""ProtoNet on mini-ImageNet (Ravi & Larochelle's split: 64/16/20 classes x 600, 84x84).

    python -m experiments.meta_train --config=experiments/configs/protonet_mini_imagenet.py \
        --workdir=DIR --config.data.data_dir=PATH

PATH holds mini-imagenet-cache-{train,val,test}.pkl, or images/ with
train.csv/val.csv/test.csv; or set --config.data.imagenet_dir to an ImageNet
train folder beside the CSVs (fsl_jax/data/mini_imagenet.py). The split is
38,400 training images, 813 MB as uint8: auto placement keeps it on a
device with >= 3.2 GB and samples on the host otherwise.

Snell et al.'s recipe: Conv4, 30-way 1-shot (20-way 5-shot) training
episodes with 15 queries, Adam 1e-3 halved every 2000 steps; published
49.42 ± 0.78 / 68.20 ± 0.66 (5-way 1/5-shot, REFERENCE.md).

Variants: resnet12 (5-way episodes, ResNet-12), aug, 5shot, runlocal, cpu60.
"""

from experiments.configs import natural


def get_config(arg: str | None = None):
  c, words = natural.snell("mini_imagenet", 84, arg)
  c.data.imagenet_dir = ""   # an ImageNet train folder, with the split CSVs in data_dir
  if "cpu60" in words:
    c.train.steps = 60 if "resnet12" in words else 700
    c.log_every, c.checkpoint_every, c.val_every = 10, 100, 0
  if "runlocal" in words:
    natural.runlocal(c)
  return c
