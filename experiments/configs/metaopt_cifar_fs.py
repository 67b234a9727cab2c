r"""MetaOptNet-SVM on CIFAR-FS (Lee et al. 2019): ResNet-12 + a differentiable multi-class SVM.

    python -m experiments.meta_train --config=experiments/configs/metaopt_cifar_fs.py \
        --workdir=DIR [--config.data.data_dir=TFDS_DIR]

The same body as protonet_cifar_fs.py (MetaOptNet trained both the same
way): 5-way 5-shot training episodes with 6 queries, 8 per step, SGD
Nesterov 0.1 with their piecewise schedule, crop / jitter / flip
augmentation; the head is fsl_jax/meta/metaopt.py (C = 0.1). Published
(REFERENCE.md): 72.0 ± 0.7 / 84.2 ± 0.5 (5-way 1/5-shot). Not reproduced
here: their label smoothing (0.1) and their wider 5-shot-trained-for-1-shot protocol.

Variants: conv4, runlocal, cpu60.
"""

from experiments.configs import protonet_cifar_fs


def get_config(arg: str | None = None):
  c = protonet_cifar_fs.get_config(arg)
  c.learner = "metaopt"
  c.learner_kwargs.C = 0.1
  return c
