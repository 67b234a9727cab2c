"""ProtoNet and MAML on Omniglot, 1- and 5-shot, two seeds: a sweep (8 points).

    python -m experiments.sweep --config=experiments/configs/omniglot_sweep.py[:runlocal] \
        --workdir=workdirs/omniglot_sweep --parallel=2
    python -m experiments.results --workdir=workdirs/omniglot_sweep [--group_by=learner,shots]
    python -m experiments.plot shots --workdir=workdirs/omniglot_sweep

A point is `get_config("learner=L,shots=K[,VARIANT]")`: learner L's own
Omniglot config (protonet_omniglot.py: Snell et al.'s 60-way episodes;
maml_omniglot.py: Finn et al.'s 5-way episodes, inner loop and constant
rate) trained on K-shot episodes and evaluated 5-way K-shot
(train.shots = eval.shots = K; MAML also trains on K queries per class, as
Finn et al.). The sweep sets `arg.learner` and `arg.shots` because the two
learners' configs differ in structure (MAML's learner_kwargs), and `seed`.

Arguments after ':' (comma-separated):
  learner=protonet|maml, shots=K   one point (the sweep sets them)
  runlocal   seconds per point: the learners' runlocal variants
  cpu60      the learners' 60-minute 2-core CPU variants (RESULTS.md; their
             steps fit the hour with 1-shot episodes, 5-shot points take longer)
"""

import ml_collections

from experiments.configs import maml_omniglot, protonet_omniglot
from fsl_jax.train import sweeps

LEARNERS = {"protonet": protonet_omniglot.get_config, "maml": maml_omniglot.get_config}
VARIANTS = {"runlocal": False, "cpu60": False}


def _variant(a) -> str | None:
  if a.runlocal and a.cpu60:
    raise ValueError("Pick one of runlocal and cpu60.")
  return "runlocal" if a.runlocal else "cpu60" if a.cpu60 else None


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = sweeps.parse_arg(arg, learner="protonet", shots=1, **VARIANTS)
  if a.learner not in LEARNERS:
    raise ValueError(f"learner={a.learner!r}: use one of {', '.join(LEARNERS)}.")
  if a.shots < 1:
    raise ValueError(f"shots={a.shots}: use 1 or more.")
  variant = _variant(a)
  c = LEARNERS[a.learner](variant)
  c.train.shots = c.eval.shots = a.shots
  if a.learner == "maml" and variant != "cpu60":  # cpu60 keeps its 3 queries for the hour
    c.train.queries = a.shots
  return c


def get_sweep(arg: str | None = None) -> list[dict]:
  _variant(sweeps.parse_arg(arg, **VARIANTS))
  return sweeps.product({"arg.learner": ["protonet", "maml"], "arg.shots": [1, 5]},
                        seed=range(2))
