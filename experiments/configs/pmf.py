r"""P>M>F (Hu et al., CVPR 2022): pretrain, meta-train a ProtoNet, fine-tune on each episode.

    python -m experiments.meta_train --config=experiments/configs/pmf.py[:VARIANTS] \
        --workdir=DIR --config.data.data_dir=../shared/data/images/tiny-imagenet-200.zip
    # M: the meta-trained ProtoNet; F: the same checkpoint fine-tuned on each episode
    python -m experiments.evaluate --workdir=DIR --shots=1 --episodes=1000
    python -m experiments.evaluate --workdir=DIR --shots=1 --episodes=1000 --method=finetune \
        --learner_kwarg=lr=0.01

P: an ImageNet-pretrained backbone from the weight registry
(`--config.model`, default efficientnet_lite0_imagenet: the real ImageNet
CNN reachable here; the paper's DINO ViTs need weights no package carries).
M: ProtoNet episodes on the base classes from those weights (`init_weights`),
the backbone's BatchNorm at its pretrained statistics, the stem and first ten
blocks frozen, Adam 1e-4 cosine-decayed. F: `fsl_jax.meta.finetune`, 50 SGD
steps (momentum 0.9) on each test episode's augmented support set, the rate
chosen on the validation classes from {0, 1e-4, 1e-3, 1e-2} as the paper does
(`--split=val --learner_kwarg=lr=...`).

ImageNet weights have seen every Tiny ImageNet class: rows on it measure
transfer, not novelty; cross-domain rows (NEU-DET, LFW) stand beside them.

Variants: runlocal (seconds, random weights), cpu60 (the 2-core hour of RESULTS.md), vit
(the paper's DINO ViT-S/16 from --config.init_weights=FOLDER, a GPU run; natural.pretrained).
"""

from experiments.configs import natural


def get_config(arg: str | None = None):
  c, _ = natural.pretrained("protonet", arg)
  c.learner_kwargs.temperature = 64.0  # as the ResNet-12 ProtoNet: 1280-d features are large
  return c
