r"""SimpleShot on a pretrained backbone, with or without episodic fine-tuning on the base classes.

No training (the frozen ImageNet backbone, nearest centroid on centred,
L2-normalised features):

    python -m experiments.evaluate --model=efficientnet_lite0 --dataset=tiny_imagenet \
        --data_dir=../shared/data/images/tiny-imagenet-200.zip --method=simpleshot --shots=1

Trained: the backbone tuned on base-class episodes with SimpleShot's own
rule as the loss (its logits, minus squared distances of normalised features
in [-4, 0], scaled by `learner_kwargs.scale`), then evaluated the same way:

    python -m experiments.meta_train --config=experiments/configs/simpleshot_pretrained.py:cpu60 \
        --workdir=DIR --config.data.data_dir=../shared/data/images/tiny-imagenet-200.zip

The backbone, its pretrained initialisation, frozen BatchNorm and frozen
early blocks are `natural.pretrained`'s (as pmf.py). Variants: runlocal, cpu60, vit.
"""

from experiments.configs import natural


def get_config(arg: str | None = None):
  c, _ = natural.pretrained("simpleshot", arg)
  c.learner_kwargs.scale = 10.0  # logits in [-40, 0]: a softmax that can be confident
  return c
