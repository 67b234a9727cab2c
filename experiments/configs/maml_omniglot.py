"""MAML + Conv4 on Omniglot (Finn et al., 2017), second order.

    python -m experiments.meta_train --config=experiments/configs/maml_omniglot.py[:VARIANT] \
        --workdir=/tmp/maml

Finn et al.: 5-way 1-shot, inner SGD lr 0.4, 1 inner step while training and
3 at test, meta-batch 32, Adam 1e-3, 60k steps; 20-way (':20way'): 5 steps of
lr 0.1, meta-batch 16. Variants: see gradient_omniglot.py.
"""

from experiments.configs import gradient_omniglot


def get_config(arg=None):
  # cpu60: 11,000 steps fit the hour since the CPU takes the gradient in
  # chunks of two tasks (~32 tasks/s; 6,000 steps at ~15 before, RESULTS.md).
  return gradient_omniglot.build(
      "maml", arg, cpu60={"train.steps": 11000, "train.meta_batch": 8, "train.queries": 3,
             "optimizer.schedule": "cosine"})
