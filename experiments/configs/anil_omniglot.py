"""ANIL + Conv4 on Omniglot (Raghu et al., 2020): MAML's settings, only the head adapts.

    python -m experiments.meta_train --config=experiments/configs/anil_omniglot.py[:VARIANT] \
        --workdir=/tmp/anil

Variants: see gradient_omniglot.py.
"""

from experiments.configs import gradient_omniglot


def get_config(arg=None):
  return gradient_omniglot.build("anil", arg)
