r"""Cost of sampling episodes on the host (`episodes.HostEpisodes`) against a training step.

    python benchmarks/host_episodes.py [--classes=64 --per_class=600 --image_size=84]
        [--ways=5 --shots=1 --queries=15 --meta_batch=1] [--model=conv4] [--steps=20]

A split too large for the device stays on the host as a memory-mapped uint8
array (mini-ImageNet's training split: 64 x 600 x 84 x 84 x 3 = 813 MB); each
step's episode indices are drawn from the step's key and the pixels gathered
on the host, a few steps ahead on grain's threads. This script writes a
random split of that shape to a temporary memory map, and prints one JSON
line: ms per host batch (index draw + gather, timed alone), ms per training
step of `--model` ProtoNet on the device path (the same episodes), and
`host_fraction` = batch / step, the share of a step the host sampling would
take if it were not overlapped at all (issue 18 asks for under ~5%).
"""

import json
import os
import tempfile
import time

from absl import app, flags
import jax
import numpy as np
import optax

FLAGS = flags.FLAGS
flags.DEFINE_integer("classes", 64, "Classes in the split (mini-ImageNet train: 64).")
flags.DEFINE_integer("per_class", 600, "Images per class (mini-ImageNet: 600).")
flags.DEFINE_integer("image_size", 84, "")
flags.DEFINE_integer("ways", 5, "")
flags.DEFINE_integer("shots", 1, "")
flags.DEFINE_integer("queries", 15, "")
flags.DEFINE_integer("meta_batch", 1, "")
flags.DEFINE_string("model", "conv4", "Backbone of the ProtoNet step compared against.")
flags.DEFINE_integer("steps", 20, "Timed host batches and training steps.")


def main(argv):
  del argv
  from fsl_jax import meta, models  # pylint: disable=g-import-not-at-top
  from fsl_jax.data import episodes  # pylint: disable=g-import-not-at-top
  from fsl_jax.data.sources import ClassImages  # pylint: disable=g-import-not-at-top
  from fsl_jax.train import builders, meta_step  # pylint: disable=g-import-not-at-top

  shape = (FLAGS.classes, FLAGS.per_class, FLAGS.image_size, FLAGS.image_size, 3)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "split.npy")
    images = np.lib.format.open_memmap(path, "w+", np.uint8, shape)
    rng = np.random.default_rng(0)
    for c in range(shape[0]):
      images[c] = rng.integers(0, 256, shape[1:], dtype=np.uint8)
    images.flush()
    del images
    mapped = np.load(path, mmap_mode="r")
    src = ClassImages(mapped, np.full(shape[0], shape[1], np.int32),
                      [str(c) for c in range(shape[0])])
    spec = episodes.EpisodeSpec(FLAGS.ways, FLAGS.shots, FLAGS.queries)
    host = episodes.HostEpisodes(src, spec, FLAGS.meta_batch)
    key = jax.random.PRNGKey(0)
    host.batch(key)  # compile the index draw
    t0 = time.perf_counter()
    for s in range(FLAGS.steps):
      host.batch(jax.random.fold_in(key, s))
    batch_ms = (time.perf_counter() - t0) / FLAGS.steps * 1e3

    learner = meta.get("protonet", model=models.get(FLAGS.model))
    tx = optax.adam(1e-3)
    sampler = episodes.EpisodeSampler(src, spec)
    state = builders.init_state(learner, tx, src.image_shape, spec, 0)
    step = jax.jit(meta_step.make_train_step(learner, tx, sampler, FLAGS.meta_batch,
                                             builders.make_mesh(1)))
    inputs = (sampler.images, sampler.counts)
    state, _ = step(state, key, inputs)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for s in range(FLAGS.steps):
      state, _ = step(state, jax.random.fold_in(key, s), inputs)
    jax.block_until_ready(state)
    step_ms = (time.perf_counter() - t0) / FLAGS.steps * 1e3
  print(json.dumps({
      "split_shape": list(shape), "split_mb": round(np.prod(shape) / 2**20, 1),
      "ways": FLAGS.ways, "shots": FLAGS.shots, "queries": FLAGS.queries,
      "meta_batch": FLAGS.meta_batch, "model": FLAGS.model,
      "host_batch_ms": round(batch_ms, 2), "device_step_ms": round(step_ms, 1),
      "host_fraction": round(batch_ms / step_ms, 4), "backend": jax.default_backend(),
      "cpu_count": os.cpu_count()}))


if __name__ == "__main__":
  app.run(main)
