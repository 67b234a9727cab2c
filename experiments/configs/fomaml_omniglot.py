"""First-order MAML + Conv4 on Omniglot: Finn et al.'s MAML settings, first order.

    python -m experiments.meta_train --config=experiments/configs/fomaml_omniglot.py[:VARIANT] \
        --workdir=/tmp/fomaml

Variants: see gradient_omniglot.py. `cpu60` trains with 3 inner steps (the
test-time count) instead of Finn et al.'s 1: the first-order gradient carries
the term that rewards adaptation (E[H_q g_s], Nichol et al., 2018) once per
inner step, so one step gives it half of second-order MAML's weight, while
each extra first-order step costs only a support-batch forward and backward.
"""

from experiments.configs import gradient_omniglot


def get_config(arg=None):
  return gradient_omniglot.build(
      "fomaml", arg, cpu60={"train.steps": 4500, "train.meta_batch": 8, "train.queries": 3,
             "learner_kwargs.inner_steps": 3, "optimizer.schedule": "cosine"})
