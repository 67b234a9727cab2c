"""Prototypical Networks (Snell et al., 2017).

Class prototypes are mean support embeddings; query logits are negative
squared Euclidean distances to them. Support and query go through the
backbone in one batch, so training-mode BatchNorm sees the whole episode.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fsl_jax.meta import base


def prototypes(emb_SxD: jax.Array, labels_S: jax.Array, ways: int) -> jax.Array:
  onehot_SxN = jax.nn.one_hot(labels_S, ways, dtype=emb_SxD.dtype)
  counts_N = onehot_SxN.sum(0)
  return (onehot_SxN.T @ emb_SxD) / counts_N[:, None]


def sq_euclidean(a_QxD: jax.Array, b_NxD: jax.Array) -> jax.Array:
  """[Q, N] squared distances, computed as |a|^2 - 2ab + |b|^2 (matmul-friendly)."""
  d = (jnp.sum(a_QxD ** 2, -1, keepdims=True) - 2.0 * a_QxD @ b_NxD.T
       + jnp.sum(b_NxD ** 2, -1)[None, :])
  return jnp.maximum(d, 0.0)


def protonet_logits(support_SxD, support_y_S, query_QxD, ways: int) -> jax.Array:
  return -sq_euclidean(query_QxD, prototypes(support_SxD, support_y_S, ways))


def ce_and_accuracy(logits_QxN, labels_Q):
  loss = optax.softmax_cross_entropy_with_integer_labels(logits_QxN, labels_Q).mean()
  acc = jnp.mean(jnp.argmax(logits_QxN, -1) == labels_Q)
  return loss, acc


@base.register("protonet")
@dataclasses.dataclass(frozen=True)
class ProtoNet:
  model: nn.Module
  name: str = "protonet"

  def init(self, key, episode):
    x = jnp.concatenate([episode["support_x"], episode["query_x"]])
    return dict(self.model.init(key, x, train=False))

  def _embed(self, variables, episode, train):
    s = episode["support_x"].shape[0]
    x = jnp.concatenate([episode["support_x"], episode["query_x"]])
    if train and "batch_stats" in variables:
      emb, state = self.model.apply(variables, x, train=True, mutable=["batch_stats"])
    else:
      emb, state = self.model.apply(variables, x, train=False), {}
    return emb[:s], emb[s:], state

  def outer_loss(self, variables, episode, key=None, train=True):
    del key
    sup, qry, state = self._embed(variables, episode, train)
    ways = episode["classes"].shape[0]
    logits = protonet_logits(sup, episode["support_y"], qry, ways)
    loss, acc = ce_and_accuracy(logits, episode["query_y"])
    return loss, {"accuracy": acc, "model_state": state}

  def predict(self, variables, episode, key=None):
    del key
    sup, qry, _ = self._embed(variables, episode, train=False)
    return protonet_logits(sup, episode["support_y"], qry, episode["classes"].shape[0])
