"""A trained meta-learner back from its workdir, for evaluation (no training code)."""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections

from fsl_jax.train import builders, options
from fsl_jax.train.checkpoint import Checkpointer, CheckpointError

BINARY = "meta_train"


def open_checkpoints(workdir: str) -> Checkpointer:
  """The workdir's checkpoints, refusing a missing one or another binary's."""
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise CheckpointError(f"--workdir={workdir} is a file, not a workdir of experiments.meta_train.")
  directory = os.path.join(workdir, "checkpoints")
  ckpt = Checkpointer(directory) if os.path.isdir(directory) else None
  if ckpt is None or ckpt.latest_step() is None:
    if ckpt is not None:
      ckpt.close()
    raise CheckpointError(
        f"No checkpoint in {workdir}: train first with `python -m experiments.meta_train "
        f"--config=experiments/configs/protonet_omniglot.py --workdir={workdir}`.")
  binary = ckpt.restore_meta().get("binary", BINARY)
  if binary != BINARY:
    ckpt.close()
    raise CheckpointError(f"{workdir} holds a checkpoint of experiments.{binary}, not of "
                          "experiments.meta_train; this binary evaluates meta-learners only.")
  return ckpt


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir's latest checkpoint was trained with."""
  ckpt = open_checkpoints(workdir)
  try:
    return ml_collections.ConfigDict(ckpt.restore_meta()["config"])
  finally:
    ckpt.close()


def load_meta(workdir: str) -> dict:
  """The latest checkpoint's meta: config, learner, model, image_shape (newer runs)."""
  ckpt = open_checkpoints(workdir)
  try:
    return ckpt.restore_meta()
  finally:
    ckpt.close()


def parse_learner_kwargs(config, items) -> dict:
  """{name: value} from "NAME=VALUE" strings, typed like config.learner_kwargs[name].

  Only options the saved config has can change (a typo must not evaluate
  silently with the trained setting).
  """
  return parse_typed_options(dict(config.get("learner_kwargs", {})), items,
                             lambda item: f"learner option {item!r}", "learner",
                             "the learner's options in the saved config")


def parse_typed_options(known: dict, items, item_label, subject: str, where: str) -> dict:
  """{name: value} from "NAME=VALUE" strings, each typed like `known[name]`.

  An unknown NAME is refused naming `item_label(item)` and the known names
  (`where` says whose they are); a value that does not parse as its
  default's type is refused naming "`subject` option NAME".
  """
  out = {}
  for item in items:
    name, sep, text = item.partition("=")
    if not sep or name not in known:
      raise ValueError(f"{item_label(item)}: use NAME=VALUE with NAME one of "
                       f"{sorted(known)} ({where}).")
    out[name] = options.coerce(text, known[name], f"{subject} option {name}")
  return out


def learner_options(cls) -> dict:
  """{option: default} of a learner class's plain options (what NAME=VALUE may set)."""
  return {f.name: f.default for f in dataclasses.fields(cls)
          if isinstance(f.default, (bool, int, float, str)) and f.name not in ("name", "model")}


def parse_method_kwargs(cls, method: str, items) -> dict:
  """{name: value} from "NAME=VALUE" strings, typed like the learner class's own defaults."""
  return parse_typed_options(learner_options(cls), items,
                             lambda item: f"--learner_kwarg={item}", method,
                             f"the options of --method={method}")


def swap_learner(config, method: str, items=()) -> None:
  """`config` evaluating its weights with the learner `method` (in place).

  Allowed between metric learners whose variables are the backbone's alone
  (protonet, finetune, simpleshot, logreg): the same weights, another rule
  (e.g. a ProtoNet checkpoint with P>M>F fine-tuning). Saved options the
  new learner has carry over (ProtoNet's temperature); `items` set others.
  """
  from fsl_jax import meta  # pylint: disable=g-import-not-at-top
  cls = meta.LEARNERS.get(method)
  saved = meta.LEARNERS.get(config.learner)
  backbone_only = lambda c: issubclass(c, meta.MetricLearner) and c.head_key is None
  if not (backbone_only(cls) and backbone_only(saved)):
    raise ValueError(f"--method={method} on a {config.learner} checkpoint: only metric learners "
                     "without parameters of their own (protonet, finetune, simpleshot, logreg) "
                     "can evaluate each other's weights; drop --method.")
  known = learner_options(cls)
  kwargs = {k: v for k, v in dict(config.get("learner_kwargs", {})).items() if k in known}
  kwargs.update(parse_method_kwargs(cls, method, items))
  config.learner = method
  config.learner_kwargs = ml_collections.ConfigDict(kwargs)


def load_for_eval(workdir: str, step: int | None = None, learner_kwargs=(),
                  method: str | None = None):
  """(config, learner, variables, step) from a checkpoint (default: newest readable).

  Restores only what evaluation needs (params and model state), as saved.
  `learner_kwargs` ("NAME=VALUE" strings) change learner options that do not
  change the weights, e.g. eval_inner_steps=1 or transductive=false; the
  returned config has them. `method`: evaluate with another learner of the
  same weights (`swap_learner`; `learner_kwargs` are then its options).
  """
  ckpt = open_checkpoints(workdir)
  try:
    carry, meta, step = ckpt.restore_raw(step)
  finally:
    ckpt.close()
  config = ml_collections.ConfigDict(meta["config"])
  if method and method != config.learner:
    swap_learner(config, method, learner_kwargs)
  elif learner_kwargs:
    config.learner_kwargs.update(parse_learner_kwargs(config, learner_kwargs))
  learner = builders.make_learner(config)
  variables = jax.tree.map(jnp.asarray, builders.variables(carry["state"]))
  return config, learner, variables, step
