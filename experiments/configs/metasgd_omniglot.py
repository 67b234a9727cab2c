"""Meta-SGD + Conv4 on Omniglot (Li et al., 2017): one inner step with a learned
learning rate per parameter (initialised to MAML's 0.4), Adam 1e-3.

    python -m experiments.meta_train --config=experiments/configs/metasgd_omniglot.py[:VARIANT] \
        --workdir=/tmp/metasgd

Variants: see gradient_omniglot.py.
"""

from experiments.configs import gradient_omniglot


def get_config(arg=None):
  return gradient_omniglot.build("metasgd", arg, inner_steps=1, eval_inner_steps=1)
