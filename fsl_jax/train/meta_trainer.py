"""Episodic meta-training on the shared harness: `experiments.meta_train`.

`train_and_evaluate(config, workdir)` checks the config and workdir, loads
the training split by name (`fsl_jax.data.registry`), builds the learner,
optimizer and step (`builders`, `meta_step`) and hands them to
`fsl_jax.train.loop.Harness`, which resumes, logs, checkpoints, validates and
survives preemption; then it evaluates on `config.eval.split` with fixed
episode seeds. Rerunning the same command resumes from the latest
checkpoint and produces exactly the metrics of an uninterrupted run.
"""

from __future__ import annotations

import time

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections

from fsl_jax import distributed
from fsl_jax.data import augment as augment_lib
from fsl_jax.data import episodes as episodes_lib
from fsl_jax.data import registry as data_registry
from fsl_jax.train import builders, evaluation, loop, meta_step, optim
from fsl_jax.train import metrics as metrics_lib

BINARY = "meta_train"

# Keys that may change when resuming: they change neither the training
# trajectory nor the architecture. train.steps joins them when the learning
# rate schedule does not depend on the run's length.
RESUMABLE = ("train.task_batching", "train.task_chunk", "eval.", "devices", "data.placement")


def _episodes(config, key: str) -> int:
  v = loop.get_key(config, key)
  if isinstance(v, bool) or not isinstance(v, int) or v < 1:
    raise loop.ConfigError(f"{key}={v!r} must be an integer of at least 1 (the number of "
                           f"episodes); set --config.{key}=N.")
  return v


class MetaTraining:
  """One run: built (and every config value checked) before any data loads."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    loop.configure_jax()  # before run_key below splits the seed
    self.config = config
    tcfg = config.train
    self.train_spec = builders.spec_from(tcfg, "train.")
    self.eval_spec = builders.spec_from(config.eval, "eval.")
    self.eval_episodes = _episodes(config, "eval.episodes")
    lcfg = loop.LoopConfig.from_config(config, steps="train.steps")
    if lcfg.val_every and config.data.get("val_split"):
      self.val_episodes = _episodes(config, "val_episodes")
    self.mesh = builders.make_mesh(int(config.get("devices", 0)))
    n_dev = self.mesh.devices.size
    meta_batch = tcfg.meta_batch
    if isinstance(meta_batch, bool) or not isinstance(meta_batch, int) or meta_batch < 1 \
        or meta_batch % n_dev:
      raise loop.ConfigError(
          f"train.meta_batch={meta_batch!r} must be a positive multiple of the {n_dev} devices; "
          f"set --config.train.meta_batch to a multiple of {n_dev} or --config.devices.")
    data_registry.DATASETS.get(config.data.name)  # an unknown name fails before anything loads
    self.augment = augment_lib.parse(tcfg.get("augment", ""))
    self.augment_on = tcfg.get("augment_on", "both")
    if self.augment_on not in episodes_lib.AUGMENT_ON:
      raise loop.ConfigError(f"train.augment_on={self.augment_on!r}: use one of "
                             f"{', '.join(episodes_lib.AUGMENT_ON)}.")
    self.placement = config.data.get("placement", "auto")
    if self.placement not in ("auto", "device", "host"):
      raise loop.ConfigError(f"data.placement={self.placement!r}: use auto (by size), device "
                             "or host.")
    self.learner = builders.make_learner(config)
    # A pretrained backbone's weights to start from ('' none, 'default' or a path).
    self.init_weights = str(config.get("init_weights", "") or "")
    try:
      builders.check_init_weights(self.learner, config.model, self.init_weights)
    except ValueError as e:
      raise loop.ConfigError(str(e)) from None
    self.tx = optim.make_optimizer(config.optimizer, lcfg.steps)
    resumable = RESUMABLE + (() if optim.schedule_depends_on_steps(config.optimizer)
                             else ("train.steps",))
    self.harness = loop.Harness(
        config, workdir, binary=BINARY, loop=lcfg, resumable=resumable,
        meta={"learner": config.learner, "model": config.model},
        rng=builders.run_key(int(config.seed)))
    self.val_evaluator = None

  def run(self) -> dict:
    config, tcfg, learner = self.config, self.config.train, self.learner
    replicated = NamedSharding(self.mesh, P())
    t0 = time.time()
    train_src = data_registry.load_split(config.data, config.data.train_split)
    rotations = bool(config.data.get("rotations", False))
    placement = episodes_lib.placement_for(train_src, self.placement)
    meta_batch = int(tcfg.meta_batch)
    if placement == "device":
      sampler = episodes_lib.EpisodeSampler(
          train_src, self.train_spec, rotations=rotations, split=config.data.train_split,
          sharding=replicated, augment=self.augment, augment_on=self.augment_on)
      inputs, batches, batch_sharding = (sampler.images, sampler.counts), None, None
    else:
      # Each process gathers only its own tasks' pixels (all of them on one process).
      by_task = NamedSharding(self.mesh, P("data"))
      sampler = episodes_lib.HostEpisodes(
          train_src, self.train_spec, meta_batch, rotations=rotations,
          split=config.data.train_split, augment=self.augment, augment_on=self.augment_on,
          tasks=distributed.local_rows(by_task, meta_batch))
      inputs = None
      batches = sampler.feed(self.harness.rng, lambda key: jax.random.split(key)[0])
      batch_sharding = {"key": replicated, "x": by_task, "classes": by_task}
    metrics_lib.log("Loaded %s/%s: %d classes, %s %s (%.0f MB, on the %s) in %.1fs%s",
                    config.data.name, config.data.train_split, train_src.num_classes,
                    train_src.images.dtype, list(train_src.image_shape),
                    train_src.images.nbytes / 2**20, placement, time.time() - t0,
                    " with rotations" if rotations else "")
    # Saved with every checkpoint: evaluation on another dataset resizes to it.
    self.harness.meta["image_shape"] = [int(d) for d in train_src.image_shape]
    want = getattr(learner, "num_classes", 0)  # classifiers over all training classes (Baseline++)
    have = train_src.num_classes * (4 if rotations else 1)
    if want and want != have:
      raise loop.ConfigError(
          f"learner_kwargs.num_classes={want}, but {config.data.name}/{config.data.train_split} "
          f"has {have} classes{' with rotations' if rotations else ''}; set "
          f"--config.learner_kwargs.num_classes={have}.")
    # Every split loads and is checked against its episodes (a bad file, a
    # missing folder, too few classes are reported) before training starts.
    batching = tcfg.get("task_batching", "auto")
    seed = int(config.eval.seed)
    if self.harness.loop.val_every and config.data.get("val_split"):
      self.val_evaluator = evaluation.Evaluator(
          learner, data_registry.load_split(config.data, config.data.val_split), self.eval_spec,
          self.val_episodes, seed, split=config.data.val_split, batching=batching)
    test_evaluator = evaluation.Evaluator(
        learner, data_registry.load_split(config.data, config.eval.split), self.eval_spec,
        self.eval_episodes, seed, split=config.eval.split, batching=batching)
    init_variables = None
    if self.init_weights:
      def init_variables(variables):
        variables, facts = builders.load_init_weights(learner, variables, config.model,
                                                      self.init_weights)
        self.harness.meta["init_weights"] = facts
        metrics_lib.log("Backbone initialised from %s (sha256 %s..., pretrained on %s)",
                        facts["weights"], facts["weights_sha256"], facts["pretrained_on"])
        return variables
    state = builders.init_state(learner, self.tx, train_src.image_shape, self.train_spec,
                                int(config.seed), init_variables)
    step = meta_step.make_train_step(learner, self.tx, sampler, meta_batch, self.mesh,
                                     batching, int(tcfg.get("task_chunk", 0)))
    validate = None
    if self.val_evaluator is not None:
      def validate(state):
        res = self.val_evaluator(builders.variables(state))
        return {"val_accuracy": res["accuracy"], "val_ci95": res["ci95"]}

    state = self.harness.train(state, step, inputs=inputs, batches=batches,
                               validate=validate, state_sharding=replicated,
                               batch_sharding=batch_sharding,
                               items_per_step=int(tcfg.meta_batch), items="episodes")
    return self.harness.finish(test_evaluator(builders.variables(state)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config.learner`, checkpoints in `workdir`, evaluates; returns the eval dict."""
  return MetaTraining(config, workdir).run()
