"""Backbone embedding helpers shared by the metric and closed-form learners."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dropout_rngs(key, train: bool) -> dict:
  """`rngs` for a backbone's apply: {'dropout': key} in training mode when a key is given.

  Backbones with dropout or DropBlock (resnet12, wrn) draw their masks from
  it; others ignore it, so their results do not depend on the key.
  """
  return {"dropout": key} if train and key is not None else {}


def embed(model, variables, x, train: bool, key=None):
  """(embeddings [B, D], new model state).

  Training mode updates BatchNorm statistics and returns them
  ({'batch_stats': ...}); otherwise running averages are used and the state
  is {}. Backbones without BatchNorm always give {}. `key` feeds the
  backbone's dropout in training mode (a backbone with dropout refuses
  training mode without one).
  """
  rngs = dropout_rngs(key, train)
  if train and "batch_stats" in variables:
    return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
  return model.apply(variables, x, train=train, rngs=rngs), {}


def embed_episode(model, variables, episode, train: bool, key=None):
  """(support [N*K, D], query [N*Q, D], new model state), one backbone batch.

  Support and query share the batch, so training-mode BatchNorm sees the
  whole episode (as in ProtoNet). `key`: the dropout key, as in `embed`.
  """
  s = episode["support_x"].shape[0]
  x = jnp.concatenate([episode["support_x"], episode["query_x"]])
  emb_BxD, state = embed(model, variables, x, train, key)
  return emb_BxD[:s], emb_BxD[s:], state


def l2_normalize(x_BxD: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Rows scaled to unit norm; finite gradients at zero rows (ReLU embeddings)."""
  sq_Bx1 = jnp.sum(x_BxD * x_BxD, -1, keepdims=True)
  return x_BxD * jax.lax.rsqrt(jnp.maximum(sq_Bx1, eps * eps))


def cosine_similarity(a_AxD: jax.Array, b_BxD: jax.Array) -> jax.Array:
  """[A, B] cosine similarities."""
  return l2_normalize(a_AxD) @ l2_normalize(b_BxD).T
