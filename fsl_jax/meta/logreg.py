"""Logistic regression fitted on each episode's support features (a linear probe).

Tian et al. (2020, "Rethinking few-shot image classification") classify an
episode by multinomial logistic regression on the L2-normalised features of
its support set (scikit-learn's LogisticRegression, C = 1). Here the same
objective is minimised inside the jitted episode, so it runs on device,
vmaps over episodes and is deterministic:

    min_{W [D, N], b [N]}  mean_i CE(x_i W + b, y_i) + |W|^2 / (2 C S),

x_i the S = N*K L2-normalised support features; the bias is not penalised.
This is scikit-learn's `C * sum_i CE + |W|^2 / 2` divided by C*S: the same
minimiser.

The fit is `steps` of full-batch gradient descent with Nesterov momentum
(optax.sgd) from W = 0, b = 0, at step size 1 / (1 + 1/(C S)): with unit
features the loss's curvature is at most 1 (softmax cross-entropy's Hessian
in the logits is at most 1/2, times |[x, 1]|^2 = 2) plus the penalty's. The
problem is convex, so the start does not matter beyond the step count.

Gradient descent from W = 0 never leaves the span of the support features
(the gradient in W is X^T R + W/(C S), R = (softmax - onehot) / S), so W is
kept as X^T A with A [S, N]: a step updates A by R + A/(C S) and the logits
are K A + b with the Gram matrix K = X X^T. The iterates are those of the
[D, N] descent exactly, at S x S cost instead of D x N (D = 1280 for
EfficientNet-Lite0, S = 5 or 25): 250 5-way 5-shot episodes of 300 steps run
in ~0.2 s on 2 CPU cores, against ~24 s for 100 steps in [D, N] (measured
here). 300 steps reach the optimum to float32 precision (gradient norm
< 1e-7) for 5-way 1-, 5- and 20-shot episodes of random and of correlated
ReLU features (measured here against 3,000 steps).

It is differentiable, so a backbone could train through it (as MetaOptNet
through its SVM), but it is meant for frozen features: with no parameters
beside the backbone's, the evaluator embeds each image once.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from fsl_jax.meta import base, embedding, metric


def fit_dual(support_SxD: jax.Array, support_y_S: jax.Array, ways: int, c: float = 1.0,
             steps: int = 300, momentum: float = 0.9) -> tuple[jax.Array, jax.Array]:
  """(A [S, N], b [N]): the fitted weights W = X^T A of the L2-normalised support X."""
  x_SxD = embedding.l2_normalize(support_SxD)
  s = x_SxD.shape[0]
  lam = 1.0 / (c * s)
  gram_SxS = x_SxD @ x_SxD.T
  onehot_SxN = jax.nn.one_hot(support_y_S, ways, dtype=x_SxD.dtype)
  opt = optax.sgd(1.0 / (1.0 + lam), momentum=momentum or None, nesterov=bool(momentum))

  def grads(p):
    r_SxN = (jax.nn.softmax(gram_SxS @ p["a"] + p["b"]) - onehot_SxN) / s
    return {"a": r_SxN + lam * p["a"], "b": jnp.sum(r_SxN, 0)}

  def step(_, carry):
    p, state = carry
    updates, state = opt.update(grads(p), state, p)
    return optax.apply_updates(p, updates), state

  p = {"a": jnp.zeros((s, ways), x_SxD.dtype), "b": jnp.zeros((ways,), x_SxD.dtype)}
  p, _ = jax.lax.fori_loop(0, steps, step, (p, opt.init(p)))
  return p["a"], p["b"]


def fit(support_SxD, support_y_S, ways: int, c: float = 1.0, steps: int = 300,
        momentum: float = 0.9) -> tuple[jax.Array, jax.Array]:
  """(W [D, N], b [N]) of the logistic regression on the L2-normalised support features."""
  a_SxN, b_N = fit_dual(support_SxD, support_y_S, ways, c, steps, momentum)
  return embedding.l2_normalize(support_SxD).T @ a_SxN, b_N


def objective(w_DxN, b_N, support_SxD, support_y_S, c: float = 1.0) -> jax.Array:
  """The minimised loss: mean cross-entropy + |W|^2 / (2 C S), on L2-normalised features."""
  x_SxD = embedding.l2_normalize(support_SxD)
  logp_SxN = jax.nn.log_softmax(x_SxD @ w_DxN + b_N)
  ce = -jnp.mean(jnp.take_along_axis(logp_SxN, support_y_S[:, None], 1))
  return ce + jnp.sum(w_DxN ** 2) / (2.0 * c * x_SxD.shape[0])


def logreg_logits(support_SxD, support_y_S, query_QxD, ways: int, c: float = 1.0,
                  steps: int = 300, momentum: float = 0.9) -> jax.Array:
  """[Q, N] logits x_q W + b of the regression fitted on the support set."""
  a_SxN, b_N = fit_dual(support_SxD, support_y_S, ways, c, steps, momentum)
  cross_QxS = embedding.l2_normalize(query_QxD) @ embedding.l2_normalize(support_SxD).T
  return cross_QxS @ a_SxN + b_N


@base.register("logreg")
@dataclasses.dataclass(frozen=True)
class LogReg(metric.MetricLearner):
  name: str = "logreg"
  c: float = 1.0         # inverse penalty, scikit-learn's C (Tian et al.: 1)
  steps: int = 300       # full-batch steps per episode
  momentum: float = 0.9  # Nesterov; 0 for plain gradient descent

  def __post_init__(self):
    if not self.c > 0:
      raise ValueError(f"logreg c={self.c}: the inverse penalty must be positive "
                       "(scikit-learn's C; 1 in Tian et al.).")
    if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
      raise ValueError(f"logreg steps={self.steps!r}: use a positive integer (300 converges).")
    if not 0 <= self.momentum < 1:
      raise ValueError(f"logreg momentum={self.momentum}: use a value in [0, 1).")

  def query_logits(self, head, support_SxD, support_y_S, query_QxD, ways):
    del head
    return logreg_logits(support_SxD, support_y_S, query_QxD, ways, self.c, self.steps,
                         self.momentum)
