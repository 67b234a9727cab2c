"""Reptile + Conv4 on Omniglot (Nichol et al., 2018).

    python -m experiments.meta_train --config=experiments/configs/reptile_omniglot.py[:VARIANT] \
        --workdir=/tmp/reptile

Nichol et al. (transductive Omniglot): 5 inner steps on the task's data,
meta-batch 5, meta step size 1.0 annealed to 0, 100k steps, 50 inner steps
at test. Our inner optimizer is plain SGD (lr 0.1) where theirs is Adam, and
the step size anneals by a cosine rather than linearly. The meta step is
`optimizer=sgd` on the surrogate gradient params - fast params.
Variants: see gradient_omniglot.py.
"""

from experiments.configs import gradient_omniglot


def get_config(arg=None):
  return gradient_omniglot.build(
      "reptile", arg, inner_lr=0.1, inner_steps=5, eval_inner_steps=50, meta_batch=5,
      steps=100000, optimizer={"name": "sgd", "learning_rate": 1.0, "schedule": "cosine",
                               "momentum": 0.0})
