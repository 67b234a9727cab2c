"""Shared body of the gradient-based meta-learner configs on Omniglot.

Not a config itself: `maml_omniglot.py`, `fomaml_omniglot.py`, ... call
`build(learner, arg, ...)` with their published hyper-parameters. Variants
(the part after ':' in --config=...:VARIANT):
  (none)    the published protocol (Finn et al.: 5-way 1-shot, meta-batch 32,
            60k steps)
  20way     Finn et al.'s 20-way 1-shot: 5 inner steps of lr 0.1, meta-batch 16
  cpu60     the 60-minute 2-core CPU budget of RESULTS.md: all 964 background
            characters (trainval), meta-batch 8, 3 queries per class, a shorter
            schedule (RESULTS.md)
  runlocal  seconds: a handful of tiny steps, for smoke tests
"""

import ml_collections

from experiments.configs import protonet_omniglot


def build(learner: str, arg: str | None, *, inner_lr=0.4, inner_steps=1, eval_inner_steps=3,
          meta_batch=32, steps=60000, learner_kwargs=None, optimizer=None,
          cpu60=None) -> ml_collections.ConfigDict:
  # The episodic body (data, evaluation, logging, checkpoints) is ProtoNet's;
  # what differs is the learner, Finn et al.'s episodes and a constant rate.
  c = protonet_omniglot.get_config()
  c.imports = ""  # comma-separated modules to import first (they may register learners)
  c.learner = learner
  c.learner_kwargs = ml_collections.ConfigDict({
      "ways": 5, "inner_lr": inner_lr, "inner_steps": inner_steps,
      "eval_inner_steps": eval_inner_steps,
      # BatchNorm with the batch's statistics at meta-test time, as in Finn
      # et al.'s MAML; False uses running statistics (non-transductive).
      "transductive": True, "remat": False,
      # True: adapt every task from a zero head (Kao et al.'s zeroing trick).
      "zero_head": False, **(learner_kwargs or {})})

  # Finn et al.: K support and K query examples per class while training.
  c.train.ways, c.train.shots, c.train.queries = 5, 1, 1
  c.train.meta_batch, c.train.steps = meta_batch, steps
  c.optimizer.update({"schedule": "constant", "decay_every": 0, **(optimizer or {})})

  if arg == "runlocal":
    c.train.steps, c.train.meta_batch = 6, 2
    c.eval.episodes, c.log_every, c.checkpoint_every = 20, 2, 3
    c.val_every, c.val_episodes = 4, 10
    # Two 8-channel blocks: smoke tests and the test suite compile this step
    # many times, and a second-order step's compile time grows with depth.
    c.model_kwargs.hidden, c.model_kwargs.num_blocks = 8, 2
    c.learner_kwargs.inner_steps = min(inner_steps, 2)
    c.learner_kwargs.eval_inner_steps = min(eval_inner_steps, 2)
  elif arg == "20way":
    c.train.ways = c.eval.ways = c.learner_kwargs.ways = 20
    c.learner_kwargs.inner_steps, c.learner_kwargs.inner_lr = 5, 0.1
    c.learner_kwargs.eval_inner_steps = 5
    c.train.meta_batch = 16
  elif arg == "cpu60":
    c.data.train_split, c.data.val_split = "trainval", ""
    c.log_every, c.checkpoint_every, c.val_every = 50, 200, 0
    for key, value in (cpu60 or {}).items():
      section, name = key.split(".")
      c[section][name] = value
  elif arg:
    raise ValueError(f"Unknown variant {arg!r}; use runlocal, 20way or cpu60.")
  return c
