"""The base of the metric learners: embed an episode once, score queries against the support.

A metric learner runs support and query through the backbone in one batch
(training-mode BatchNorm sees the whole episode, `embedding.embed_episode`),
turns the support and query embeddings into query logits [N*Q, N], and
trains on their cross-entropy. A new one supplies only `query_logits`, and,
when it meta-learns parameters beside the backbone's (R2D2's ridge head),
`head_key` and `init_head`:

    @base.register("nearest_mean")
    @dataclasses.dataclass(frozen=True)
    class NearestMean(MetricLearner):
      name: str = "nearest_mean"

      def query_logits(self, head, support_SxD, support_y_S, query_QxD, ways):
        return query_QxD @ protonet.prototypes(support_SxD, support_y_S, ways).T

Variables are the backbone's ({'params': ..., 'batch_stats': ...}) when
`head_key` is None; otherwise params nest as
{'backbone': <backbone params>, head_key: init_head(...)}.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax.meta import embedding, losses

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class MetricLearner:
  """Embedding-and-logits learners; subclasses add their fields and `name`."""
  model: nn.Module

  # None: params are the backbone's alone. A key: params are
  # {'backbone': ..., head_key: init_head(key)}.
  head_key = None

  # ------------------------------------------------------------- hooks

  def init_head(self, key: jax.Array) -> Params:
    """Meta-parameters beside the backbone's, stored under `head_key`."""
    del key
    return {}

  def query_logits(self, head: Params, support_SxD: jax.Array, support_y_S: jax.Array,
                   query_QxD: jax.Array, ways: int) -> jax.Array:
    """[Q, N] query logits from the episode's embeddings; `head` is {} without `head_key`."""
    raise NotImplementedError(f"{type(self).__name__} must define query_logits.")

  # ------------------------------------------------------------- core

  def init(self, key, episode):
    x = jnp.concatenate([episode["support_x"], episode["query_x"]])
    variables = dict(self.model.init(key, x, train=False))
    if self.head_key is None:
      return variables
    head = self.init_head(jax.random.fold_in(key, 1))
    return {**variables, "params": {"backbone": variables["params"], self.head_key: head}}

  def backbone_variables(self, variables):
    """`variables` with the backbone's params alone, ready for `model.apply`."""
    if self.head_key is None:
      return variables
    return {**variables, "params": variables["params"]["backbone"]}

  def replace_backbone_params(self, variables, backbone_params):
    """`variables` with the backbone's params replaced (the inverse of `backbone_variables`)."""
    if self.head_key is None:
      return {**variables, "params": backbone_params}
    return {**variables, "params": {**variables["params"], "backbone": backbone_params}}

  def with_backbone_variables(self, variables, backbone_variables):
    """`variables` with all the backbone's collections replaced by `backbone_variables`
    (e.g. pretrained weights); the head's params stay."""
    out = {**variables, **{k: v for k, v in backbone_variables.items() if k != "params"}}
    return self.replace_backbone_params(out, backbone_variables["params"])

  def head(self, variables) -> Params:
    return {} if self.head_key is None else variables["params"][self.head_key]

  def logits(self, variables, episode, train: bool, key=None):
    """(query logits [N*Q, N], new model state) of one episode; `key` feeds dropout."""
    support_SxD, query_QxD, state = embedding.embed_episode(
        self.model, self.backbone_variables(variables), episode, train, key)
    ways = episode["classes"].shape[0]
    logits_QxN = self.query_logits(self.head(variables), support_SxD, episode["support_y"],
                                   query_QxD, ways)
    return logits_QxN, state

  def outer_loss(self, variables, episode, key=None, train=True):
    logits_QxN, state = self.logits(variables, episode, train, key)
    loss, acc = losses.ce_and_accuracy(logits_QxN, episode["query_y"])
    return loss, {"accuracy": acc, "model_state": state}

  def predict(self, variables, episode, key=None):
    del key
    return self.logits(variables, episode, train=False)[0]

  # ------------------------------------------------------------- evaluation

  def embeds_each_image_alone(self) -> bool:
    """Whether `predict` embeds every image on its own (eval-mode backbone,
    then `query_logits` on the embeddings), so that an evaluation may embed
    each image of a split once instead of once per episode it appears in.
    A subclass that overrides `logits` or `predict` (an episode-level
    transform, transductive statistics) is not assumed to."""
    cls = type(self)
    return cls.logits is MetricLearner.logits and cls.predict is MetricLearner.predict

  def embed_images(self, variables, x_BxHxWxD: jax.Array) -> jax.Array:
    """[B, D] eval-mode embeddings, as `predict` computes them."""
    return embedding.embed(self.model, self.backbone_variables(variables), x_BxHxWxD,
                           train=False)[0]

  def logits_from_embeddings(self, variables, support_SxD, support_y_S, query_QxD, ways):
    """`predict`'s [Q, N] logits from the episode's embeddings."""
    return self.query_logits(self.head(variables), support_SxD, support_y_S, query_QxD, ways)
