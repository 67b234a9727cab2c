"""One encoder-decoder Transformer for Marian and mBART, as pure functions.

The two Hugging Face families share all layer math and differ only in flags of
`Seq2SeqConfig` (see `marian.py` / `mbart.py` for the presets):

| flag | Marian | mBART |
|---|---|---|
| positions | sinusoidal, sin-then-cos halves, not stored | learned, index offset by 2 |
| pre_norm | False (post-LayerNorm) | True |
| layernorm_embedding / final_layer_norm | False | True |
| decoder start | pad token | `decoder_start_token_id` (+ forced BOS language id) |

Params are a plain nested dict (HF names, Flax leaf names):

    shared/embedding [V, D]                      (tied input/output embedding)
    final_logits_bias [V]
    lm_head/kernel [D, V]                        (only when untied)
    encoder/embed_positions/embedding [P+2, D]   (learned positions only)
    encoder/layernorm_embedding, encoder/layer_norm  {scale, bias}
    encoder/layers/<i>/self_attn/{q,k,v,out}_proj/{kernel, bias}
    encoder/layers/<i>/{self_attn_layer_norm, fc1, fc2, final_layer_norm}
    decoder/... the same, plus encoder_attn and encoder_attn_layer_norm.

Bottleneck adapters (`fsl_jax.peft.adapters`) live inside a layer's dict as
`adapter_attn` / `adapter_ffn`; a layer applies them when present, so a base
tree and base + adapter tree run through the same functions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, Any]
NEG_INF = float(np.finfo(np.float32).min)


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig:
  """Architecture of a Marian / mBART encoder-decoder (hashable: jit-static)."""
  family: str = "marian"  # "marian" | "mbart": checked against checkpoints.
  vocab_size: int = 58101
  d_model: int = 512
  encoder_layers: int = 6
  decoder_layers: int = 6
  encoder_heads: int = 8
  decoder_heads: int = 8
  encoder_ffn_dim: int = 2048
  decoder_ffn_dim: int = 2048
  max_position_embeddings: int = 512
  activation: str = "swish"
  scale_embedding: bool = True
  positions: str = "sinusoidal"  # "sinusoidal" | "learned"
  pre_norm: bool = False
  layernorm_embedding: bool = False
  final_layer_norm: bool = False
  tie_word_embeddings: bool = True
  layer_norm_eps: float = 1e-5
  pad_token_id: int = 58100
  eos_token_id: int = 0
  bos_token_id: int | None = None
  decoder_start_token_id: int = 58100
  forced_bos_token_id: int | None = None
  forced_eos_token_id: int | None = None
  dropout: float = 0.1

  def replace(self, **kw) -> "Seq2SeqConfig":
    return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """Static description of the bottleneck adapters present in the params."""
  placement: str = "pfeiffer"  # "pfeiffer" (after FFN) | "houlsby" (attn + FFN)
  reduction_factor: int = 16
  activation: str = "relu"


_ACTS = {
    "swish": jax.nn.silu, "silu": jax.nn.silu, "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True), "tanh": jnp.tanh,
}


def activation(name: str):
  if name not in _ACTS:
    raise ValueError(f"Unknown activation {name!r}; known: {sorted(_ACTS)}.")
  return _ACTS[name]


def sinusoidal_positions(n_pos: int, dim: int) -> np.ndarray:
  """Marian's table: sin of even-index angles in the first half, cos after."""
  pos = np.arange(n_pos, dtype=np.float64)[:, None]
  j = np.arange(dim)
  angle = pos / np.power(10000, 2 * (j // 2) / dim)[None, :]
  half = dim // 2 + dim % 2
  out = np.empty((n_pos, dim), np.float32)
  out[:, :half] = np.sin(angle[:, 0::2])
  out[:, half:] = np.cos(angle[:, 1::2])
  return out


def dense(p: Params, x: jax.Array) -> jax.Array:
  y = x @ p["kernel"].astype(x.dtype)
  return y + p["bias"].astype(x.dtype) if "bias" in p else y


def layer_norm(p: Params, x: jax.Array, eps: float) -> jax.Array:
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + eps)
  return (y * p["scale"] + p["bias"]).astype(x.dtype)


def adapter(p: Params, x: jax.Array, act: str) -> jax.Array:
  """Bottleneck x + up(act(down(x))); `up` starts at zero, so identity."""
  return x + dense(p["up"], activation(act)(dense(p["down"], x)))


def split_heads(x_BxTxD: jax.Array, heads: int) -> jax.Array:
  b, t, d = x_BxTxD.shape
  return x_BxTxD.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)


def attend(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, mask_Bx1xTxS) -> jax.Array:
  scale = q_BxHxTxK.shape[-1] ** -0.5
  s = jnp.einsum("bhtk,bhsk->bhts", q_BxHxTxK * scale, k_BxHxSxK)
  s = jnp.where(mask_Bx1xTxS, s.astype(jnp.float32), NEG_INF)
  w = jax.nn.softmax(s, axis=-1).astype(v_BxHxSxK.dtype)
  o = jnp.einsum("bhts,bhsk->bhtk", w, v_BxHxSxK)
  b, h, t, k = o.shape
  return o.transpose(0, 2, 1, 3).reshape(b, t, h * k)


def _sublayer(cfg, lp, name, x, fn, adapter_cfg, adapter_key):
  """Residual block with pre- or post-LayerNorm and an optional adapter."""
  ln = lp[f"{name}_layer_norm"]
  h = layer_norm(ln, x, cfg.layer_norm_eps) if cfg.pre_norm else x
  h = fn(h)
  if adapter_cfg is not None and adapter_key in lp:
    h = adapter(lp[adapter_key], h, adapter_cfg.activation)
  x = x + h
  return x if cfg.pre_norm else layer_norm(ln, x, cfg.layer_norm_eps)


def _ffn(cfg, lp, x, adapter_cfg):
  act = activation(cfg.activation)
  fn = lambda h: dense(lp["fc2"], act(dense(lp["fc1"], h)))
  ln = lp["final_layer_norm"]
  h = layer_norm(ln, x, cfg.layer_norm_eps) if cfg.pre_norm else x
  h = fn(h)
  if adapter_cfg is not None and "adapter_ffn" in lp:
    h = adapter(lp["adapter_ffn"], h, adapter_cfg.activation)
  x = x + h
  return x if cfg.pre_norm else layer_norm(ln, x, cfg.layer_norm_eps)


def embed(cfg: Seq2SeqConfig, params: Params, side: str, ids_BxT, positions_BxT):
  table = params[side].get("embed_tokens", params["shared"])["embedding"]
  x = jnp.take(table, ids_BxT, axis=0)
  if cfg.scale_embedding:
    x = x * math.sqrt(cfg.d_model)
  if cfg.positions == "sinusoidal":
    pos_table = jnp.asarray(sinusoidal_positions(cfg.max_position_embeddings, cfg.d_model))
    x = x + jnp.take(pos_table, positions_BxT, axis=0).astype(x.dtype)
  else:
    pos_table = params[side]["embed_positions"]["embedding"]
    x = x + jnp.take(pos_table, positions_BxT + 2, axis=0).astype(x.dtype)
  if cfg.layernorm_embedding:
    x = layer_norm(params[side]["layernorm_embedding"], x, cfg.layer_norm_eps)
  return x


def encode(cfg: Seq2SeqConfig, params: Params, input_ids_BxS, attention_mask_BxS=None,
           adapter_cfg: AdapterConfig | None = None, dropout_rng=None) -> jax.Array:
  """Encoder hidden states [B, S, D]."""
  b, s = input_ids_BxS.shape
  if attention_mask_BxS is None:
    attention_mask_BxS = jnp.ones((b, s), bool)
  pos = jnp.broadcast_to(jnp.arange(s), (b, s))
  x = embed(cfg, params, "encoder", input_ids_BxS, pos)
  x = _dropout(x, cfg.dropout, dropout_rng, 0)
  mask = attention_mask_BxS.astype(bool)[:, None, None, :]
  houlsby = adapter_cfg is not None and adapter_cfg.placement == "houlsby"
  for i, lp in enumerate(params["encoder"]["layers"]):
    def self_attn(h, lp=lp):
      a = lp["self_attn"]
      q, k, v = (split_heads(dense(a[n], h), cfg.encoder_heads) for n in ("q_proj", "k_proj", "v_proj"))
      return dense(a["out_proj"], attend(q, k, v, mask))
    x = _sublayer(cfg, lp, "self_attn", x, self_attn, adapter_cfg if houlsby else None, "adapter_attn")
    x = _ffn(cfg, lp, x, adapter_cfg)
    x = _dropout(x, cfg.dropout, dropout_rng, i + 1)
  if cfg.final_layer_norm:
    x = layer_norm(params["encoder"]["layer_norm"], x, cfg.layer_norm_eps)
  return x


def _dropout(x, rate, rng, salt):
  if rng is None or rate <= 0.0:
    return x
  keep = jax.random.bernoulli(jax.random.fold_in(rng, salt), 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def cross_kv(cfg: Seq2SeqConfig, params: Params, enc_BxSxD) -> list[tuple[jax.Array, jax.Array]]:
  """Per decoder layer, the encoder-attention keys and values (computed once)."""
  out = []
  for lp in params["decoder"]["layers"]:
    a = lp["encoder_attn"]
    out.append((split_heads(dense(a["k_proj"], enc_BxSxD), cfg.decoder_heads),
                split_heads(dense(a["v_proj"], enc_BxSxD), cfg.decoder_heads)))
  return out


def init_cache(cfg: Seq2SeqConfig, batch: int, max_len: int, dtype=jnp.float32) -> list[dict]:
  hd = cfg.d_model // cfg.decoder_heads
  z = jnp.zeros((batch, cfg.decoder_heads, max_len, hd), dtype)
  return [{"k": z, "v": z} for _ in range(cfg.decoder_layers)]


def decode(cfg: Seq2SeqConfig, params: Params, dec_ids_BxT, enc_kv, enc_mask_BxS,
           cache: list[dict] | None = None, offset=0,
           adapter_cfg: AdapterConfig | None = None, dropout_rng=None):
  """Decoder over T new tokens at positions offset..offset+T-1.

  Without a cache: causal self-attention over the T tokens (teacher forcing).
  With a cache (from `init_cache`, length L): keys/values are written at
  `offset` and attention sees cache slots <= each query's position.
  Returns (logits [B, T, V] float32, new cache or None).
  """
  b, t = dec_ids_BxT.shape
  pos = offset + jnp.arange(t)
  x = embed(cfg, params, "decoder", dec_ids_BxT, jnp.broadcast_to(pos, (b, t)))
  x = _dropout(x, cfg.dropout, dropout_rng, 100)
  cross_mask = enc_mask_BxS.astype(bool)[:, None, None, :]
  houlsby = adapter_cfg is not None and adapter_cfg.placement == "houlsby"
  new_cache = [] if cache is not None else None
  for i, lp in enumerate(params["decoder"]["layers"]):
    def self_attn(h, lp=lp, i=i):
      a = lp["self_attn"]
      q, k, v = (split_heads(dense(a[n], h), cfg.decoder_heads) for n in ("q_proj", "k_proj", "v_proj"))
      if cache is None:
        mask = (jnp.arange(t)[None, :] <= jnp.arange(t)[:, None])[None, None]
      else:
        k = jax.lax.dynamic_update_slice_in_dim(cache[i]["k"], k.astype(cache[i]["k"].dtype), offset, axis=2)
        v = jax.lax.dynamic_update_slice_in_dim(cache[i]["v"], v.astype(cache[i]["v"].dtype), offset, axis=2)
        new_cache.append({"k": k, "v": v})
        mask = (jnp.arange(k.shape[2])[None, :] <= pos[:, None])[None, None]
      return dense(a["out_proj"], attend(q, k, v, mask))

    def cross_attn(h, lp=lp, i=i):
      a = lp["encoder_attn"]
      q = split_heads(dense(a["q_proj"], h), cfg.decoder_heads)
      k, v = enc_kv[i]
      return dense(a["out_proj"], attend(q, k, v, cross_mask))

    ad = adapter_cfg if houlsby else None
    x = _sublayer(cfg, lp, "self_attn", x, self_attn, ad, "adapter_attn")
    x = _sublayer(cfg, lp, "encoder_attn", x, cross_attn, ad, "adapter_cross")
    x = _ffn(cfg, lp, x, adapter_cfg)
    x = _dropout(x, cfg.dropout, dropout_rng, 101 + i)
  if cfg.final_layer_norm:
    x = layer_norm(params["decoder"]["layer_norm"], x, cfg.layer_norm_eps)
  return lm_logits(cfg, params, x), new_cache


def lm_logits(cfg: Seq2SeqConfig, params: Params, x_BxTxD) -> jax.Array:
  if "lm_head" in params:
    logits = x_BxTxD @ params["lm_head"]["kernel"].astype(x_BxTxD.dtype)
  else:
    table = params["decoder"].get("embed_tokens", params["shared"])["embedding"]
    logits = x_BxTxD @ table.T.astype(x_BxTxD.dtype)
  return logits.astype(jnp.float32) + params["final_logits_bias"].astype(jnp.float32)


def forward(cfg: Seq2SeqConfig, params: Params, input_ids_BxS, attention_mask_BxS,
            decoder_input_ids_BxT, adapter_cfg: AdapterConfig | None = None,
            dropout_rng=None) -> jax.Array:
  """Teacher-forced logits [B, T, V] (float32)."""
  if attention_mask_BxS is None:
    attention_mask_BxS = jnp.ones(input_ids_BxS.shape, bool)
  enc = encode(cfg, params, input_ids_BxS, attention_mask_BxS, adapter_cfg, dropout_rng)
  logits, _ = decode(cfg, params, decoder_input_ids_BxT, cross_kv(cfg, params, enc),
                     attention_mask_BxS, adapter_cfg=adapter_cfg,
                     dropout_rng=None if dropout_rng is None else jax.random.fold_in(dropout_rng, 7))
  return logits


def shift_right(cfg: Seq2SeqConfig, labels_BxT: jax.Array) -> jax.Array:
  """Decoder inputs for teacher forcing: [start, labels[:-1]] (pads for -100)."""
  labels = jnp.where(labels_BxT < 0, cfg.pad_token_id, labels_BxT)
  start = jnp.full((labels.shape[0], 1), cfg.decoder_start_token_id, labels.dtype)
  return jnp.concatenate([start, labels[:, :-1]], axis=1)


def init_params(cfg: Seq2SeqConfig, key: jax.Array, std: float = 0.02) -> Params:
  """Random params in the HF layout (normal(0, std) weights, zero biases)."""
  keys = iter(jax.random.split(key, 4096))

  def lin(i, o, bias=True):
    p = {"kernel": jax.random.normal(next(keys), (i, o)) * std}
    if bias:
      p["bias"] = jnp.zeros((o,))
    return p

  def ln():
    return {"scale": jnp.ones((cfg.d_model,)), "bias": jnp.zeros((cfg.d_model,))}

  def attn():
    return {n: lin(cfg.d_model, cfg.d_model) for n in ("q_proj", "k_proj", "v_proj", "out_proj")}

  def side(n_layers, ffn, decoder):
    layers = []
    for _ in range(n_layers):
      lp = {"self_attn": attn(), "self_attn_layer_norm": ln(),
            "fc1": lin(cfg.d_model, ffn), "fc2": lin(ffn, cfg.d_model), "final_layer_norm": ln()}
      if decoder:
        lp["encoder_attn"] = attn()
        lp["encoder_attn_layer_norm"] = ln()
      layers.append(lp)
    s = {"layers": layers}
    if cfg.positions == "learned":
      s["embed_positions"] = {"embedding": jax.random.normal(
          next(keys), (cfg.max_position_embeddings + 2, cfg.d_model)) * std}
    if cfg.layernorm_embedding:
      s["layernorm_embedding"] = ln()
    if cfg.final_layer_norm:
      s["layer_norm"] = ln()
    return s

  emb = jax.random.normal(next(keys), (cfg.vocab_size, cfg.d_model)) * std
  emb = emb.at[cfg.pad_token_id].set(0.0)
  params = {"shared": {"embedding": emb},
            "final_logits_bias": jnp.zeros((cfg.vocab_size,)),
            "encoder": side(cfg.encoder_layers, cfg.encoder_ffn_dim, False),
            "decoder": side(cfg.decoder_layers, cfg.decoder_ffn_dim, True)}
  if not cfg.tie_word_embeddings:
    params["lm_head"] = lin(cfg.d_model, cfg.vocab_size, bias=False)
  return params
