"""SimpleShot (Wang et al., 2019): nearest centroid on centred, L2-normalised features.

Wang et al. train a backbone as an ordinary classifier on the base classes,
then classify each episode by the nearest class centroid of transformed
features. Their best transform, CL2N, subtracts the mean feature of the base
classes' training images, then L2-normalises; a class centroid is the mean of
its transformed support features, the distance Euclidean.

Without base-class features (a pretrained backbone evaluated with no
training has none), `center='support'` subtracts the mean of the episode's
support features instead (all N*K of them; the queries are not used, so
each query is classified alone, inductively). `center='given'` subtracts a
given mean vector (`mean`, [D], e.g. the base classes' mean feature);
`center='none'` is their L2N. With `normalize=False` and `center='none'`
it is their UN, nearest centroid on the raw features: ProtoNet's rule.

Query logits [Q, N] are minus the squared distances to the centroids. The
learner has no parameters beside the backbone's, so it also trains
episodically (a ProtoNet on normalised features); its logits lie in
[-4, 0], and `scale` multiplies them for a softmax that can sharpen.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax.meta import base, embedding, metric, protonet

CENTERS = ("support", "given", "none")


def transform(x_BxD: jax.Array, mean_D: jax.Array | None, normalize: bool = True) -> jax.Array:
  """CL2N: `x - mean` (when a mean is given), then rows L2-normalised (when `normalize`)."""
  if mean_D is not None:
    x_BxD = x_BxD - mean_D
  return embedding.l2_normalize(x_BxD) if normalize else x_BxD


def simpleshot_logits(support_SxD, support_y_S, query_QxD, ways: int, center: str = "support",
                      mean_D: jax.Array | None = None, normalize: bool = True) -> jax.Array:
  """[Q, N] minus squared distances of transformed queries to transformed-support centroids."""
  if center == "support":
    mean_D = jnp.mean(support_SxD, axis=0)
  elif center == "none":
    mean_D = None
  s = transform(support_SxD, mean_D, normalize)
  q = transform(query_QxD, mean_D, normalize)
  return -protonet.sq_euclidean(q, protonet.prototypes(s, support_y_S, ways))


@base.register("simpleshot")
@dataclasses.dataclass(frozen=True)
class SimpleShot(metric.MetricLearner):
  name: str = "simpleshot"
  center: str = "support"   # 'support' (the episode's support mean), 'given' (`mean`), 'none'
  mean: Any = None          # [D] mean feature for center='given' (kept as a tuple of floats)
  normalize: bool = True    # L2-normalise after centring (CL2N); False: UN / centred only
  scale: float = 1.0        # multiplies the logits (training only: argmax ignores it)

  def __post_init__(self):
    if self.center not in CENTERS:
      raise ValueError(f"simpleshot center={self.center!r}: use one of {CENTERS} ('support': "
                       "the episode's support mean; 'given': the mean= vector).")
    if (self.center == "given") != (self.mean is not None):
      raise ValueError("simpleshot: center='given' takes mean=[D] (e.g. the base classes' mean "
                       "feature), and mean= needs center='given'.")
    if not self.scale > 0:
      raise ValueError(f"simpleshot scale={self.scale}: use a positive value.")
    if self.mean is not None:  # a tuple keeps the learner hashable and comparable
      mean = np.asarray(self.mean, np.float64)
      if mean.ndim != 1:
        raise ValueError(f"simpleshot mean has shape {mean.shape}: pass one [D] vector.")
      object.__setattr__(self, "mean", tuple(mean.tolist()))

  def query_logits(self, head, support_SxD, support_y_S, query_QxD, ways):
    del head
    mean_D = None
    if self.center == "given":
      mean_D = jnp.asarray(self.mean, support_SxD.dtype)
      if mean_D.shape != support_SxD.shape[-1:]:
        raise ValueError(f"simpleshot mean has shape {mean_D.shape}; the backbone's features "
                         f"are {support_SxD.shape[-1]}-d: pass their [D] mean.")
    logits = simpleshot_logits(support_SxD, support_y_S, query_QxD, ways, self.center, mean_D,
                               self.normalize)
    return logits if self.scale == 1.0 else self.scale * logits
