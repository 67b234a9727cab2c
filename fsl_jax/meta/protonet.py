"""Prototypical Networks (Snell et al., 2017).

Class prototypes are mean support embeddings; query logits are negative
squared Euclidean distances to them. The rest (one backbone batch for the
episode, the cross-entropy) is `metric.MetricLearner`'s.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fsl_jax.meta import base, metric


def prototypes(emb_SxD: jax.Array, labels_S: jax.Array, ways: int) -> jax.Array:
  onehot_SxN = jax.nn.one_hot(labels_S, ways, dtype=emb_SxD.dtype)
  counts_N = onehot_SxN.sum(0)
  return (onehot_SxN.T @ emb_SxD) / counts_N[:, None]


def sq_euclidean(a_QxD: jax.Array, b_NxD: jax.Array) -> jax.Array:
  """[Q, N] squared distances, computed as |a|^2 - 2ab + |b|^2 (matmul-friendly)."""
  d = (jnp.sum(a_QxD ** 2, -1, keepdims=True) - 2.0 * a_QxD @ b_NxD.T
       + jnp.sum(b_NxD ** 2, -1)[None, :])
  return jnp.maximum(d, 0.0)


def protonet_logits(support_SxD, support_y_S, query_QxD, ways: int,
                    temperature: float = 1.0) -> jax.Array:
  d = sq_euclidean(query_QxD, prototypes(support_SxD, support_y_S, ways))
  return -d if temperature == 1.0 else -d / temperature


@base.register("protonet")
@dataclasses.dataclass(frozen=True)
class ProtoNet(metric.MetricLearner):
  name: str = "protonet"
  # Divides the squared distances. 1 is Snell et al.'s (Conv4); wide
  # embeddings such as ResNet-12's 640-d average pool give distances in the
  # hundreds, whose softmax saturates from the first step (loss ~60 at step
  # 50 on Tiny ImageNet), and FEAT's ResNet-12 ProtoNet divides by 64.
  temperature: float = 1.0

  def __post_init__(self):
    if not self.temperature > 0:
      raise ValueError(f"protonet temperature={self.temperature}: it divides distances, "
                       "use a positive value (1: Snell et al., 64: FEAT's ResNet-12).")

  def query_logits(self, head, support_SxD, support_y_S, query_QxD, ways):
    del head
    return protonet_logits(support_SxD, support_y_S, query_QxD, ways, self.temperature)
