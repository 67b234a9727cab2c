"""First-order MAML + Conv4 on Omniglot: Finn et al.'s MAML settings, first order.

    python -m experiments.meta_train --config=experiments/configs/fomaml_omniglot.py[:VARIANT] \
        --workdir=/tmp/fomaml

Variants: see gradient_omniglot.py.
"""

from experiments.configs import gradient_omniglot


def get_config(arg=None):
  return gradient_omniglot.build(
      "fomaml", arg, cpu60={"train.steps": 8000, "train.meta_batch": 8, "train.queries": 3,
             "optimizer.schedule": "step", "optimizer.decay_every": 3000})
