"""Matching Networks (Vinyals et al., 2016), without full-context embeddings.

Each query attends over the support embeddings with a softmax of scaled
cosine similarities; class probabilities are the attention mass on each
class's support examples, and the logits are their logs. Vinyals et al. use
no scale (scale = 1); a larger fixed scale sharpens the attention and trains
faster, so it is a constructor field.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax.meta import base, embedding
from fsl_jax.meta.protonet import ce_and_accuracy


def matching_probs(support_SxD, support_y_S, query_QxD, ways: int, scale: float) -> jax.Array:
  """[Q, N] class probabilities: attention over support, summed per class."""
  attn_QxS = jax.nn.softmax(scale * embedding.cosine_similarity(query_QxD, support_SxD), -1)
  return attn_QxS @ jax.nn.one_hot(support_y_S, ways, dtype=attn_QxS.dtype)


def matching_logits(support_SxD, support_y_S, query_QxD, ways: int, scale: float,
                    eps: float = 1e-6) -> jax.Array:
  """log(probabilities + eps): cross-entropy on these is Vinyals's NLL."""
  return jnp.log(matching_probs(support_SxD, support_y_S, query_QxD, ways, scale) + eps)


@base.register("matchingnet")
@dataclasses.dataclass(frozen=True)
class MatchingNet:
  model: nn.Module
  scale: float = 10.0  # multiplies cosine similarities before the softmax
  eps: float = 1e-6    # added to probabilities before the log
  name: str = "matchingnet"

  def init(self, key, episode):
    x = jnp.concatenate([episode["support_x"], episode["query_x"]])
    return dict(self.model.init(key, x, train=False))

  def _logits(self, variables, episode, train):
    sup, qry, state = embedding.embed_episode(self.model, variables, episode, train)
    ways = episode["classes"].shape[0]
    return matching_logits(sup, episode["support_y"], qry, ways, self.scale, self.eps), state

  def outer_loss(self, variables, episode, key=None, train=True):
    del key
    logits, state = self._logits(variables, episode, train)
    loss, acc = ce_and_accuracy(logits, episode["query_y"])
    return loss, {"accuracy": acc, "model_state": state}

  def predict(self, variables, episode, key=None):
    del key
    return self._logits(variables, episode, train=False)[0]
