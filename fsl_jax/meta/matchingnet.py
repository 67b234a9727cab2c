"""Matching Networks (Vinyals et al., 2016), without full-context embeddings.

Each query attends over the support embeddings with a softmax of scaled
cosine similarities; class probabilities are the attention mass on each
class's support examples, and the logits are their logs. Vinyals et al. use
no scale (scale = 1); a larger fixed scale sharpens the attention and trains
faster, so it is a constructor field.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fsl_jax.meta import base, embedding, metric


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
class MatchingNet(metric.MetricLearner):
  scale: float = 10.0  # multiplies cosine similarities before the softmax
  eps: float = 1e-6    # added to probabilities before the log
  name: str = "matchingnet"

  def query_logits(self, head, support_SxD, support_y_S, query_QxD, ways):
    del head
    return matching_logits(support_SxD, support_y_S, query_QxD, ways, self.scale, self.eps)
