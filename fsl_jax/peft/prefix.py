"""Prefix tuning (Li & Liang, 2021): learned keys/values before every layer.

Params are either direct per-layer prefixes,
  {"kv": [P, 2 * L * D]},
or reparameterised through an MLP (more stable training, as in the paper),
  {"embed": [P, D], "mlp": {"w1": [D, H], "b1": [H], "w2": [H, 2 * L * D], "b2": [2*L*D]}}.
`to_kv(params, ...)` gives the model's `prefix_kv`: L dicts {"k","v": 1xPxHxK}.
After training, `materialize` drops the MLP and keeps only {"kv"} for inference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def init(key: jax.Array, n_tokens: int, n_layer: int, n_embd: int,
         reparam_hidden: int = 0, std: float = 0.02) -> dict:
  out = 2 * n_layer * n_embd
  k1, k2, k3 = jax.random.split(key, 3)
  if reparam_hidden <= 0:
    return {"kv": jax.random.normal(k1, (n_tokens, out)) * std}
  return {"embed": jax.random.normal(k1, (n_tokens, n_embd)) * std,
          "mlp": {"w1": jax.random.normal(k2, (n_embd, reparam_hidden)) / jnp.sqrt(n_embd),
                  "b1": jnp.zeros((reparam_hidden,)),
                  "w2": jax.random.normal(k3, (reparam_hidden, out)) * std,
                  "b2": jnp.zeros((out,))}}


def flat_kv(params: dict) -> jax.Array:
  """[P, 2 * L * D] prefix activations."""
  if "kv" in params:
    return params["kv"]
  m = params["mlp"]
  h = jnp.tanh(params["embed"] @ m["w1"] + m["b1"])
  return h @ m["w2"] + m["b2"]


def to_kv(params: dict, n_layer: int, n_head: int, head_dim: int) -> list[dict]:
  """The model's `prefix_kv`: per layer {"k","v": [1, P, H, K]}."""
  kv_PxF = flat_kv(params)
  p = kv_PxF.shape[0]
  if kv_PxF.shape[1] != 2 * n_layer * n_head * head_dim:
    raise ValueError(f"Prefix width {kv_PxF.shape[1]} does not fit a model with "
                     f"{n_layer} layers of {n_head}x{head_dim}; was it trained on another base?")
  kv_Px2xLxHxK = kv_PxF.reshape(p, 2, n_layer, n_head, head_dim)
  return [{"k": kv_Px2xLxHxK[None, :, 0, i], "v": kv_Px2xLxHxK[None, :, 1, i]}
          for i in range(n_layer)]


def materialize(params: dict) -> dict:
  """Inference form: the MLP's output as direct prefixes (same `to_kv`)."""
  return {"kv": flat_kv(params)}
