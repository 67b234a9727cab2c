"""R2D2 (Bertinetto et al., 2019): a closed-form ridge-regression head.

Per episode, ridge regression from support embeddings X [S, D] to one-hot
labels Y [S, N] is solved in the Woodbury form

    W [D, N] = X^T (X X^T + lambda I_S)^-1 Y,

an S x S system (S = N*K, usually much smaller than D), and differentiated
through. Query logits are `scale * X_query W + bias`. lambda (as log_lambda),
scale and bias are meta-parameters trained with the backbone:

    params = {'backbone': <backbone params>,
              'head': {'log_lambda': [], 'scale': [], 'bias': []}}

The scalar bias shifts every logit alike, so softmax cross-entropy ignores it
(its gradient is 0); it is kept to match the paper's calibration `alpha XW + beta`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from fsl_jax.meta import base, metric


def ridge_weights(support_SxD: jax.Array, targets_SxN: jax.Array, lam: jax.Array) -> jax.Array:
  """[D, N] ridge solution X^T (X X^T + lam I)^-1 Y (Woodbury form)."""
  s = support_SxD.shape[0]
  gram_SxS = support_SxD @ support_SxD.T + lam * jnp.eye(s, dtype=support_SxD.dtype)
  return support_SxD.T @ jnp.linalg.solve(gram_SxS, targets_SxN)


def r2d2_logits(support_SxD, support_y_S, query_QxD, ways: int, head: dict) -> jax.Array:
  """[Q, N] query logits of the ridge head fitted on the support set."""
  onehot_SxN = jax.nn.one_hot(support_y_S, ways, dtype=support_SxD.dtype)
  w_DxN = ridge_weights(support_SxD, onehot_SxN, jnp.exp(head["log_lambda"]))
  return head["scale"] * (query_QxD @ w_DxN) + head["bias"]


@base.register("r2d2")
@dataclasses.dataclass(frozen=True)
class R2D2(metric.MetricLearner):
  init_lambda: float = 1.0
  init_scale: float = 10.0  # ridge outputs are ~one-hot sized; softmax needs larger logits
  name: str = "r2d2"

  head_key = "head"

  def init_head(self, key):
    del key
    return {"log_lambda": jnp.asarray(math.log(self.init_lambda), jnp.float32),
            "scale": jnp.asarray(self.init_scale, jnp.float32),
            "bias": jnp.zeros((), jnp.float32)}

  def query_logits(self, head, support_SxD, support_y_S, query_QxD, ways):
    return r2d2_logits(support_SxD, support_y_S, query_QxD, ways, head)
