"""First-order MAML + Conv4 on Omniglot: Finn et al.'s MAML settings, first order.

    python -m experiments.meta_train --config=experiments/configs/fomaml_omniglot.py[:VARIANT] \
        --workdir=/tmp/fomaml

Variants: see gradient_omniglot.py.
"""

from experiments.configs import gradient_omniglot


def get_config(arg=None):
  return gradient_omniglot.build(
      "fomaml", arg,
      # cpu60: every task adapts from a zero head (Kao et al.'s zeroing
      # trick), whose first step's logits scale with the inner rate: 1.0
      # learned faster than Finn et al.'s 0.4 or 2.0 (RESULTS.md).
      cpu60={"train.steps": 8000, "train.meta_batch": 8, "train.queries": 3,
             "optimizer.schedule": "cosine", "learner_kwargs.zero_head": True,
             "learner_kwargs.inner_lr": 1.0})
