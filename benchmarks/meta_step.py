r"""Meta-training step throughput: one JSON line.

    python benchmarks/meta_step.py --algo=protonet --ways=60 --shots=1 --queries=5 \
        --meta_batch=1 --steps=50
    python benchmarks/meta_step.py --algo=maml --ways=5 --shots=1 --queries=15 \
        --meta_batch=32 --inner_steps=5 --steps=5 --compare_torch

`--compare_torch` (maml / fomaml) also times benchmarks/torch_reference.py,
the same MAML written with torch.func, in the same process on the same
machine (its outer gradient taken in the same task chunks as ours), and adds
its tasks/s and the ratio jax / torch. The two are timed
in `--rounds` alternating rounds of `--steps` steps each (ours first in even
rounds, torch first in odd ones), so a change in the machine's speed during
the run reaches both; the ratio is the median of the rounds' ratios.

Times the jitted training step of `experiments.meta_train` (episode sampling,
forward, backward, optimizer update) after compilation, on random images of
the Omniglot shape, over all local devices.
"""

import json
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
flags.DEFINE_integer("classes", 200, "Classes in the synthetic split.")
flags.DEFINE_integer("inner_steps", 1, "Inner steps (gradient-based learners).")
flags.DEFINE_float("inner_lr", 0.4, "Inner learning rate (gradient-based learners).")
flags.DEFINE_enum("batching", "auto", ["auto", "vmap", "map"], "Task batching (see meta.base).")
flags.DEFINE_integer("task_chunk", 0, "Tasks per gradient chunk (0: meta.base.task_chunk).")
flags.DEFINE_bool("remat", False, "jax.checkpoint each inner step.")
flags.DEFINE_enum("impl", "auto", ["auto", "cpu", "xla", "im2col"], "Conv4 layer gradients (models.layers).")
flags.DEFINE_integer("cpu_devices", 0, "Split a CPU into this many JAX devices (0: one); the "
                     "meta-batch is sharded over them. For measurement only: training runs "
                     "on split CPUs aborted in XLA's all-reduce (BENCHMARKS.md).")
flags.DEFINE_bool("compare_torch", False, "Also time the torch.func MAML reference.")
flags.DEFINE_integer("torch_steps", 0, "Timed torch steps per round (default: --steps).")
flags.DEFINE_integer("rounds", 3, "With --compare_torch: alternating timed rounds of each.")


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


def main(argv):
  del argv
  if FLAGS.compare_torch and FLAGS.algo not in ("maml", "fomaml"):
    raise app.UsageError("--compare_torch times MAML; use --algo=maml or fomaml.")
  if FLAGS.cpu_devices:
    jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from fsl_jax.data import ClassImages, EpisodeSampler, EpisodeSpec  # pylint: disable=g-import-not-at-top
  from fsl_jax.train import builders, meta_step, optim  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  s = FLAGS.image_size
  src = ClassImages(rng.random((FLAGS.classes, 20, s, s, 1), np.float32),
                    np.full(FLAGS.classes, 20, np.int32), [str(i) for i in range(FLAGS.classes)])
  cfg = ml_collections.ConfigDict({"learner": FLAGS.algo, "model": FLAGS.model,
                                   "model_kwargs": {"impl": FLAGS.impl}, "learner_kwargs": {}})
  from fsl_jax import meta  # pylint: disable=g-import-not-at-top
  probe = meta.get(FLAGS.algo, model=None)
  if getattr(probe, "per_task_weights", False):
    cfg.learner_kwargs = {"inner_steps": FLAGS.inner_steps, "ways": FLAGS.ways,
                          "inner_lr": FLAGS.inner_lr, "remat": FLAGS.remat}
  spec = EpisodeSpec(FLAGS.ways, FLAGS.shots, FLAGS.queries)
  mesh = builders.make_mesh()
  rep = NamedSharding(mesh, P())
  sampler = EpisodeSampler(src, spec, rotations=True, sharding=rep)
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
    import os, sys  # pylint: disable=g-import-not-at-top,multiple-imports
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_reference  # pylint: disable=g-import-not-at-top
    t_steps = FLAGS.torch_steps or FLAGS.steps
    # torch takes its gradient in the same chunks as ours (it gains from them too).
    t_step, t_sync, t_device = torch_reference.make_step(
        FLAGS.ways, FLAGS.shots, FLAGS.queries, FLAGS.meta_batch, FLAGS.inner_steps,
        FLAGS.inner_lr, first_order=FLAGS.algo == "fomaml", chunk=chunk)
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
                 "warmup_s": round(warmup_s, 2), "chunk": chunk,
                 **torch_reference.describe(t_device)}
  # Sampling alone, to show it is a small part of the step.
  batch = jax.jit(sampler.batch_fn(), static_argnums=1)
  jax.block_until_ready(batch(jax.random.PRNGKey(0), FLAGS.meta_batch, sampler.images, sampler.counts))
  t1 = time.perf_counter()
  for i in range(FLAGS.steps):
    out = batch(jax.random.PRNGKey(i), FLAGS.meta_batch, sampler.images, sampler.counts)
  jax.block_until_ready(out)
  sample_s = (time.perf_counter() - t1) / FLAGS.steps
  out = {
      "algo": FLAGS.algo, "ways": FLAGS.ways, "shots": FLAGS.shots, "queries": FLAGS.queries,
      "meta_batch": FLAGS.meta_batch, "steps": FLAGS.steps,
      "episodes_per_s": round(FLAGS.meta_batch * FLAGS.steps / dt, 3),
      "tasks_per_s": round(FLAGS.meta_batch * FLAGS.steps / dt, 3),
      "step_ms": round(1000 * dt / FLAGS.steps, 2),
      "sampling_ms": round(1000 * sample_s, 3),
      "compile_s": round(compile_s, 2), "peak_bytes": peak,
      "devices": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
      "batching": mode, "task_chunk": chunk, "inner_steps": FLAGS.inner_steps,
  }
  if torch_out is not None:
    out["torch"] = torch_out
    out["ratio_vs_torch"] = float(np.median([r["ratio"] for r in rounds]))
    out["rounds"] = rounds
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
