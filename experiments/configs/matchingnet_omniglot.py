"""Matching Networks + Conv4 on Omniglot (Vinyals et al., 2016), no FCE.

    python -m experiments.meta_train --config=experiments/configs/matchingnet_omniglot.py \
        --workdir=/tmp/matchingnet [--config.train.shots=5 ...]

Omniglot-sensible values rather than the paper's exact recipe: 20-way 1-shot
training episodes with 5 queries per class (Vinyals et al. train with the
test-time way and shot; 20-way is their harder Omniglot task), cosine
attention scaled by 10, Adam 1e-3 halved every 2000 steps as for ProtoNet.

Arguments after ':' pick a variant:
  (none)    the full run: 20-way training episodes, 20k steps
  runlocal  seconds: a handful of tiny steps, for smoke tests
"""

from experiments.configs import protonet_omniglot


def get_config(arg: str | None = None):
  if arg not in (None, "", "runlocal"):
    raise ValueError(f"Unknown variant {arg!r}; use runlocal.")
  c = protonet_omniglot.get_config(arg)  # the same episodic body and runlocal variant
  c.learner = "matchingnet"
  c.learner_kwargs.scale = 10.0   # Vinyals et al.: 1 (plain cosine)
  if not arg:
    c.train.ways = 20
  return c
