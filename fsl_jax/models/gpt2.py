"""GPT-2 in Flax (linen) with a KV cache; the LM loss.

Params are a plain dict whose paths mirror the Hugging Face names, e.g.
'h_0/attn/c_attn/kernel' (GPT-2's `Conv1D` is stored [in, out], exactly a
Dense kernel), 'wte/embedding', 'ln_f/scale'. The LM head is tied to `wte`.
Checkpoints load in `gpt2_hf`, generation is `gpt2_generate`:

    config, params = gpt2_hf.from_pretrained("/path/to/save_pretrained_dir")
    logits_BxTxV, _ = gpt2.Gpt2(config).apply({"params": params}, ids_BxT)
    out_BxN = gpt2_generate.generate(config, params, ids_BxT, mask_BxT, max_new_tokens=20)

Cache: `init_cache(config, B, S)` -> {"layers": [{"k","v": BxSxHxK}], "mask": BxS,
"index": int32 scalar, "next_pos": B}. Every leaf but `index` is batch-leading,
so beam search can reorder it with one gather (see fsl_jax.decoding).
Prefix tuning and soft prompts enter through `prefix_kv` / `inputs_embeds`
and work with and without the cache.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class Gpt2Config:
  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  n_inner: Optional[int] = None  # None: 4 * n_embd
  activation: str = "gelu_new"
  layer_norm_epsilon: float = 1e-5
  dropout: float = 0.1  # embd / resid / attn dropout; only when deterministic=False
  dtype: str = "float32"  # compute dtype; "bfloat16" for speed on GPU/TPU
  eos_token_id: int = 50256
  name: str = "gpt2"

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head

  @property
  def inner(self) -> int:
    return self.n_inner or 4 * self.n_embd

  @property
  def jnp_dtype(self):
    return _DTYPES[self.dtype]

  def replace(self, **kw) -> "Gpt2Config":
    return dataclasses.replace(self, **kw)

  # Published sizes (openai-community/* and distilbert/distilgpt2).
  @classmethod
  def small(cls, **kw):
    return cls(**{"name": "gpt2", **kw})

  @classmethod
  def medium(cls, **kw):
    return cls(**{"n_embd": 1024, "n_layer": 24, "n_head": 16, "name": "gpt2-medium", **kw})

  @classmethod
  def large(cls, **kw):
    return cls(**{"n_embd": 1280, "n_layer": 36, "n_head": 20, "name": "gpt2-large", **kw})

  @classmethod
  def xl(cls, **kw):
    return cls(**{"n_embd": 1600, "n_layer": 48, "n_head": 25, "name": "gpt2-xl", **kw})

  @classmethod
  def distil(cls, **kw):
    return cls(**{"n_layer": 6, "name": "distilgpt2", **kw})

  @classmethod
  def tiny(cls, **kw):
    """For tests and smoke runs: 2 layers, width 64, the real vocabulary."""
    return cls(**{"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256,
                  "name": "gpt2-tiny", **kw})

  @classmethod
  def preset(cls, name: str, **kw) -> "Gpt2Config":
    table = {"gpt2": cls.small, "gpt2-medium": cls.medium, "gpt2-large": cls.large,
             "gpt2-xl": cls.xl, "distilgpt2": cls.distil, "gpt2-tiny": cls.tiny}
    key = name.split("/")[-1]
    if key not in table:
      raise ValueError(f"Unknown GPT-2 preset {name!r}; choose one of {sorted(table)}.")
    return table[key](**kw)


_ACTS = {"gelu_new": functools.partial(jax.nn.gelu, approximate=True),
         "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
         "gelu": functools.partial(jax.nn.gelu, approximate=False),
         "relu": jax.nn.relu, "silu": jax.nn.silu, "swish": jax.nn.silu}


def _dense(features, name, dtype):
  init = nn.initializers.normal(0.02)
  return nn.Dense(features, name=name, dtype=dtype, kernel_init=init)


_ATTN_CHUNK = 128


class Attention(nn.Module):
  config: Gpt2Config

  def _attend(self, q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS, deterministic):
    c = self.config
    s_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK).astype(jnp.float32)
    s_BxHxTxS = jnp.where(mask_BxTxS[:, None], s_BxHxTxS, jnp.finfo(jnp.float32).min)
    p_BxHxTxS = jax.nn.softmax(s_BxHxTxS, axis=-1).astype(c.jnp_dtype)
    if not deterministic and c.dropout > 0:
      keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - c.dropout, p_BxHxTxS.shape)
      p_BxHxTxS = jnp.where(keep, p_BxHxTxS / (1.0 - c.dropout), 0).astype(p_BxHxTxS.dtype)
    return jnp.einsum("bhts,bshk->bthk", p_BxHxTxS, v_BxSxHxK)

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxTxS, layer_cache=None, index=None, prefix_kv=None,
               deterministic=True):
    c = self.config
    b, t, _ = x_BxTxD.shape
    qkv_BxTx3D = _dense(3 * c.n_embd, "c_attn", c.jnp_dtype)(x_BxTxD)
    q, k, v = jnp.split(qkv_BxTx3D, 3, axis=-1)
    shape = (b, t, c.n_head, c.head_dim)
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = (a.reshape(shape) for a in (q, k, v))
    new_cache = None
    if layer_cache is not None:
      k_BxSxHxK = jax.lax.dynamic_update_slice_in_dim(
          layer_cache["k"], k_BxTxHxK.astype(layer_cache["k"].dtype), index, axis=1)
      v_BxSxHxK = jax.lax.dynamic_update_slice_in_dim(
          layer_cache["v"], v_BxTxHxK.astype(layer_cache["v"].dtype), index, axis=1)
      new_cache = {"k": k_BxSxHxK, "v": v_BxSxHxK}
    elif prefix_kv is not None:
      pk, pv = (jnp.broadcast_to(a, (b,) + a.shape[-3:]).astype(k_BxTxHxK.dtype)
                for a in (prefix_kv["k"], prefix_kv["v"]))
      k_BxSxHxK = jnp.concatenate([pk, k_BxTxHxK], axis=1)
      v_BxSxHxK = jnp.concatenate([pv, v_BxTxHxK], axis=1)
    else:
      k_BxSxHxK, v_BxSxHxK = k_BxTxHxK, v_BxTxHxK
    q_BxTxHxK = q_BxTxHxK * jnp.asarray(1.0 / np.sqrt(c.head_dim), q.dtype)
    k_BxSxHxK, v_BxSxHxK = k_BxSxHxK.astype(q.dtype), v_BxSxHxK.astype(q.dtype)
    s_total = k_BxSxHxK.shape[1]
    chunk = _ATTN_CHUNK
    if layer_cache is None and t >= 2 * chunk and t % chunk == 0:
      # Causal: query block i only needs the first S - T + (i + 1) * chunk keys,
      # which skips ~40% of the score matrix for long sequences.
      p = s_total - t
      outs = []
      for i in range(t // chunk):
        hi = p + (i + 1) * chunk
        outs.append(self._attend(q_BxTxHxK[:, i * chunk:(i + 1) * chunk], k_BxSxHxK[:, :hi],
                                 v_BxSxHxK[:, :hi], mask_BxTxS[:, i * chunk:(i + 1) * chunk, :hi],
                                 deterministic))
      o_BxTxHxK = jnp.concatenate(outs, axis=1)
    else:
      o_BxTxHxK = self._attend(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS, deterministic)
    out = _dense(c.n_embd, "c_proj", c.jnp_dtype)(o_BxTxHxK.reshape(b, t, c.n_embd))
    return out, new_cache


class Block(nn.Module):
  config: Gpt2Config

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxTxS, layer_cache=None, index=None, prefix_kv=None,
               deterministic=True):
    c = self.config
    ln = functools.partial(nn.LayerNorm, epsilon=c.layer_norm_epsilon, dtype=c.jnp_dtype)
    drop = lambda y: (y if deterministic or c.dropout == 0
                      else nn.Dropout(c.dropout)(y, deterministic=False))
    h, new_cache = Attention(c, name="attn")(ln(name="ln_1")(x_BxTxD), mask_BxTxS, layer_cache,
                                             index, prefix_kv, deterministic)
    x_BxTxD = x_BxTxD + drop(h)
    h = ln(name="ln_2")(x_BxTxD)
    x_BxTxD = x_BxTxD + drop(Mlp(c, name="mlp")(h))
    return x_BxTxD, new_cache


class Mlp(nn.Module):
  config: Gpt2Config

  @nn.compact
  def __call__(self, x_BxTxD):
    c = self.config
    h = _dense(c.inner, "c_fc", c.jnp_dtype)(x_BxTxD)
    return _dense(c.n_embd, "c_proj", c.jnp_dtype)(_ACTS[c.activation](h))


def positions_from_mask(mask_BxT: jax.Array, start_B: jax.Array | int = 0) -> jax.Array:
  """Position ids that skip padding (as transformers' generate): start + cumsum - 1."""
  pos = jnp.cumsum(mask_BxT.astype(jnp.int32), axis=-1) - 1
  pos = jnp.where(mask_BxT.astype(bool), pos, 1)
  return pos + jnp.asarray(start_B, jnp.int32).reshape(-1, 1)


class Gpt2(nn.Module):
  """GPT-2 LM. `__call__` returns (logits_BxTxV float32, new cache or None)."""
  config: Gpt2Config

  def setup(self):
    c = self.config
    init = nn.initializers.normal(0.02)
    self.wte = nn.Embed(c.vocab_size, c.n_embd, embedding_init=init, name="wte")
    self.wpe = nn.Embed(c.n_positions, c.n_embd, embedding_init=nn.initializers.normal(0.01),
                        name="wpe")
    self.h = [Block(c, name=f"h_{i}") for i in range(c.n_layer)]
    self.ln_f = nn.LayerNorm(epsilon=c.layer_norm_epsilon, dtype=c.jnp_dtype, name="ln_f")
    self.drop = nn.Dropout(c.dropout)

  def embed(self, ids_BxT: jax.Array) -> jax.Array:
    return self.wte(ids_BxT)

  def __call__(self, input_ids_BxT=None, *, inputs_embeds_BxTxD=None, positions_BxT=None,
               attention_mask_BxT=None, cache=None, prefix_kv=None, deterministic=True):
    """One forward pass.

    input_ids_BxT or inputs_embeds_BxTxD: the new tokens.
    attention_mask_BxT: 1 for real tokens, 0 for (left) padding; default all 1.
    positions_BxT: default arange(T) uncached, `cache["next_pos"]` + offsets cached.
    cache: from `init_cache`; the T new keys/values go to slots [index, index+T).
    prefix_kv: per-layer [{"k","v": (B|1)xPxHxK}] always-visible keys (prefix
      tuning) when running without a cache; with a cache, put them in via
      `init_cache(prefix_kv=...)`.
    """
    c = self.config
    if inputs_embeds_BxTxD is None:
      inputs_embeds_BxTxD = self.wte(input_ids_BxT)
    b, t, _ = inputs_embeds_BxTxD.shape
    if attention_mask_BxT is None:
      attention_mask_BxT = jnp.ones((b, t), jnp.bool_)
    attention_mask_BxT = attention_mask_BxT.astype(jnp.bool_)
    index = None
    if cache is not None:
      index = cache["index"]
      if positions_BxT is None:
        positions_BxT = positions_from_mask(attention_mask_BxT, cache["next_pos"])
      slots_mask_BxS = jax.lax.dynamic_update_slice_in_dim(
          cache["mask"], attention_mask_BxT, index, axis=1)
      s = slots_mask_BxS.shape[1]
      causal_TxS = jnp.arange(s)[None, :] <= index + jnp.arange(t)[:, None]
      mask_BxTxS = slots_mask_BxS[:, None, :] & causal_TxS[None]
    else:
      if positions_BxT is None:
        positions_BxT = jnp.broadcast_to(jnp.arange(t), (b, t))
      causal_TxT = jnp.tril(jnp.ones((t, t), jnp.bool_))
      mask_BxTxS = attention_mask_BxT[:, None, :] & causal_TxT[None]
      if prefix_kv is not None:
        p = prefix_kv[0]["k"].shape[-3]
        mask_BxTxS = jnp.concatenate([jnp.ones((b, t, p), jnp.bool_), mask_BxTxS], axis=-1)
    x_BxTxD = (inputs_embeds_BxTxD + self.wpe(positions_BxT)).astype(c.jnp_dtype)
    if not deterministic and c.dropout > 0:
      x_BxTxD = self.drop(x_BxTxD, deterministic=False)
    new_layers = []
    for i, block in enumerate(self.h):
      layer_cache = cache["layers"][i] if cache is not None else None
      layer_prefix = prefix_kv[i] if (prefix_kv is not None and cache is None) else None
      x_BxTxD, nc = block(x_BxTxD, mask_BxTxS, layer_cache, index, layer_prefix, deterministic)
      new_layers.append(nc)
    x_BxTxD = self.ln_f(x_BxTxD)
    logits_BxTxV = self.wte.attend(x_BxTxD).astype(jnp.float32)
    new_cache = None
    if cache is not None:
      new_cache = {"layers": new_layers, "mask": slots_mask_BxS, "index": index + t,
                   "next_pos": jnp.max(positions_BxT, axis=-1) + 1}
    return logits_BxTxV, new_cache


def init_cache(config: Gpt2Config, batch: int, max_len: int, prefix_kv=None) -> dict:
  """An empty cache of `max_len` slots; a prefix (P slots) is written first."""
  dtype = config.jnp_dtype
  shape = (batch, max_len, config.n_head, config.head_dim)
  layers = [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
            for _ in range(config.n_layer)]
  mask = jnp.zeros((batch, max_len), jnp.bool_)
  index = jnp.zeros((), jnp.int32)
  if prefix_kv is not None:
    p = prefix_kv[0]["k"].shape[-3]
    if p >= max_len:
      raise ValueError(f"Prefix of {p} tokens does not fit a cache of {max_len} slots.")
    for layer, pre in zip(layers, prefix_kv):
      for n in ("k", "v"):
        val = jnp.broadcast_to(pre[n], (batch,) + pre[n].shape[-3:]).astype(dtype)
        layer[n] = layer[n].at[:, :p].set(val)
    mask = mask.at[:, :p].set(True)
    index = jnp.asarray(p, jnp.int32)
  return {"layers": layers, "mask": mask, "index": index,
          "next_pos": jnp.zeros((batch,), jnp.int32)}


def init_params(config: Gpt2Config, key: jax.Array) -> dict:
  """Random GPT-2 weights (N(0, 0.02) kernels, unit LayerNorms)."""
  ids = jnp.zeros((1, 2), jnp.int32)
  return jax.jit(Gpt2(config).init)(key, ids)["params"]


@functools.partial(jax.jit, static_argnames=("config",))
def lm_logits(config: Gpt2Config, params, ids_BxT, mask_BxT=None, positions_BxT=None,
              prefix_kv=None, inputs_embeds_BxTxD=None):
  """Jitted uncached logits (float32); positions skip left padding by default."""
  if mask_BxT is not None and positions_BxT is None:
    positions_BxT = positions_from_mask(mask_BxT)
  return Gpt2(config).apply({"params": params}, ids_BxT, attention_mask_BxT=mask_BxT,
                            positions_BxT=positions_BxT, prefix_kv=prefix_kv,
                            inputs_embeds_BxTxD=inputs_embeds_BxTxD)[0]


def lm_loss(logits_BxTxV, targets_BxT, weights_BxT):
  """Mean token cross-entropy over weighted positions (float32)."""
  logp = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  nll_BxT = -jnp.take_along_axis(logp, targets_BxT[..., None], axis=-1)[..., 0]
  w = weights_BxT.astype(jnp.float32)
  return jnp.sum(nll_BxT * w) / jnp.maximum(jnp.sum(w), 1.0)
