"""Conv and pooling layers with CPU-friendly gradients.

XLA on CPU runs the gradient of a convolution 8-15x slower than its forward
pass and the gradient of `max_pool` (select-and-scatter) ~6x slower than an
elementwise mask. These layers keep XLA's forward convolution and give it a
custom VJP built from operations XLA runs fast on CPU:

- dx is itself a forward convolution of the cotangent with the flipped,
  in/out-transposed kernel (stride 1, SAME padding);
- dW is one matmul of the im2col patches, laid out [k*k*C, B*H*W] so the big
  contraction is a plain row-major matmul;
- max-pool's dx routes the cotangent to the first maximum of each window
  (as XLA does) through an elementwise mask.

`impl='auto'` uses them on CPU and XLA's native gradients elsewhere (GPU/TPU
have fast convolution gradients and the native ones vmap into grouped convs).
The parameters are those of `flax.linen.Conv` (kernel [k, k, C, O], bias [O]).
A strided convolution pads k // 2 on every side (PyTorch's `padding=k // 2`)
and on CPU keeps XLA's forward with the VJP of a strided im2col matmul (only
strided patches are multiplied); `impl='im2col'` runs it as that matmul.

Also here: `batch_norm` (BatchNorm or MAML++'s per-step `StepBatchNorm`, as
every backbone builds it), DropBlock (Ghiasi et al., 2018) and
`deterministic(module)` (a backbone with its dropout switched off).
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DN)


@jax.custom_vjp
def conv_same(x_BxHxWxC, w_KxKxCxO):
  """Stride-1 SAME convolution with an odd square kernel and a CPU-fast VJP."""
  return _conv(x_BxHxWxC, w_KxKxCxO)


def _conv_fwd(x, w):
  return _conv(x, w), (x, w)


def _conv_bwd(res, g_BxHxWxO):
  x, w = res
  k = w.shape[0]
  # conv_same (not _conv) so that differentiating this VJP again, as
  # second-order MAML does, also takes the fast path.
  dx = conv_same(g_BxHxWxO, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2))
  b, h, wd, c = x.shape
  p = k // 2
  x_CxBxHxW = jnp.pad(x.transpose(3, 0, 1, 2), ((0, 0), (0, 0), (p, p), (p, p)))
  cols = jnp.stack([x_CxBxHxW[:, :, i:i + h, j:j + wd] for i in range(k) for j in range(k)])
  dw = cols.reshape(k * k * c, b * h * wd) @ g_BxHxWxO.reshape(b * h * wd, -1)
  return dx.astype(x.dtype), dw.reshape(w.shape).astype(w.dtype)


conv_same.defvjp(_conv_fwd, _conv_bwd)


def conv_im2col(x_BxHxWxC, w_KxKxCxO, stride: int = 1):
  """The same convolution as one matmul of im2col patches (plain jnp ops).

  Vmapped with per-task weights (the MAML family on CPU) it becomes a batched
  matmul instead of the grouped convolution XLA runs slowly on CPU; its
  derivatives of any order are matmuls and pads. With `stride` s only every
  s-th patch is taken: output [B, ceil(H/s), ceil(W/s), O].
  """
  k = w_KxKxCxO.shape[0]
  b, h, wd, c = x_BxHxWxC.shape
  p = k // 2
  xp = jnp.pad(x_BxHxWxC, ((0, 0), (p, p), (p, p), (0, 0)))
  cols = jnp.concatenate([xp[:, i:i + h:stride, j:j + wd:stride]
                          for i in range(k) for j in range(k)], axis=-1)
  ho, wo = cols.shape[1], cols.shape[2]
  y = cols.reshape(b * ho * wo, k * k * c) @ w_KxKxCxO.reshape(k * k * c, -1)
  return y.reshape(b, ho, wo, -1)


def _conv_strided(x, w, stride: int):
  p = w.shape[0] // 2
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((p, p), (p, p)),
                                      dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_strided(x_BxHxWxC, w_KxKxCxO, stride: int):
  """A strided convolution (padding k // 2): XLA's forward, the im2col matmuls' VJP.

  XLA's CPU forward beats the strided im2col's (whose patch gather is a large
  concatenate: ResNet-18's 7x7 stem at 224x224 copies 49 slices of the
  image), while im2col's gradients are the fast ones; a frozen backbone
  (feature extraction, SimpleShot) runs the forward alone.
  """
  return _conv_strided(x_BxHxWxC, w_KxKxCxO, stride)


def _conv_strided_fwd(x, w, stride):
  return _conv_strided(x, w, stride), (x, w)


def _conv_strided_bwd(stride, res, g):
  x, w = res
  _, vjp = jax.vjp(functools.partial(conv_im2col, stride=stride), x, w)
  return vjp(g)


conv_strided.defvjp(_conv_strided_fwd, _conv_strided_bwd)


@jax.custom_vjp
def max_pool_2x2(x_BxHxWxC):
  """2x2 stride-2 max-pool (VALID: an odd last row/column is dropped)."""
  return _pool(x_BxHxWxC)


def _pool(x):
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max((2, 4))


def _quarters(x):
  """The 2x2 windows' elements as four [B, H//2, W//2, C] grids, row-major."""
  h2, w2 = x.shape[1] // 2, x.shape[2] // 2
  x = x[:, :2 * h2, :2 * w2]
  return x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]


def _pool_fwd(x):
  # Under jit XLA may compute x twice (in different fusions, e.g. its im2col
  # matmul) with different rounding, so nothing here may compare x with a max
  # taken elsewhere. Two places did, each losing windows' gradients (seen as
  # wrong second-order MAML gradients with im2col convolutions):
  # - a backward pass that found the maximum by `x == y`;
  # - y = x.max(window axes): second-order MAML differentiates y itself, and
  #   JAX's derivative of reduce_max compares x with the result the same way.
  # So idx (the residual) comes from compare-selects on x's four strided
  # views, always naming one element per window: the first maximum in
  # row-major order, as XLA's select-and-scatter (ties are common: constant
  # background). y is XLA's reduce_window, whose derivative selects within
  # itself; a max of the strided views made the ProtoNet step 1.4x slower.
  p, q, r, s = _quarters(x)
  top, bottom = jnp.maximum(p, q), jnp.maximum(r, s)
  idx = jnp.where(bottom > top, jnp.where(s > r, 3, 2), jnp.where(q > p, 1, 0))
  y = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  return y, (idx.astype(jnp.int8), x.shape)


def _pool_bwd(res, g):
  idx, (b, h, w, c) = res
  h2, w2 = h // 2, w // 2
  zero = jnp.zeros_like(g)
  p, q, r, s = (jnp.where(idx == k, g, zero) for k in range(4))
  top = jnp.stack([p, q], axis=3).reshape(b, h2, 2 * w2, c)
  bottom = jnp.stack([r, s], axis=3).reshape(b, h2, 2 * w2, c)
  dx = jnp.stack([top, bottom], axis=2).reshape(b, 2 * h2, 2 * w2, c)
  return (jnp.pad(dx, ((0, 0), (0, h - 2 * h2), (0, w - 2 * w2), (0, 0))),)


max_pool_2x2.defvjp(_pool_fwd, _pool_bwd)


def resolve_impl(impl: str) -> str:
  if impl == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "xla"
  if impl not in ("cpu", "xla", "im2col"):
    raise ValueError(f"Unknown layer impl {impl!r}; use auto, cpu, xla or im2col.")
  return impl


class Conv(nn.Module):
  """`nn.Conv(features, (k, k), padding='SAME')` with a selectable gradient path.

  `strides` > 1 pads k // 2 on each side (PyTorch's `padding=k // 2`; XLA's
  'SAME' would pad an even input only after).
  """
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  impl: str = "auto"
  strides: int = 1
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
    impl = resolve_impl(self.impl)
    if self.strides == 1:
      fn = {"cpu": conv_same, "im2col": conv_im2col, "xla": _conv}[impl]
    elif impl == "xla":
      fn = functools.partial(_conv_strided, stride=self.strides)
    elif impl == "cpu":  # XLA's forward, the strided im2col matmuls' fast gradients
      fn = functools.partial(conv_strided, stride=self.strides)
    else:  # strided patches only (vmapped per-task weights: batched matmuls)
      fn = functools.partial(conv_im2col, stride=self.strides)
    y = fn(x, kernel.astype(x.dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
    return y


def max_pool(x, impl: str = "auto"):
  if resolve_impl(impl) in ("cpu", "im2col"):
    return max_pool_2x2(x)
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class StepBatchNorm(nn.Module):
  """BatchNorm with `steps` sets of scale/bias and running statistics.

  MAML++ (Antoniou et al., 2019) keeps per-inner-step BatchNorm weights and
  statistics; `step` (an int, possibly traced) picks the set. Statistics are
  over all but the last axis; running averages update only when the
  'batch_stats' collection is mutable.
  """
  steps: int
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, train: bool, step):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (self.steps, c))
    bias = self.param("bias", nn.initializers.zeros, (self.steps, c))
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((self.steps, c)))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((self.steps, c)))
    step = jnp.minimum(step, self.steps - 1)
    axes = tuple(range(x.ndim - 1))
    if train:
      mean = x.mean(axes)
      var = jnp.maximum((x * x).mean(axes) - mean * mean, 0.0)
      if self.is_mutable_collection("batch_stats") and not self.is_initializing():
        m = self.momentum
        ra_mean.value = ra_mean.value.at[step].set(
            m * ra_mean.value[step] + (1 - m) * jax.lax.stop_gradient(mean))
        ra_var.value = ra_var.value.at[step].set(
            m * ra_var.value[step] + (1 - m) * jax.lax.stop_gradient(var))
    else:
      mean, var = ra_mean.value[step], ra_var.value[step]
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    return y * scale[step] + bias[step]


def batch_norm(x, train: bool, step=0, bn_steps: int = 0, name: str | None = None):
  """BatchNorm as the backbones use it (momentum 0.9, epsilon 1e-5).

  With `bn_steps` > 0 it is a `StepBatchNorm` and `step` picks the set
  (MAML++). Call it inside a compact method: the layer joins that module.
  """
  if bn_steps:
    return StepBatchNorm(bn_steps, name=name)(x, train, step)
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)(x)


def drop_block(x_BxHxWxC: jax.Array, key: jax.Array, rate: float, block_size: int) -> jax.Array:
  """DropBlock (Ghiasi et al., 2018): zero random `block_size` squares, rescale the rest.

  Block seeds are Bernoulli(gamma) at the positions where a whole block
  fits, independently per example and channel, with the paper's
  gamma = rate / bs^2 * (H * W) / ((H - bs + 1) * (W - bs + 1)), so that
  seeds times block area cover `rate` of the map (overlapping blocks make
  the dropped fraction a little lower). Each seed zeroes the bs x bs square
  whose top-left corner it is; the kept activations are scaled by
  (all / kept) per batch, as MetaOptNet does. A block larger than the map
  is shrunk to it (at 84x84 ResNet-12's last map is 5x5, at 32x32 2x2).
  """
  b, h, w, c = x_BxHxWxC.shape
  bs = max(1, min(block_size, h, w))
  gamma = rate / bs**2 * (h * w) / ((h - bs + 1) * (w - bs + 1))
  seeds = jax.random.bernoulli(key, gamma, (b, h - bs + 1, w - bs + 1, c))
  # A seed at (i, j) covers [i, i + bs) x [j, j + bs): a bs x bs max over
  # the seeds padded by bs - 1 on every side puts each covered pixel at 1.
  pad = ((0, 0), (bs - 1, bs - 1), (bs - 1, bs - 1), (0, 0))
  seeds = jnp.pad(seeds.astype(x_BxHxWxC.dtype), pad)
  dropped = jax.lax.reduce_window(seeds, jnp.array(0, seeds.dtype), jax.lax.max,
                                  (1, bs, bs, 1), (1, 1, 1, 1), "VALID")
  keep = 1 - dropped
  scale = keep.size / jnp.maximum(keep.sum(), 1)
  return x_BxHxWxC * keep * scale


class DropBlock(nn.Module):
  """`drop_block` with a key from the 'dropout' rng; the identity unless `train`."""
  rate: float
  block_size: int = 5

  @nn.compact
  def __call__(self, x, train: bool):
    if not train or self.rate == 0:
      return x
    return drop_block(x, self.make_rng("dropout"), self.rate, self.block_size)


def check_dropout_rng(module: nn.Module, train: bool, rates) -> None:
  """Refuses a training-mode call of a backbone with dropout but no 'dropout' rng."""
  if train and any(r > 0 for r in rates) and not module.has_rng("dropout"):
    raise ValueError(
        f"{type(module).__name__} drops activations in training mode (rates {tuple(rates)}) "
        "and needs a key: apply it with rngs={'dropout': key} (learners pass the key "
        "outer_loss receives), call it with train=False, or set its drop rates to 0.")


def deterministic(module: nn.Module) -> nn.Module:
  """`module` with its dropout off: the fields it names in `dropout_fields` set to 0.

  For a backbone run in training mode only for BatchNorm's batch statistics
  (transductive MAML at meta-test time); a backbone without dropout is
  returned as it is.
  """
  fields = getattr(module, "dropout_fields", ())
  return module.clone(**{f: 0.0 for f in fields}) if fields else module


# ------------------------------------------------------------------ attention

ATTENTION_IMPLS = ("auto", "einsum", "per_example")


def attention(q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array,
              impl: str = "auto", key_mask_BxS: jax.Array | None = None,
              scale: float | None = None) -> jax.Array:
  """softmax(q k^T * scale + mask) v per head, the softmax in float32; returns [B, T, H, K].

  `scale` defaults to 1 / sqrt(K); `key_mask_BxS` (true: attend) gives masked
  keys the float32 minimum as logit, for every query.

  impl='einsum': one batched program over the whole [B, H, T, S] logits (GPU
  and TPU fuse and tile it well). impl='per_example' (what 'auto' picks on
  CPU): heads-leading [H, T, K] layouts and a `lax.map` over the batch, so
  XLA's CPU dot runs a plain batched matmul per example and that example's
  [H, T, S] logits stay cache-sized. Measured on the 2-core CPU, batch 32,
  6 heads of 64 (ViT-S), attention alone: 197 tokens 158-213 -> 64-73 ms,
  257 tokens (DINOv2-S/14 at 224) 223-301 -> 133-153 ms (BENCHMARKS.md);
  the two agree to float32 rounding (6e-7 on unit-scale inputs).
  """
  if impl == "auto":
    impl = "per_example" if jax.default_backend() == "cpu" else "einsum"
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"Unknown attention impl {impl!r}; use {', '.join(ATTENTION_IMPLS)}.")
  scale = q_BxTxHxK.shape[-1] ** -0.5 if scale is None else scale
  dtype = v_BxSxHxK.dtype
  b, s = k_BxSxHxK.shape[0], k_BxSxHxK.shape[1]
  mask_BxS = (jnp.ones((b, s), bool) if key_mask_BxS is None
              else jnp.broadcast_to(key_mask_BxS.astype(bool), (b, s)))
  low = jnp.finfo(jnp.float32).min
  if impl == "einsum":
    logits = jnp.einsum("bqhd,bkhd->bhqk", q_BxTxHxK, k_BxSxHxK).astype(jnp.float32) * scale
    if key_mask_BxS is not None:
      logits = jnp.where(mask_BxS[:, None, None, :], logits, low)
    w = jax.nn.softmax(logits, axis=-1).astype(dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", w, v_BxSxHxK)

  def one(args):  # one example: [H, T, K], [H, S, K], [H, S, K], [S]
    q, k, v, m = args
    logits_HxTxS = jax.lax.dot_general(q, k, (((2,), (2,)), ((0,), (0,))))
    logits_HxTxS = logits_HxTxS.astype(jnp.float32) * scale
    if key_mask_BxS is not None:
      logits_HxTxS = jnp.where(m[None, None, :], logits_HxTxS, low)
    w = jax.nn.softmax(logits_HxTxS, axis=-1).astype(dtype)
    return jax.lax.dot_general(w, v, (((2,), (1,)), ((0,), (0,))))

  heads_first = lambda a: jnp.swapaxes(a, 1, 2)  # [B, T, H, K] -> [B, H, T, K]
  out_BxHxTxK = jax.lax.map(one, (heads_first(q_BxTxHxK), heads_first(k_BxSxHxK),
                                  heads_first(v_BxSxHxK), mask_BxS))
  return jnp.swapaxes(out_BxHxTxK, 1, 2)
