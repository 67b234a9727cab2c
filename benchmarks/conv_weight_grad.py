r"""Weight-gradient kernels for a stride-1 SAME 3x3 convolution on CPU, timed per ResNet-12 shape.

    python benchmarks/conv_weight_grad.py [stack flat flat_t xla]

`stack`: today's layers._conv_bwd (transpose to [C, B, H, W], nine shifted copies stacked,
one matmul). `flat`: the padded activations flattened to [B*Hp*Wp, C]; the shift (i, j) is the
contiguous row range starting at i*Wp + j, so dW[i, j] is one matmul of that slice with the
cotangent padded to the same width (nine matmuls, no transpose). `flat_t`: the same on
[C, B*Hp*Wp]. `xla`: XLA's own conv weight gradient. Prints one JSON line per shape:
best-of-3 ms and the largest difference relative to the first kernel.
"""
import json, time, sys
import jax, jax.numpy as jnp, numpy as np

def dw_stack(x, g, k=3):
  b, h, wd, c = x.shape; p = k // 2
  x_CxBxHxW = jnp.pad(x.transpose(3, 0, 1, 2), ((0, 0), (0, 0), (p, p), (p, p)))
  cols = jnp.stack([x_CxBxHxW[:, :, i:i + h, j:j + wd] for i in range(k) for j in range(k)])
  dw = cols.reshape(k * k * c, b * h * wd) @ g.reshape(b * h * wd, -1)
  return dw.reshape(k, k, c, -1)

def dw_flat(x, g, k=3):
  b, h, wd, c = x.shape; o = g.shape[-1]; p = k // 2
  hp, wp = h + 2 * p, wd + 2 * p
  xf = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))).reshape(b * hp * wp, c)
  gf = jnp.pad(g, ((0, 0), (0, 2 * p), (0, 2 * p), (0, 0))).reshape(b * hp * wp, o)
  n = b * hp * wp - (2 * p * wp + 2 * p)
  gf = gf[:n]
  outs = [jax.lax.dot_general(xf[i * wp + j: i * wp + j + n], gf, (((0,), (0,)), ((), ())))
          for i in range(k) for j in range(k)]
  return jnp.stack(outs).reshape(k, k, c, o)

def dw_flat_t(x, g, k=3):
  # channels-first flat: [C, N] slices along the minor dim
  b, h, wd, c = x.shape; o = g.shape[-1]; p = k // 2
  hp, wp = h + 2 * p, wd + 2 * p
  xf = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))).reshape(b * hp * wp, c).T
  gf = jnp.pad(g, ((0, 0), (0, 2 * p), (0, 2 * p), (0, 0))).reshape(b * hp * wp, o)
  n = b * hp * wp - (2 * p * wp + 2 * p)
  gf = gf[:n]
  outs = [xf[:, i * wp + j: i * wp + j + n] @ gf for i in range(k) for j in range(k)]
  return jnp.stack(outs).reshape(k, k, c, o)

def dw_xla(x, g, k=3):
  w = jnp.zeros((k, k, x.shape[-1], g.shape[-1]), x.dtype)
  f = lambda w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.vjp(f, w)[1](g)[0]

FNS = dict(stack=dw_stack, flat=dw_flat, flat_t=dw_flat_t, xla=dw_xla)
if __name__ == "__main__":
  shapes = [(80, 84, 84, 3, 64), (80, 42, 42, 64, 160), (80, 42, 42, 160, 160), (80, 21, 21, 160, 320), (80, 21, 21, 320, 320), (80, 10, 10, 320, 640), (80, 10, 10, 640, 640)]
  which = sys.argv[1:] or list(FNS)
  rng = np.random.default_rng(0)
  for (b, h, w, c, o) in shapes:
    x = jnp.asarray(rng.standard_normal((b, h, w, c), np.float32)); g = jnp.asarray(rng.standard_normal((b, h, w, o), np.float32))
    ref = None; row = {"shape": (b, h, w, c, o)}
    for name in which:
      f = jax.jit(FNS[name]); r = f(x, g).block_until_ready()
      if ref is None: ref = np.asarray(r)
      err = float(np.abs(np.asarray(r) - ref).max() / np.abs(ref).max())
      ts = []
      for _ in range(3):
        t = time.perf_counter(); f(x, g).block_until_ready(); ts.append(time.perf_counter() - t)
      row[name + "_ms"] = round(min(ts) * 1e3, 1); row[name + "_rel_err"] = float(f"{err:.1e}")
    print(json.dumps(row), flush=True)
