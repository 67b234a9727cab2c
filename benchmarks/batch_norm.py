r"""Training-mode BatchNorm forward + backward alone: Flax's against torch's.

BENCHMARKS.md traced the ResNet-12 step's gap to PyTorch on CPU to the
backbone's forward + backward with batch statistics (eval-mode BatchNorm
runs at torch's speed). This times the BatchNorm layer alone at ResNet-12's
shapes (the input of each stage's BatchNorms at --image_size), one JSON line
per shape:

    python benchmarks/batch_norm.py --image_size=84 --batch=80

`flax`: `nn.BatchNorm(use_running_average=False)` differentiated by JAX;
`closed_form`: the same values with the closed-form BatchNorm derivative as a
custom JVP (dy = scale * rsqrt(var + eps) * (dx - mean(dx) - xhat *
mean(xhat * dx)) + ...), tried as a faster backward and measured slower, so
it lives only here; `torch`: `F.batch_norm(training=True)` with autograd.
Each value is the median over --rounds alternating rounds of --steps calls;
loss = sum(y * g) for a fixed random g, gradients with respect to x, scale
and bias.
"""

from __future__ import annotations

import functools
import json
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 84, "ResNet-12 input size (stage maps: /1, /2, /4, /8).")
flags.DEFINE_integer("batch", 80, "Images per call (5-way 1-shot 15-query: 80).")
flags.DEFINE_integer("steps", 10, "Calls per round.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds.")
flags.DEFINE_boolean("torch", True, "Also time torch.")


def _stats(x):
  axes = tuple(range(x.ndim - 1))
  mean = x.mean(axes)
  return mean, jnp.maximum((x * x).mean(axes) - mean * mean, 0.0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def closed_form_bn(x, scale, bias, epsilon):
  mean, var = _stats(x)
  return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias


@closed_form_bn.defjvp
def _closed_form_jvp(epsilon, primals, tangents):
  x, scale, bias = primals
  dx, dscale, dbias = tangents
  axes = tuple(range(x.ndim - 1))
  mean, var = _stats(x)
  inv = jax.lax.rsqrt(var + epsilon)
  xhat = (x - mean) * inv
  dy = (dx - dx.mean(axes) - xhat * (xhat * dx).mean(axes)) * (inv * scale)
  return xhat * scale + bias, dy + xhat * dscale + dbias


def _shapes(size: int, batch: int):
  widths = (64, 160, 320, 640)
  return [(batch, -(-size // 2**i), -(-size // 2**i), w) for i, w in enumerate(widths)]


def _jax_fns(shape):
  bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  variables = bn.init(jax.random.PRNGKey(0), jnp.zeros(shape))

  def flax_loss(x, scale, bias, g):
    v = {"params": {"scale": scale, "bias": bias}, "batch_stats": variables["batch_stats"]}
    y, _ = bn.apply(v, x, mutable=["batch_stats"])
    return (y * g).sum()

  def closed_form_loss(x, scale, bias, g):
    return (closed_form_bn(x, scale, bias, 1e-5) * g).sum()

  return {name: jax.jit(jax.grad(fn, argnums=(0, 1, 2)))
          for name, fn in (("flax", flax_loss), ("closed_form", closed_form_loss))}


def _time(fn, steps):
  t = time.perf_counter()
  for _ in range(steps):
    fn()  # blocks until its result is ready
  return (time.perf_counter() - t) / steps


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  for shape in _shapes(FLAGS.image_size, FLAGS.batch):
    c = shape[-1]
    x = rng.normal(1.0, 2.0, shape).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bias = rng.normal(size=c).astype(np.float32)
    fns = _jax_fns(shape)
    args = [jnp.asarray(a) for a in (x, scale, bias, g)]
    runs = {name: (lambda f=f: jax.block_until_ready(f(*args))) for name, f in fns.items()}
    grads = {name: run() for name, run in runs.items()}
    diff = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-12))
               for a, b in zip(grads["flax"], grads["closed_form"]))
    if FLAGS.torch:
      import torch  # pylint: disable=g-import-not-at-top
      tx = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
      tg = torch.tensor(g.transpose(0, 3, 1, 2).copy())
      ts = torch.tensor(scale, requires_grad=True)
      tb = torch.tensor(bias, requires_grad=True)

      def torch_step():
        for t in (tx, ts, tb):
          t.grad = None
        y = torch.nn.functional.batch_norm(tx, None, None, ts, tb, training=True, eps=1e-5)
        (y * tg).sum().backward()
        return tx.grad

      runs["torch"] = torch_step
      runs["torch"]()
    times = {name: [] for name in runs}
    for _ in range(FLAGS.rounds):
      for name, run in runs.items():
        times[name].append(_time(run, FLAGS.steps))
    med = {name: float(np.median(t)) for name, t in times.items()}
    row = {"shape": list(shape), "ms": {k: round(v * 1e3, 3) for k, v in med.items()},
           "closed_form_vs_flax": round(med["flax"] / med["closed_form"], 3),
           "max_rel_grad_diff_closed_form_vs_flax": diff}
    if "torch" in med:
      row["flax_vs_torch"] = round(med["torch"] / med["flax"], 3)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  app.run(main)
