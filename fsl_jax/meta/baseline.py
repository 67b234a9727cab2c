"""Baseline++ (Chen et al., 2019): pretrain a classifier, fine-tune a new head.

Training is ordinary classification over all training classes with a cosine
classifier, logits = scale * cos(w_c, f(x)), on each episode's support and
query images with their global labels `classes[y]`; episodic sampling only
serves class-balanced minibatches. `num_classes` must equal the number of
global class ids of the training split: C classes, or 4 * C with rotations
(ids r * C + c). A label outside it makes the loss NaN, so a wrong value
shows in the first logged loss.

    params = {'backbone': <backbone params>, 'classifier': {'weight': [C, D]}}

Evaluation freezes the backbone (BatchNorm running averages), fits a new
cosine classifier [N, D] on the support embeddings with `finetune_steps`
full-batch Adam steps, starting from the normalised class means, and
classifies the queries with it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from fsl_jax.meta import base, embedding, losses, metric
from fsl_jax.meta.protonet import prototypes


def cosine_logits(emb_BxD: jax.Array, weight_CxD: jax.Array, scale: float) -> jax.Array:
  return scale * embedding.cosine_similarity(emb_BxD, weight_CxD)


def finetune_classifier(support_SxD, support_y_S, ways: int, steps: int, lr: float,
                        scale: float) -> jax.Array:
  """[N, D] cosine-classifier weights fitted to frozen support embeddings."""
  support_SxD = jax.lax.stop_gradient(support_SxD)
  tx = optax.adam(lr)

  def loss_fn(w_NxD):
    logits_SxN = cosine_logits(support_SxD, w_NxD, scale)
    return optax.softmax_cross_entropy_with_integer_labels(logits_SxN, support_y_S).mean()

  def step(carry, _):
    w_NxD, opt_state = carry
    grads = jax.grad(loss_fn)(w_NxD)
    updates, opt_state = tx.update(grads, opt_state, w_NxD)
    return (optax.apply_updates(w_NxD, updates), opt_state), None

  w0_NxD = embedding.l2_normalize(prototypes(support_SxD, support_y_S, ways))
  (w_NxD, _), _ = jax.lax.scan(step, (w0_NxD, tx.init(w0_NxD)), None, length=steps)
  return w_NxD


@base.register("baseline")
@dataclasses.dataclass(frozen=True)
class BaselinePP(metric.MetricLearner):
  """A metric learner whose query logits come from a head fine-tuned on the support.

  Its own `init` (the classifier's shape needs the embedding width) and
  `outer_loss` (all training classes, support and query alike).
  """
  num_classes: int = 0        # global training class ids (x4 with rotations)
  scale: float = 10.0         # cosine-logit scale, pretraining and fine-tuning
  finetune_steps: int = 100
  finetune_lr: float = 0.01   # Adam, full batch on the support set
  name: str = "baseline"

  head_key = "classifier"

  def init(self, key, episode):
    if self.num_classes <= 0:
      raise ValueError(
          "Baseline++ classifies all training classes: set --config.learner_kwargs.num_classes "
          "to the training split's class count, x4 with data.rotations (lake: train 792 -> "
          f"3168, trainval 964 -> 3856); got {self.num_classes}.")
    k_model, k_head = jax.random.split(key)
    x = jnp.concatenate([episode["support_x"], episode["query_x"]])
    emb_BxD, variables = self.model.init_with_output(k_model, x, train=False)
    variables = dict(variables)
    d = emb_BxD.shape[-1]
    weight_CxD = jax.random.normal(k_head, (self.num_classes, d), jnp.float32) / jnp.sqrt(d)
    return {**variables,
            "params": {"backbone": variables["params"], "classifier": {"weight": weight_CxD}}}

  def outer_loss(self, variables, episode, key=None, train=True):
    """Cross-entropy over all classes on support + query; accuracy likewise."""
    x = jnp.concatenate([episode["support_x"], episode["query_x"]])
    labels_B = episode["classes"][jnp.concatenate([episode["support_y"], episode["query_y"]])]
    emb_BxD, state = embedding.embed(self.model, self.backbone_variables(variables), x, train,
                                     key)
    weight_CxD = self.head(variables)["weight"]
    loss, acc = losses.ce_and_accuracy(cosine_logits(emb_BxD, weight_CxD, self.scale), labels_B)
    loss = jnp.where(jnp.all((labels_B >= 0) & (labels_B < self.num_classes)), loss, jnp.nan)
    return loss, {"accuracy": acc, "model_state": state}

  def query_logits(self, head, support_SxD, support_y_S, query_QxD, ways):
    """A new N-way cosine head fitted on the frozen support embeddings (`predict`)."""
    del head  # the pretraining classifier scores training classes only
    w_NxD = finetune_classifier(support_SxD, support_y_S, ways, self.finetune_steps,
                                self.finetune_lr, self.scale)
    return cosine_logits(query_QxD, w_NxD, self.scale)
