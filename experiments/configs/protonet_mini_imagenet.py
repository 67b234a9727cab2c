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
  words = natural.variants(arg, ("resnet12", "aug", "5shot", "runlocal", "cpu60"))
  c = natural.base("mini_imagenet", 84)
  c.data.imagenet_dir = ""   # an ImageNet train folder, with the split CSVs in data_dir
  shots = 5 if "5shot" in words else 1
  c.train.ways, c.train.shots, c.train.queries = (20 if shots == 5 else 30), shots, 15
  c.eval.shots = shots
  if "resnet12" in words:
    c.model = "resnet12"
    c.model_kwargs.drop_rate = 0.1
    c.train.ways = 5
  if "aug" in words:
    c.train.augment = natural.standard_augment(84)
  if "cpu60" in words:
    c.train.ways, c.train.queries = (5, 6) if "resnet12" in words else (20, 5)
    c.train.steps = 60 if "resnet12" in words else 700
    c.optimizer.schedule = "cosine"
    c.log_every, c.checkpoint_every, c.val_every = 10, 100, 0
  if "runlocal" in words:
    natural.runlocal(c)
  return c
