"""R2D2 + Conv4 on Omniglot (Bertinetto et al., 2019): a ridge-regression head.

    python -m experiments.meta_train --config=experiments/configs/r2d2_omniglot.py \
        --workdir=/tmp/r2d2 [--config.train.shots=5 ...]

Omniglot-sensible values rather than the paper's exact recipe (which uses a
wider backbone and concatenates two layers' features): Conv4's 64-d
embeddings, 20-way 1-shot training episodes with 5 queries per class,
lambda initialised to 1 and the logit scale to 10 (both learnt, as is the
bias), Adam 1e-3 halved every 2000 steps as for ProtoNet.

Arguments after ':' pick a variant:
  (none)    the full run: 20-way training episodes, 20k steps
  runlocal  seconds: a handful of tiny steps, for smoke tests
"""

from experiments.configs import protonet_omniglot


def get_config(arg: str | None = None):
  if arg not in (None, "", "runlocal"):
    raise ValueError(f"Unknown variant {arg!r}; use runlocal.")
  c = protonet_omniglot.get_config(arg)  # the same episodic body and runlocal variant
  c.learner = "r2d2"
  c.learner_kwargs.init_lambda = 1.0   # ridge penalty; learnt as log_lambda
  c.learner_kwargs.init_scale = 10.0   # logit scale; learnt
  if not arg:
    c.train.ways = 20
  return c
