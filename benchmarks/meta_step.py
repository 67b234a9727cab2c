r"""Meta-training step throughput: one JSON line.

    python benchmarks/meta_step.py --algo=protonet --ways=60 --shots=1 --queries=5 \
        --meta_batch=1 --steps=50
    python benchmarks/meta_step.py --algo=maml --ways=5 --shots=1 --queries=15 \
        --meta_batch=32 --inner_steps=5 --steps=5 --compare_torch
    python benchmarks/meta_step.py --model=resnet12 --image_size=84 --algo=protonet \
        --ways=5 --shots=1 --queries=15 --meta_batch=1 --steps=5 --rounds=3 --compare_torch

Times the jitted training step of `experiments.meta_train` (episode sampling,
forward, backward, optimizer update) after compilation, on a synthetic split
of random images (`--classes` x `--per_class`) over all local devices: float32
in [0, 1] for the 1-channel Omniglot shape (with rotated classes, as the
Omniglot configs), uint8 for natural images (`--channels=3`, resnet12's
default), made float inside the step as the datasets' are.

`--compare_torch` also times a PyTorch reference of the same training step
in the same process on the same machine, and adds its tasks/s
(`torch_tasks_per_s`) and `ratio_jax_over_torch`:
- protonet, metaopt (conv4, resnet12), and maml / fomaml with resnet12 or
  conv4 at other than 28x28x1: benchmarks/torch_fewshot.py (its docstring
  says exactly what it computes): the same backbone (torch_resnet12.ResNet12
  with the same widths, dropout / DropBlock rate and block size, or its
  Conv4), the same learner (MetaOptNet's SVM by the same interior-point
  method, `--svm_iterations` steps, implicit gradients; MAML by
  torch.func.functional_call, `--inner_steps` SGD steps), episodes sampled
  from a same-sized uint8 split and made float inside the step, the
  meta-batch's episodes looped, Adam lr 1e-3.
- maml / fomaml with conv4 at 28x28x1: benchmarks/torch_reference.py, the
  torch.func MAML whose numbers BENCHMARKS.md records (fixed random tasks,
  the meta-batch vmapped, its outer gradient taken in the same task chunks
  as ours).
Torch runs `--threads` intra-op threads (0: the machine's schedulable
cores, which XLA's CPU thread pool also uses); both counts are printed
(`torch_threads`, `jax_threads`: XLA's pool threads counted in this
process). Measure on a quiet machine: with the cores busy elsewhere,
torch's OpenMP barriers wait on descheduled threads (tiny Conv4 ProtoNet on
2 cores running another job: 25 tasks/s at --threads=1, 2.5-8 at 2). The
two are timed in `--rounds` alternating rounds of `--steps` steps each (ours
first in even rounds, torch first in odd ones), so a change in the
machine's speed during the run reaches both; `rounds` lists each round's
tasks/s and ratio, and the ratio printed is the median of the rounds'.
"""

import json
import os
import sys
import time

from absl import app, flags
import jax
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string("algo", "protonet", "Learner name.")
flags.DEFINE_string("model", "conv4", "Backbone name.")
flags.DEFINE_integer("ways", 5, "")
flags.DEFINE_integer("shots", 1, "")
flags.DEFINE_integer("queries", 15, "")
flags.DEFINE_integer("meta_batch", 1, "")
flags.DEFINE_integer("steps", 20, "Timed steps after compilation.")
flags.DEFINE_integer("image_size", 28, "")
flags.DEFINE_integer("channels", 0, "Image channels (0: 3 for resnet12, 1 for conv4); 1: "
                     "float32 Omniglot-like images, otherwise uint8.")
flags.DEFINE_integer("classes", 200, "Classes in the synthetic split.")
flags.DEFINE_integer("per_class", 20, "Images per class in the synthetic split.")
flags.DEFINE_list("widths", ["64", "160", "320", "640"], "ResNet-12 widths.")
flags.DEFINE_float("drop_rate", 0.1, "ResNet-12 dropout / DropBlock rate (both frameworks).")
flags.DEFINE_integer("block_size", 5, "ResNet-12 DropBlock size (5: mini-ImageNet).")
flags.DEFINE_bool("avg_pool", True, "ResNet-12 features: global average (else the flat map).")
flags.DEFINE_integer("svm_iterations", 15, "MetaOptNet interior-point steps (both frameworks).")
flags.DEFINE_integer("inner_steps", 1, "Inner steps (gradient-based learners).")
flags.DEFINE_float("inner_lr", 0.4, "Inner learning rate (gradient-based learners).")
flags.DEFINE_enum("batching", "auto", ["auto", "vmap", "map"], "Task batching (see meta.base).")
flags.DEFINE_integer("task_chunk", 0, "Tasks per gradient chunk (0: meta.base.task_chunk).")
flags.DEFINE_bool("remat", False, "jax.checkpoint each inner step.")
flags.DEFINE_enum("impl", "auto", ["auto", "cpu", "xla", "im2col"], "Conv layer gradients (models.layers).")
flags.DEFINE_integer("devices", 0, "Shard the meta-batch over the first N devices (0: all).")
flags.DEFINE_integer("cpu_devices", 0, "Split a CPU into this many JAX devices (0: one); the "
                     "meta-batch is sharded over them. For measurement only: training runs "
                     "on split CPUs aborted in XLA's all-reduce (BENCHMARKS.md).")
flags.DEFINE_bool("compare_torch", False, "Also time the PyTorch reference step.")
flags.DEFINE_integer("torch_steps", 0, "Timed torch steps per round (default: --steps).")
flags.DEFINE_integer("rounds", 3, "With --compare_torch: alternating timed rounds of each.")
flags.DEFINE_integer("threads", 0, "Torch intra-op threads (0: the schedulable cores).")
flags.DEFINE_bool("torch_channels_last", False, "Torch convolutions in channels-last layout.")

TORCH_ALGOS = ("protonet", "metaopt", "maml", "fomaml")
TORCH_MODELS = ("conv4", "resnet12")


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _peak_bytes() -> int:
  """Peak device memory on accelerators; on CPU the process's peak RSS."""
  try:
    peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  except Exception:  # pylint: disable=broad-except
    peak = None
  if peak is None:
    import resource  # pylint: disable=g-import-not-at-top
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return int(peak)


def _xla_threads() -> int | None:
  """Threads of XLA's CPU intra-op pool in this process (Linux thread names), or None."""
  try:
    tasks = os.listdir("/proc/self/task")
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks]
  except OSError:
    return None
  return sum(n.endswith("XLAEigen") for n in names) or None


def _check_flags() -> None:
  if FLAGS.compare_torch and (FLAGS.algo not in TORCH_ALGOS or FLAGS.model not in TORCH_MODELS):
    raise app.UsageError(f"--compare_torch has PyTorch references of --algo="
                         f"{'|'.join(TORCH_ALGOS)} on --model={'|'.join(TORCH_MODELS)}; got "
                         f"--algo={FLAGS.algo} --model={FLAGS.model}.")
  if FLAGS.per_class < FLAGS.shots + FLAGS.queries:
    raise app.UsageError(f"--per_class={FLAGS.per_class} must be at least --shots + --queries "
                         f"= {FLAGS.shots + FLAGS.queries}.")


def _channels() -> int:
  return FLAGS.channels or (1 if FLAGS.model == "conv4" else 3)


def _model_kwargs() -> dict:
  import dataclasses  # pylint: disable=g-import-not-at-top
  from fsl_jax import models  # pylint: disable=g-import-not-at-top
  factory = models.MODELS.get(FLAGS.model)
  factory = getattr(factory, "func", factory)  # a functools.partial (the named ViT sizes)
  fields = ({f.name for f in dataclasses.fields(factory)} if dataclasses.is_dataclass(factory)
            else {"impl"})
  kwargs = {"impl": FLAGS.impl} if "impl" in fields else {}  # ViTs have no conv choice
  if FLAGS.model == "resnet12":
    kwargs.update(widths=tuple(int(w) for w in FLAGS.widths), drop_rate=FLAGS.drop_rate,
                  block_size=FLAGS.block_size, avg_pool=FLAGS.avg_pool)
  return kwargs


def _torch_step(chunk: int):
  """(step, sync, description) of the PyTorch reference (see the module docstring)."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(FLAGS.threads or _cores())
  channels, size = _channels(), FLAGS.image_size
  if FLAGS.model == "conv4" and FLAGS.algo in ("maml", "fomaml") and (size, channels) == (28, 1):
    import torch_reference  # pylint: disable=g-import-not-at-top
    # torch takes its gradient in the same chunks as ours (it gains from them too).
    step, sync, device = torch_reference.make_step(
        FLAGS.ways, FLAGS.shots, FLAGS.queries, FLAGS.meta_batch, FLAGS.inner_steps,
        FLAGS.inner_lr, first_order=FLAGS.algo == "fomaml", chunk=chunk)
    return step, sync, {"impl": "torch_reference (torch.func, vmapped tasks)", "chunk": chunk,
                        **torch_reference.describe(device)}
  import torch_fewshot  # pylint: disable=g-import-not-at-top
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  maml = FLAGS.algo in ("maml", "fomaml")
  net = torch_fewshot.backbone(FLAGS.model, size, channels, FLAGS.ways if maml else None,
                               [int(w) for w in FLAGS.widths], FLAGS.drop_rate,
                               FLAGS.block_size, FLAGS.avg_pool)
  split = torch_fewshot.random_split(FLAGS.classes, FLAGS.per_class, size, channels,
                                     uint8=channels != 1, device=device)
  step, sync, device = torch_fewshot.make_step(
      FLAGS.algo, net, FLAGS.ways, FLAGS.shots, FLAGS.queries, FLAGS.meta_batch, split,
      FLAGS.inner_steps, FLAGS.inner_lr, svm_iterations=FLAGS.svm_iterations,
      channels_last=FLAGS.torch_channels_last)
  return step, sync, {
      "impl": "torch_fewshot (nn.Module, looped episodes)",
      "channels_last": FLAGS.torch_channels_last, "torch_version": torch.__version__,
      "threads": torch.get_num_threads(),
      "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def main(argv):
  del argv
  _check_flags()
  if FLAGS.cpu_devices:
    jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from fsl_jax.data import ClassImages, EpisodeSampler, EpisodeSpec  # pylint: disable=g-import-not-at-top
  from fsl_jax.train import builders, meta_step, optim  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  s, c, m = FLAGS.image_size, _channels(), FLAGS.per_class
  shape = (FLAGS.classes, m, s, s, c)
  images = (rng.random(shape, np.float32) if c == 1
            else rng.integers(0, 256, shape, np.uint8))
  src = ClassImages(images, np.full(FLAGS.classes, m, np.int32),
                    [str(i) for i in range(FLAGS.classes)])
  cfg = ml_collections.ConfigDict({"learner": FLAGS.algo, "model": FLAGS.model,
                                   "model_kwargs": _model_kwargs(), "learner_kwargs": {}})
  from fsl_jax import meta  # pylint: disable=g-import-not-at-top
  probe = meta.get(FLAGS.algo, model=None)
  if getattr(probe, "per_task_weights", False):
    cfg.learner_kwargs = {"inner_steps": FLAGS.inner_steps, "ways": FLAGS.ways,
                          "inner_lr": FLAGS.inner_lr, "remat": FLAGS.remat}
  elif FLAGS.algo == "metaopt":
    cfg.learner_kwargs = {"iterations": FLAGS.svm_iterations}
  spec = EpisodeSpec(FLAGS.ways, FLAGS.shots, FLAGS.queries)
  mesh = builders.make_mesh(FLAGS.devices)
  rep = NamedSharding(mesh, P())
  sampler = EpisodeSampler(src, spec, rotations=c == 1, sharding=rep)
  learner = builders.make_learner(cfg)
  opt = ml_collections.ConfigDict({"name": "adam", "learning_rate": 1e-3, "schedule": "constant"})
  tx = optim.make_optimizer(opt, FLAGS.steps)
  state = jax.device_put(builders.init_state(learner, tx, src.image_shape, spec, 0), rep)
  train_step = meta_step.make_train_step(learner, tx, sampler, FLAGS.meta_batch, mesh,
                                         FLAGS.batching, FLAGS.task_chunk)
  run_key = builders.run_key(0)

  def one_step(state, images, counts):  # as the harness runs it, without metric sums
    new, _ = train_step(state, jax.random.fold_in(run_key, state["step"]), (images, counts))
    return {**new, "step": state["step"] + 1}

  step = jax.jit(one_step, donate_argnums=0)
  mode = meta.task_batching(learner, FLAGS.batching)
  chunk = meta.task_chunk(learner, mode, FLAGS.meta_batch // mesh.devices.size, FLAGS.task_chunk)
  t0 = time.perf_counter()
  state = step(state, sampler.images, sampler.counts)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - t0
  peak = _peak_bytes()  # after one step, before torch allocates anything

  def ours():  # seconds for --steps steps
    nonlocal state
    t0 = time.perf_counter()
    for _ in range(FLAGS.steps):
      state = step(state, sampler.images, sampler.counts)
    jax.block_until_ready(state)
    return time.perf_counter() - t0

  torch_out, rounds = None, []
  if not FLAGS.compare_torch:
    dt = ours()
  else:
    t_steps = FLAGS.torch_steps or FLAGS.steps
    t_step, t_sync, t_info = _torch_step(chunk)
    t0 = time.perf_counter()
    t_step()
    t_sync()
    warmup_s = time.perf_counter() - t0

    def theirs():
      t0 = time.perf_counter()
      for _ in range(t_steps):
        t_step()
      t_sync()
      return time.perf_counter() - t0

    for r in range(max(FLAGS.rounds, 1)):
      if r % 2 == 0:
        a, b = ours(), theirs()
      else:
        b, a = theirs(), ours()
      ours_tps = FLAGS.meta_batch * FLAGS.steps / a
      torch_tps = FLAGS.meta_batch * t_steps / b
      rounds.append({"ours": round(ours_tps, 3), "torch": round(torch_tps, 3),
                     "ratio": round(ours_tps / torch_tps, 3)})
    dt = FLAGS.steps * FLAGS.meta_batch / float(np.median([r["ours"] for r in rounds]))
    torch_tps = float(np.median([r["torch"] for r in rounds]))
    torch_out = {"tasks_per_s": round(torch_tps, 3),
                 "step_ms": round(1000 * FLAGS.meta_batch / torch_tps, 2),
                 "warmup_s": round(warmup_s, 2), "chunk": chunk, **t_info}
  # Sampling alone, to show it is a small part of the step.
  batch = jax.jit(sampler.batch_fn(), static_argnums=1)
  jax.block_until_ready(batch(jax.random.PRNGKey(0), FLAGS.meta_batch, sampler.images, sampler.counts))
  t1 = time.perf_counter()
  for i in range(FLAGS.steps):
    out = batch(jax.random.PRNGKey(i), FLAGS.meta_batch, sampler.images, sampler.counts)
  jax.block_until_ready(out)
  sample_s = (time.perf_counter() - t1) / FLAGS.steps
  cpu = jax.default_backend() == "cpu"
  out = {
      "algo": FLAGS.algo, "model": FLAGS.model, "image_size": s, "channels": c,
      "ways": FLAGS.ways, "shots": FLAGS.shots, "queries": FLAGS.queries,
      "meta_batch": FLAGS.meta_batch, "steps": FLAGS.steps,
      "episodes_per_s": round(FLAGS.meta_batch * FLAGS.steps / dt, 3),
      "tasks_per_s": round(FLAGS.meta_batch * FLAGS.steps / dt, 3),
      "step_ms": round(1000 * dt / FLAGS.steps, 2),
      "sampling_ms": round(1000 * sample_s, 3),
      "compile_s": round(compile_s, 2), "peak_bytes": peak,
      "devices": f"{mesh.devices.size}x {jax.devices()[0].device_kind}",
      "num_devices": int(mesh.devices.size),
      "jax_threads": _xla_threads() if cpu else None,
      "batching": mode, "task_chunk": chunk, "inner_steps": FLAGS.inner_steps,
      "model_kwargs": {k: list(v) if isinstance(v, tuple) else v
                       for k, v in _model_kwargs().items()},
  }
  if FLAGS.algo == "metaopt":
    out["svm_iterations"] = FLAGS.svm_iterations
  if torch_out is not None:
    ratio = float(np.median([r["ratio"] for r in rounds]))
    out["torch"] = torch_out
    out["torch_tasks_per_s"] = torch_out["tasks_per_s"]
    out["torch_threads"] = torch_out["threads"]
    out["ratio_vs_torch"] = ratio
    out["ratio_jax_over_torch"] = ratio
    out["rounds"] = rounds
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
