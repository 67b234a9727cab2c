"""P>M>F's test-time fine-tuning (Hu et al., CVPR 2022): a ProtoNet adapted to each episode.

Hu et al.'s pipeline pretrains a backbone (P), meta-trains it as a ProtoNet
on the base classes (M), then fine-tunes (F) a copy of it on each test
episode's support set: pseudo-queries are augmented views of the support
images, prototypes are the (unaugmented) support embeddings, and the
ProtoNet cross-entropy of the pseudo-queries takes `steps` SGD steps with
momentum (they use 50 steps and pick the rate from {0, 1e-4, 1e-3, 1e-2} on
the validation classes; rate 0 is plain ProtoNet). The episode's queries are
then classified by the fine-tuned backbone's prototypes.

`FineTune` is a `ProtoNet` whose `predict` fine-tunes first: meta-training
it trains the ProtoNet (M), and evaluating it fine-tunes each episode (F),
so a ProtoNet checkpoint is evaluated with fine-tuning by naming this
learner (`experiments.evaluate --workdir=DIR --method=finetune`, or
`--model=NAME --method=finetune` for a pretrained backbone with no meta-training).

The backbone runs in evaluation mode while fine-tuning (BatchNorm's running
statistics, no dropout): a 5-way 1-shot support set is 5 images, too few
for batch statistics. Augmentation ops are `fsl_jax.data.augment`'s, with
`{size}` standing for the image side. Each episode draws its augmentation
keys from the key the evaluator gives it (fixed-seed evaluations repeat).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fsl_jax.data import augment as augment_lib
from fsl_jax.meta import base, embedding, losses, protonet

# Hu et al.'s fine-tuning augmentation: random resized crop, colour jitter, flip.
DEFAULT_AUGMENT = ("random_resized_crop({size}, scale=(0.5, 1.0))|"
                   "color_jitter(0.4, 0.4, 0.4, 0.1)|flip_lr")


# Support images (each with its augmented copy) fine-tuned at once when an
# evaluator vmaps episodes: 256 is 5 episodes of 5-way 5-shot, about a
# quarter of the 93 GiB that 20 such ViT-S/16 episodes at 224x224 asked of an H200.
FINETUNE_IMAGES_PER_CALL = 256


@base.register("finetune")
@dataclasses.dataclass(frozen=True)
class FineTune(protonet.ProtoNet):
  """ProtoNet training; at prediction, `steps` SGD steps on each episode's support set."""
  name: str = "finetune"
  steps: int = 50
  lr: float = 0.01          # 0 (or steps=0): no fine-tuning, ProtoNet's predictions
  momentum: float = 0.9
  augment: str = DEFAULT_AUGMENT

  # Each episode adapts its own copy of the backbone (per-task weights: on
  # CPU the evaluator loops over episodes rather than vmapping them).
  per_task_weights = True

  def __post_init__(self):
    if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
      raise ValueError(f"finetune steps={self.steps!r}: use an integer >= 0 (50 in P>M>F).")
    if not self.lr >= 0:
      raise ValueError(f"finetune lr={self.lr}: use a rate >= 0 (P>M>F picks one of 0, 1e-4, "
                       "1e-3, 1e-2 on the validation classes).")
    if not 0 <= self.momentum < 1:
      raise ValueError(f"finetune momentum={self.momentum}: use a value in [0, 1).")
    self.augmentation(32)  # a bad op chain is refused now, not inside the first jit

  def eval_episodes_per_call(self, spec) -> int:
    """Episodes an evaluator vmaps at once: each step back-propagates 2 x ways x shots images."""
    return max(1, FINETUNE_IMAGES_PER_CALL // (2 * spec.ways * spec.shots))

  def augmentation(self, size: int):
    return augment_lib.parse(self.augment.replace("{size}", str(size)))

  def finetuned_variables(self, variables, support_x, support_y, ways: int, key):
    """`variables` with the backbone's params after fine-tuning on one support set."""
    backbone = self.backbone_variables(variables)
    params = backbone["params"]
    rest = {k: v for k, v in backbone.items() if k != "params"}
    head = self.head(variables)
    augment = self.augmentation(support_x.shape[1])
    s = support_x.shape[0]

    def loss(p, k):
      x = jnp.concatenate([support_x, augment_lib.apply(augment, k, support_x)])
      emb = embedding.embed(self.model, {"params": p, **rest}, x, train=False)[0]
      logits = self.query_logits(head, emb[:s], support_y, emb[s:], ways)
      return losses.ce_and_accuracy(logits, support_y)[0]

    def step(carry, k):
      p, velocity = carry
      g = jax.grad(loss)(p, k)
      velocity = jax.tree.map(lambda v, gi: self.momentum * v + gi, velocity, g)
      p = jax.tree.map(lambda pi, v: pi - self.lr * v, p, velocity)
      return (p, velocity), None

    velocity = jax.tree.map(jnp.zeros_like, params)
    (params, _), _ = jax.lax.scan(step, (params, velocity), jax.random.split(key, self.steps))
    return self.replace_backbone_params(variables, params)

  def predict(self, variables, episode, key=None):
    if self.steps and self.lr:
      key = jax.random.PRNGKey(0) if key is None else key
      variables = self.finetuned_variables(variables, episode["support_x"],
                                           episode["support_y"], episode["classes"].shape[0],
                                           key)
    return self.logits(variables, episode, train=False)[0]
