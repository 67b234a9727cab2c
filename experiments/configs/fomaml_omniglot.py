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
      # trick), so the learner takes any ways and trains, like Snell et al.'s
      # ProtoNet, on 60-way 1-shot tasks (3 queries per class), tested 5-way.
      # From a zero head one step's logits scale with inner_lr / ways: 12.0
      # is 5-way's 1.0, which learned faster than Finn et al.'s 0.4 or 2.0.
      # One inner step at test too: from a zero head it is a prototype
      # classifier whatever the rate, and it beat 3 steps on the validation
      # alphabets (RESULTS.md).
      cpu60={"train.steps": 7000, "train.meta_batch": 1, "train.queries": 3,
             "train.ways": 60, "optimizer.schedule": "cosine",
             "learner_kwargs.ways": 60, "learner_kwargs.zero_head": True,
             "learner_kwargs.inner_lr": 12.0, "learner_kwargs.eval_inner_steps": 1})
