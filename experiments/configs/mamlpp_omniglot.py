"""MAML++ + Conv4 on Omniglot (Antoniou et al., 2019).

    python -m experiments.meta_train --config=experiments/configs/mamlpp_omniglot.py[:VARIANT] \
        --workdir=/tmp/mamlpp

Antoniou et al.: 5 inner steps (train and test) with per-layer per-step
learned rates initialised to 0.1, per-step BatchNorm, the multi-step loss
annealed over the first 15 epochs (7,500 steps) and first-order gradients
for the first 50 epochs (25,000 steps), Adam 1e-3 cosine-annealed over 150
epochs of 500 steps, meta-batch 16. Variants: see gradient_omniglot.py.
"""

from experiments.configs import gradient_omniglot


def get_config(arg=None):
  c = gradient_omniglot.build(
      "mamlpp", arg, inner_lr=0.1, inner_steps=5, eval_inner_steps=5, meta_batch=16,
      steps=75000, learner_kwargs={"msl_steps": 7500, "first_order_steps": 25000},
      optimizer={"schedule": "cosine"})
  if arg == "runlocal":
    c.learner_kwargs.msl_steps, c.learner_kwargs.first_order_steps = 4, 3
  return c
