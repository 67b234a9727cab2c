"""Episodic meta-training: one pure jitted step, data parallel, resumable.

`train_and_evaluate(config, workdir)` is what `experiments.meta_train` runs.
The step samples its own meta-batch of episodes from `fold_in(rng, step)`
inside the jitted function (the split sits once in device memory), shards the
episodes over a 1-D device mesh ('data'), and returns the new state. The
state `{params, model_state, opt_state, step, rng}` is checkpointed every
`checkpoint_every` steps; rerunning the same command resumes from the latest
checkpoint and produces exactly the metrics of an uninterrupted run.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from fsl_jax import meta, models
from fsl_jax.data import sources as sources_lib
from fsl_jax.data.episodes import EpisodeSampler, EpisodeSpec
from fsl_jax.train import evaluation, metrics as metrics_lib
from fsl_jax.train.checkpoint import Checkpointer


# ----------------------------------------------------------------- building

def load_split(data_cfg, split: str) -> sources_lib.ClassImages:
  """The `split` of the dataset the config names, as ClassImages."""
  name = data_cfg.name
  if name == "omniglot":
    from fsl_jax.data import omniglot  # pylint: disable=g-import-not-at-top
    return omniglot.load_omniglot(
        split, data_cfg.get("scheme", "lake"), data_cfg.get("image_size", 28),
        data_cfg.get("data_dir") or None, bool(data_cfg.get("download", False)))
  if name in ("omniglot_folder", "image_folder"):
    from fsl_jax.data import folders  # pylint: disable=g-import-not-at-top
    root = data_cfg.get(f"{split}_dir") or ""
    if not root:
      raise sources_lib.DataError(f"Set --config.data.{split}_dir to the folder of the '{split}' split.")
    if name == "omniglot_folder":
      return folders.load_omniglot_folder(root, data_cfg.get("image_size", 28))
    return folders.load_image_folder(root, data_cfg.get("image_size", 84),
                                     grayscale=bool(data_cfg.get("grayscale", False)))
  raise sources_lib.DataError(
      f"Unknown dataset {name!r}; use 'omniglot', 'omniglot_folder' or 'image_folder'.")


def import_modules(config) -> None:
  """Imports `config.imports` (comma-separated modules), e.g. one registering a learner."""
  for name in filter(None, (m.strip() for m in str(config.get("imports", "") or "").split(","))):
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise ImportError(f"config.imports names {name!r}, which does not import ({e}); "
                        "is its directory on PYTHONPATH?") from e


def make_learner(config):
  import_modules(config)
  model = models.get(config.model, **dict(config.get("model_kwargs", {})))
  kwargs = dict(config.get("learner_kwargs", {}))
  try:
    return meta.get(config.learner, model=model, **kwargs)
  except TypeError as e:
    if "unexpected keyword" not in str(e):
      raise
    raise ValueError(f"Learner {config.learner!r} does not take an option in "
                     f"config.learner_kwargs={kwargs} ({e}).") from e


def make_optimizer(opt_cfg, total_steps: int) -> optax.GradientTransformation:
  lr = float(opt_cfg.learning_rate)
  sched = opt_cfg.get("schedule", "constant")
  if sched == "constant":
    schedule = optax.constant_schedule(lr)
  elif sched == "step":  # Snell et al.: halve every 2000 episodes
    schedule = optax.exponential_decay(lr, int(opt_cfg.decay_every), float(opt_cfg.decay_rate),
                                       staircase=True)
  elif sched == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, int(opt_cfg.get("warmup_steps", 0)), max(total_steps, 1))
  else:
    raise ValueError(f"Unknown schedule {sched!r}; use constant, step or cosine.")
  name = opt_cfg.get("name", "adam")
  if name == "adam":
    tx = optax.adam(schedule)
  elif name == "adamw":
    tx = optax.adamw(schedule, weight_decay=float(opt_cfg.get("weight_decay", 1e-4)))
  elif name == "sgd":
    tx = optax.sgd(schedule, momentum=float(opt_cfg.get("momentum", 0.9)) or None)
  else:
    raise ValueError(f"Unknown optimizer {name!r}; use adam, adamw or sgd.")
  clip = float(opt_cfg.get("grad_clip", 0.0))
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx


def make_mesh(num_devices: int = 0) -> Mesh:
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"config.devices={num_devices} but only {len(devices)} devices exist.")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), ("data",))


def spec_from(cfg) -> EpisodeSpec:
  return EpisodeSpec(int(cfg.ways), int(cfg.shots), int(cfg.queries))


# ----------------------------------------------------------------- the step

def make_train_step(learner, tx, sampler: EpisodeSampler, meta_batch: int, mesh: Mesh,
                    batching: str = "auto", chunk: int = 0):
  """A pure `step(state, images, counts) -> state`, not yet jitted.

  `batching` ('auto' | 'vmap' | 'map') runs the meta-batch's tasks batched
  or in a loop; see `fsl_jax.meta.base.task_batching`. Vmapped tasks take
  their gradient `chunk` tasks at a time, accumulated in a loop (0: picked
  by `fsl_jax.meta.base.task_chunk`, all at once off CPU). With a loop or
  chunks and more than one device, each device runs its own shard of the
  tasks (`shard_map`) and the gradients are averaged with `pmean`; left to
  the partitioner, a `lax.map` over a sharded axis runs ~2x slower than on
  one device.
  """
  batch_fn = sampler.batch_fn()
  episode_sharding = NamedSharding(mesh, P("data"))
  mode = meta.task_batching(learner, batching)
  chunk = meta.task_chunk(learner, mode, meta_batch // mesh.devices.size, chunk)
  over_tasks = functools.partial(meta.map_tasks, batching=mode)
  step_kw = getattr(learner, "uses_step", False)

  def loss_fn(params, model_state, step, episodes, loss_keys):
    variables = {"params": params, **model_state}
    kw = {"step": step} if step_kw else {}
    one = lambda ep, k: learner.outer_loss(variables, ep, k, train=True, **kw)
    losses, aux = over_tasks(one)(episodes, loss_keys)
    # Means over tasks; keepdims so the per-device path can average them.
    return losses.mean(), jax.tree.map(lambda x: x.mean(0, keepdims=True), aux)

  grad_fn = local_grad_fn = _in_chunks(jax.value_and_grad(loss_fn, has_aux=True), chunk)
  if (mode == "map" or chunk) and mesh.devices.size > 1:
    def per_device(*args):  # equal shards, so the mean of means is the mean
      return jax.lax.pmean(local_grad_fn(*args), "data")
    grad_fn = jax.shard_map(per_device, mesh=mesh, out_specs=P(), check_vma=False,
                            in_specs=(P(), P(), P(), P("data"), P("data")))

  def step(state, images, counts):
    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    k_data, k_loss = jax.random.split(key)
    episodes = batch_fn(k_data, meta_batch, images, counts)
    episodes = jax.lax.with_sharding_constraint(episodes, episode_sharding)
    loss_keys = jax.random.split(k_loss, meta_batch)
    (loss, aux), grads = grad_fn(state["params"], state["model_state"], state["step"],
                                 episodes, loss_keys)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    # Model state (BatchNorm running stats) updated per episode, already
    # averaged over tasks (and devices) by grad_fn; drop the kept axis.
    model_state = jax.tree.map(lambda x: x[0], aux["model_state"]) or state["model_state"]
    metrics = {"loss": loss, "accuracy": aux["accuracy"][0],
               "grad_norm": optax.global_norm(grads)}
    # Running sums since the last log line live in the (checkpointed) state,
    # so a run resumed mid-interval logs exactly what an uninterrupted one does.
    sums = {k: state["metric_sums"][k] + v for k, v in metrics.items()}
    return {**state, "params": params, "opt_state": opt_state, "model_state": model_state,
            "step": state["step"] + 1, "metric_sums": sums,
            "metric_count": state["metric_count"] + 1}

  return step


def _in_chunks(grad_fn, chunk: int):
  """grad_fn(params, state, step, episodes, keys) over `chunk` tasks at a time, averaged.

  The loss and aux are means over tasks, so the mean over equal chunks is
  the whole batch's; only one chunk's activations are live at a time.
  """
  if not chunk:
    return grad_fn

  def chunked(params, model_state, step, episodes, keys):
    split = lambda x: x.reshape((x.shape[0] // chunk, chunk) + x.shape[1:])
    per_chunk = jax.lax.map(lambda xs: grad_fn(params, model_state, step, *xs),
                            jax.tree.map(split, (episodes, keys)))
    return jax.tree.map(lambda x: x.mean(0), per_chunk)

  return chunked


def dummy_episode(image_shape, spec: EpisodeSpec) -> dict:
  n, k, q = spec.ways, spec.shots, spec.queries
  return {"support_x": jnp.zeros((n * k,) + tuple(image_shape)),
          "support_y": jnp.repeat(jnp.arange(n), k), "query_x": jnp.zeros((n * q,) + tuple(image_shape)),
          "query_y": jnp.repeat(jnp.arange(n), q), "classes": jnp.arange(n)}


def init_state(learner, tx, image_shape, spec: EpisodeSpec, seed: int) -> dict:
  """Initial state; depends only on (config, seed), never on the data."""
  key = jax.random.PRNGKey(seed)
  k_init, k_run = jax.random.split(key)
  variables = learner.init(k_init, dummy_episode(image_shape, spec))
  params = variables.pop("params")
  return {"params": params, "model_state": variables, "opt_state": tx.init(params),
          "step": jnp.asarray(0, jnp.int32), "rng": jax.random.key_data(k_run),
          **_zero_metrics()}


METRICS = ("loss", "accuracy", "grad_norm")


def _zero_metrics() -> dict:
  return {"metric_sums": {k: jnp.zeros((), jnp.float32) for k in METRICS},
          "metric_count": jnp.zeros((), jnp.int32)}


def checkpoint_meta(config) -> dict:
  return {"config": json.loads(config.to_json_best_effort()), "learner": config.learner,
          "model": config.model, "model_kwargs": dict(config.get("model_kwargs", {}))}


# Config keys that may change between a run and its resumption: they change
# neither the training trajectory nor the architecture.
RESUMABLE_KEYS = ("train.steps", "train.task_batching", "train.task_chunk", "log_every",
                  "checkpoint_every", "keep_checkpoints", "val_every", "val_episodes", "eval.",
                  "data.data_dir", "data.download", "devices")


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def check_compatible(meta_: dict, config, directory: str) -> None:
  """Refuses to resume a checkpoint trained with another architecture or config."""
  for key in ("learner", "model"):
    if meta_.get(key) != config.get(key):
      raise ValueError(
          f"The checkpoint in {directory} is a {meta_.get(key)!r} {key}, but the config asks for "
          f"{config.get(key)!r}. Use another --workdir, or the config it was trained with.")
  old, new = _flat(meta_.get("config", {})), _flat(json.loads(config.to_json_best_effort()))
  diff = sorted(k for k in set(old) | set(new)
                if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_KEYS))
  if diff:
    detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
    raise ValueError(
        f"Cannot resume {directory}: the config differs from the one it was trained with "
        f"({detail}). Rerun with the original config (see {os.path.dirname(directory)}/config.json) "
        "or use a new --workdir.")


# ----------------------------------------------------------------- the loop

class _Preemption:
  """Turns SIGTERM into a flag so the loop can checkpoint and exit cleanly."""

  def __init__(self):
    self.requested = False
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._old = None

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config.learner`, checkpoints in `workdir`, evaluates; returns the eval dict."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  tcfg = config.train
  mesh = make_mesh(int(config.get("devices", 0)))
  n_dev = mesh.devices.size
  if tcfg.meta_batch % n_dev:
    raise ValueError(f"train.meta_batch={tcfg.meta_batch} is not divisible by the {n_dev} devices; "
                     f"set --config.train.meta_batch to a multiple of {n_dev} or --config.devices.")
  replicated = NamedSharding(mesh, P())

  t0 = time.time()
  train_src = load_split(config.data, config.data.train_split)
  sampler = EpisodeSampler(train_src, spec_from(tcfg), rotations=bool(config.data.rotations),
                           split=config.data.train_split, sharding=replicated)
  metrics_lib.log("Loaded %s/%s: %d classes (%s rotations) in %.1fs", config.data.name,
               config.data.train_split, train_src.num_classes,
               "with" if config.data.rotations else "no", time.time() - t0)
  learner = make_learner(config)
  want = getattr(learner, "num_classes", 0)  # classifiers over all training classes (Baseline++)
  have = train_src.num_classes * (4 if config.data.rotations else 1)
  if want and want != have:
    raise ValueError(
        f"config.learner_kwargs.num_classes={want}, but {config.data.name}/"
        f"{config.data.train_split} has {have} classes{' with rotations' if config.data.rotations else ''}; "
        f"set --config.learner_kwargs.num_classes={have}.")
  tx = make_optimizer(config.optimizer, int(tcfg.steps))
  state = init_state(learner, tx, train_src.image_shape, spec_from(tcfg), int(config.seed))

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), int(config.checkpoint_every),
                      int(config.get("keep_checkpoints", 3)))
  start = 0
  if ckpt.latest_step() is not None:
    check_compatible(ckpt.restore_meta(), config, ckpt.directory)
    state, _ = ckpt.restore(state)
    start = int(state["step"])
    metrics_lib.log("Resumed from step %d in %s", start, ckpt.directory)
  state = jax.device_put(state, replicated)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))

  batching = tcfg.get("task_batching", "auto")
  step_fn = jax.jit(make_train_step(learner, tx, sampler, int(tcfg.meta_batch), mesh, batching,
                                    int(tcfg.get("task_chunk", 0))),
                    donate_argnums=0, out_shardings=replicated)
  writer = metrics_lib.MetricWriter(workdir, resume_step=start)
  progress = metrics_lib.Progress(start, int(tcfg.steps))
  preempt = _Preemption()
  meta_ = checkpoint_meta(config)
  val_src = None
  try:
    for step in range(start + 1, int(tcfg.steps) + 1):
      state = step_fn(state, sampler.images, sampler.counts)
      if step % int(config.log_every) == 0 or step == int(tcfg.steps):
        n = int(state["metric_count"])
        row = {k: float(v) / n for k, v in state["metric_sums"].items()}
        state = {**state, **jax.device_put(_zero_metrics(), replicated)}
        rate = progress.rate(step)
        row["episodes_per_s"] = rate * int(tcfg.meta_batch)
        writer.write(step, row)
        metrics_lib.log("step %d/%d loss %.4f acc %.4f  %.1f episodes/s  ETA %s", step, tcfg.steps,
                     row["loss"], row["accuracy"], row["episodes_per_s"], progress.eta(step))
      # Checkpoint before validating: validation may compile, and a SIGTERM
      # sent to the whole process group also kills the compiler (ptxas) and
      # fails the compilation; the state is saved and intact either way.
      ckpt.save(step, state, meta_)
      every = int(config.get("val_every", 0))
      if every and config.data.get("val_split") and step % every == 0 and not preempt.requested:
        try:
          if val_src is None:
            val_src = load_split(config.data, config.data.val_split)
          res = evaluation.evaluate(learner, _variables(state), val_src, spec_from(config.eval),
                                    int(config.get("val_episodes", 200)), int(config.eval.seed),
                                    split=config.data.val_split, batching=batching)
        except Exception:  # pylint: disable=broad-except
          if not preempt.requested:
            raise
          metrics_lib.log("SIGTERM during validation at step %d: skipped it.", step)
        else:
          writer.write(step, {"val_accuracy": res["accuracy"], "val_ci95": res["ci95"]})
          metrics_lib.log("step %d val accuracy %.4f ± %.4f", step, res["accuracy"], res["ci95"])
      if preempt.requested:
        ckpt.save(step, state, meta_, force=True)
        metrics_lib.log("SIGTERM: saved step %d; rerun the same command to resume.", step)
        raise SystemExit(143)
    ckpt.save(int(tcfg.steps), state, meta_, force=True)
  finally:
    preempt.restore()
    writer.close()
    ckpt.close()

  test_src = load_split(config.data, config.eval.split)
  result = evaluation.evaluate(learner, _variables(state), test_src, spec_from(config.eval),
                               int(config.eval.episodes), int(config.eval.seed),
                               split=config.eval.split, batching=batching)
  log_result(workdir, {**result, "step": int(tcfg.steps)})
  return result


def _variables(state) -> dict[str, Any]:
  return {"params": state["params"], **state["model_state"]}


# ------------------------------------------------------- restore for eval

def _open_checkpoints(workdir: str) -> Checkpointer:
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  ckpt = Checkpointer(directory) if os.path.isdir(directory) else None
  if ckpt is None or ckpt.latest_step() is None:
    raise FileNotFoundError(
        f"No checkpoint in {workdir}: train first with `python -m experiments.meta_train "
        f"--config=experiments/configs/protonet_omniglot.py --workdir={workdir}`.")
  return ckpt


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir's latest checkpoint was trained with."""
  ckpt = _open_checkpoints(workdir)
  try:
    return ml_collections.ConfigDict(ckpt.restore_meta()["config"])
  finally:
    ckpt.close()


def parse_learner_kwargs(config, items) -> dict:
  """{name: value} from "NAME=VALUE" strings, typed like config.learner_kwargs[name].

  Only options the saved config has can change (a typo must not evaluate
  silently with the trained setting).
  """
  known = dict(config.get("learner_kwargs", {}))
  out = {}
  for item in items:
    name, sep, text = item.partition("=")
    if not sep or name not in known:
      raise ValueError(f"learner option {item!r}: use NAME=VALUE with NAME one of "
                       f"{sorted(known)} (the learner's options in the saved config).")
    old = known[name]
    if isinstance(old, bool):
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"learner option {name} is a bool; got {text!r}, use true or false.")
      out[name] = text.lower() in ("true", "1")
    elif isinstance(old, (int, float)):
      try:
        out[name] = type(old)(text)
      except ValueError:
        kind = "an integer" if isinstance(old, int) else "a number"
        raise ValueError(f"learner option {name} takes {kind}; got {text!r}.") from None
    else:
      out[name] = text
  return out


def load_for_eval(workdir: str, step: int | None = None, learner_kwargs=()):
  """(config, learner, variables, step) from a checkpoint (default: latest) in workdir.

  Restores only what evaluation needs (params and model state), as saved.
  `learner_kwargs` ("NAME=VALUE" strings) change learner options that do not
  change the weights, e.g. eval_inner_steps=1 or transductive=false; the
  returned config has them.
  """
  ckpt = _open_checkpoints(workdir)
  try:
    if step is not None and step not in ckpt.all_steps():
      raise FileNotFoundError(f"No checkpoint of step {step} in {ckpt.directory}; "
                              f"it has steps {ckpt.all_steps()}.")
    config = ml_collections.ConfigDict(ckpt.restore_meta(step)["config"])
    state = ckpt.restore_raw(step)
  finally:
    ckpt.close()
  if learner_kwargs:
    config.learner_kwargs.update(parse_learner_kwargs(config, learner_kwargs))
  learner = make_learner(config)
  variables = jax.tree.map(jnp.asarray, _variables(state))
  return config, learner, variables, int(state["step"])


def log_result(workdir: str, result: dict) -> None:
  with open(os.path.join(workdir, "results.jsonl"), "a") as f:
    f.write(json.dumps(result) + "\n")
