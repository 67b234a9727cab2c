r"""ProtoNet on CIFAR-FS (Bertinetto et al. 2019: CIFAR-100 classes split 64/16/20), 32x32.

    python -m experiments.meta_train --config=experiments/configs/protonet_cifar_fs.py \
        --workdir=DIR [--config.data.data_dir=TFDS_DIR] [--config.data.download=True]

Reads TFDS `cifar100` (train and test records of each class together, 600
per class). The recipe is the one MetaOptNet (Lee et al. 2019) trained its
heads with on CIFAR-FS: ResNet-12 (here with average pooling), 5-way 5-shot
training episodes with 6 queries, 8 episodes per step, SGD (Nesterov 0.9,
weight decay 5e-4) at 0.1 dropped x0.06, x0.2, x0.2 after 20, 40 and 50
epochs of 1000 steps, random crop / colour jitter / flip augmentation.
Published with Conv4 (Bertinetto et al., REFERENCE.md): ProtoNet 55.5 / 72.0
(5-way 1/5-shot).

Variants: conv4 (Conv4 instead of ResNet-12), runlocal, cpu60.
"""

from experiments.configs import natural


def get_config(arg: str | None = None):
  words = natural.variants(arg, ("conv4", "runlocal", "cpu60"))
  c = natural.base("cifar_fs", 32)
  c.model = "conv4" if "conv4" in words else "resnet12"
  if c.model == "resnet12":
    c.model_kwargs.drop_rate = 0.1
  c.train.ways, c.train.shots, c.train.queries, c.train.meta_batch = 5, 5, 6, 8
  c.train.steps = 60000
  c.train.augment = natural.standard_augment(32)
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "piecewise"
  c.optimizer.boundaries = (20000, 40000, 50000)
  c.optimizer.scales = (0.06, 0.2, 0.2)
  c.val_every, c.checkpoint_every = 1000, 1000
  if "cpu60" in words:
    c.train.meta_batch, c.train.steps = 1, 400
    c.optimizer.boundaries, c.log_every, c.val_every = (200, 300, 350), 20, 0
  if "runlocal" in words:
    natural.runlocal(c)
    c.train.shots, c.optimizer.boundaries = 1, (2, 3, 4)
  return c
