"""How a few-shot text method classifies from sentence embeddings: a table by name.

A `Method` is a pair of pure functions over embeddings,

    state = method.fit(support_SxD, support_y_S, ways)   # once per episode / support set
    logits_QxN = method.predict(state, query_QxD)

so one fit serves any number of queries (a generalised run fits 1,500
CLINC150 examples once and scores its whole test split in chunks), and an
episode is `predict(fit(...), ...)` inside one jitted, vmapped program.
`score` says which open-set score its logits give: 'max_logit' (the best
class's logit: for the nearest-centroid methods minus the squared distance
to the nearest centroid) or 'max_prob' (the largest softmax probability,
the usual confidence of a classifier; Hendrycks & Gimpel, ICLR 2017).

Registered here (frozen encoder, cached embeddings):
- 'simpleshot': Wang et al. 2019's CL2N nearest centroid, the centring mean
  being the support set's (`fsl_jax.meta.simpleshot`; no base-class mean
  exists for a frozen pretrained encoder).
- 'logreg': multinomial logistic regression on L2-normalised support
  embeddings, C = 1 (Tian et al. 2020; `fsl_jax.meta.logreg.fit`, 300
  Nesterov steps, converged to float32 precision there).
- 'nearest_mean': nearest class mean of the raw embeddings by squared
  Euclidean distance (ProtoNet's rule, Snell et al. 2017, with no training).

`frozen=True` means the method never changes the encoder, so every text is
embedded once (and cached). `frozen=False`: the method adapts the encoder to
each support set first and then classifies the adapted embeddings with its
fit/predict; the runner (`runner.run`) embeds nothing in advance for it:
- 'setfit': contrastive fine-tuning on the support set (Tunstall et al.
  2022; `adapt.SetFitAdapter`, options under the config's `setfit.`), then
  'logreg' on the fine-tuned embeddings.
An encoder meta-trained with ProtoNet (experiments/configs/protonet_text.py)
is not a method but an `encoder`: its workdir, with 'nearest_mean'
(ProtoNet's rule) or any other method here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from fsl_jax.meta import embedding, logreg, protonet, simpleshot
from fsl_jax.registry import Registry

SCORES = ("max_logit", "max_prob")


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  fit: Callable[..., Any]       # (support_SxD, support_y_S, ways) -> state (a pytree)
  predict: Callable[..., Any]   # (state, query_QxD) -> logits [Q, N]
  score: str = "max_logit"      # open-set score of the logits (SCORES)
  frozen: bool = True           # classifies fixed embeddings; the encoder never changes

  def __post_init__(self):
    if self.score not in SCORES:
      raise ValueError(f"Method {self.name}: score={self.score!r}; use one of {SCORES}.")

  def logits(self, support_SxD, support_y_S, query_QxD, ways: int) -> jax.Array:
    return self.predict(self.fit(support_SxD, support_y_S, ways), query_QxD)

  def scores(self, logits_QxN: jax.Array) -> jax.Array:
    """[Q, N] per-class scores whose row max is the open-set score."""
    return jax.nn.softmax(logits_QxN, -1) if self.score == "max_prob" else logits_QxN


METHODS = Registry("text few-shot method")


def _simpleshot_fit(support_SxD, support_y_S, ways):
  mean_D = jnp.mean(support_SxD, axis=0)
  s_SxD = simpleshot.transform(support_SxD, mean_D)
  return {"mean": mean_D, "centroids": protonet.prototypes(s_SxD, support_y_S, ways)}


def _simpleshot_predict(state, query_QxD):
  q_QxD = simpleshot.transform(query_QxD, state["mean"])
  return -protonet.sq_euclidean(q_QxD, state["centroids"])


def _logreg_fit(support_SxD, support_y_S, ways):
  w_DxN, b_N = logreg.fit(support_SxD, support_y_S, ways)
  return {"w": w_DxN, "b": b_N}


def _logreg_predict(state, query_QxD):
  return embedding.l2_normalize(query_QxD) @ state["w"] + state["b"]


def _nearest_mean_fit(support_SxD, support_y_S, ways):
  return {"centroids": protonet.prototypes(support_SxD, support_y_S, ways)}


def _nearest_mean_predict(state, query_QxD):
  return -protonet.sq_euclidean(query_QxD, state["centroids"])


METHODS.register("simpleshot", lambda: Method("simpleshot", _simpleshot_fit,
                                              _simpleshot_predict, "max_logit"))
METHODS.register("logreg", lambda: Method("logreg", _logreg_fit, _logreg_predict, "max_prob"))
METHODS.register("setfit", lambda: Method("setfit", _logreg_fit, _logreg_predict, "max_prob",
                                          frozen=False))
METHODS.register("nearest_mean", lambda: Method("nearest_mean", _nearest_mean_fit,
                                                _nearest_mean_predict, "max_logit"))


def get(name: str) -> Method:
  """The method registered as `name` (an unknown name lists the registered ones)."""
  return METHODS.build(name)
