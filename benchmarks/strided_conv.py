r"""Strided convolutions on CPU: XLA's forward with im2col's VJP against im2col for both.

    python benchmarks/strided_conv.py [--model=resnet18] [--batch=32] [--image_size=224]

`layers.Conv(strides > 1)` on CPU used to run the strided im2col matmul for
the forward and the backward pass; it now keeps XLA's strided convolution
for the forward (`layers.conv_strided`) and im2col's VJP. This times the
backbone's forward (`train=False`) and forward+backward (`train=True`, the
loss the sum of the features) both ways in one process, alternating rounds,
and prints one JSON line: milliseconds (medians), the ratios, and the largest
difference of the features and (relative to each parameter's largest entry) of the gradients.
"""

import json
import os

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import timing

from fsl_jax import models
from fsl_jax.models import layers

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet18", "A backbone with strided layers.Conv (resnet18/50, wrn).")
flags.DEFINE_integer("batch", 32, "")
flags.DEFINE_integer("image_size", 224, "")
flags.DEFINE_integer("steps", 2, "Timed calls per round.")
flags.DEFINE_integer("rounds", 3, "")


def main(argv):
  del argv
  x = jnp.asarray(np.random.default_rng(0).normal(
      size=(FLAGS.batch, FLAGS.image_size, FLAGS.image_size, 3)).astype(np.float32))
  model = models.get(FLAGS.model)
  variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
  new = layers.conv_strided
  old = lambda x, w, stride: layers.conv_im2col(x, w, stride=stride)
  fns, outs = {}, {}
  for name, conv in (("xla_forward", new), ("im2col", old)):
    layers.conv_strided = conv  # layers.Conv looks it up when traced
    fwd = jax.jit(lambda v, a: model.apply(v, a, train=False)).lower(variables, x).compile()

    def loss(p, a, v=variables):
      out, _ = model.apply({**v, "params": p}, a, train=True, mutable=["batch_stats"])
      return out.sum()

    grad = jax.jit(jax.grad(loss)).lower(variables["params"], x).compile()
    layers.conv_strided = new
    fns[name] = (fwd, grad)
    outs[name] = (np.asarray(fwd(variables, x)), grad(variables["params"], x))
  times = {f"{n}_{k}_ms": [] for n in fns for k in ("fwd", "fwd_bwd")}
  for r in range(FLAGS.rounds):
    for n in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
      fwd, grad = fns[n]
      times[f"{n}_fwd_ms"].append(timing.mean_ms(
          lambda: jax.block_until_ready(fwd(variables, x)), FLAGS.steps))
      times[f"{n}_fwd_bwd_ms"].append(timing.mean_ms(
          lambda: jax.block_until_ready(grad(variables["params"], x)), FLAGS.steps))
  med = {k: round(float(np.median(v)), 1) for k, v in times.items()}
  # Per parameter: the largest difference relative to that gradient's largest entry.
  gdiff = max(float(jnp.abs(a - b).max() / jnp.abs(b).max()) for a, b in
              zip(jax.tree.leaves(outs["xla_forward"][1]), jax.tree.leaves(outs["im2col"][1])))
  print(json.dumps({
      "model": FLAGS.model, "batch": FLAGS.batch, "image_size": FLAGS.image_size, **med,
      "fwd_speedup": round(med["im2col_fwd_ms"] / med["xla_forward_fwd_ms"], 3),
      "fwd_bwd_speedup": round(med["im2col_fwd_bwd_ms"] / med["xla_forward_fwd_bwd_ms"], 3),
      "max_abs_diff_features": float(np.abs(outs["xla_forward"][0] - outs["im2col"][0]).max()),
      "max_rel_diff_grads": gdiff, "backend": jax.default_backend(),
      "cpu_count": os.cpu_count(), "rounds": FLAGS.rounds, "steps": FLAGS.steps}))


if __name__ == "__main__":
  app.run(main)
