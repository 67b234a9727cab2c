"""SetFit (Tunstall et al. 2022, "Efficient Few-Shot Learning Without Prompts").

A sentence encoder is fine-tuned on each episode's support set as a Siamese
network, then a logistic-regression head is fitted on the fine-tuned
embeddings of the support set and classifies the queries:

1. Pairs (`pair_indices`): R iterations over the S support sentences; in each,
   every sentence i gets one positive pair (i, j) with j drawn uniformly from
   its class (itself included) and one negative pair (i, j') with j' drawn
   uniformly from the other classes: 2 R S pairs with targets 1 and 0.
2. Fine-tuning (`finetune`): CosineSimilarityLoss, the mean over a batch of
   (cos(u_i, u_j) - target)^2, for `epochs` passes over the shuffled pairs in
   batches of `batch_size` (the last batch of a pass may be smaller), AdamW
   with a linear warm-up over the first `warmup` fraction of the steps and a
   linear decay to 0 after it, weight decay on all but biases and LayerNorm
   parameters (and a text backbone's frozen layers, see `trainable_layers`),
   gradients clipped to norm 1, the encoder in training mode (dropout on).
3. Head: `logreg` (multinomial logistic regression, C = 1, on L2-normalised
   embeddings: scikit-learn's LogisticRegression defaults) on the fine-tuned
   support embeddings; the query logits are its scores.

Defaults are those of the authors' experiment script (github.com/
huggingface/setfit, scripts/setfit/run_fewshot.py, read here): R = 20 pair
iterations (its `--num_epochs`), batch 16, one pass, and sentence-
transformers' `fit` defaults, which that script leaves in place (its `--lr`
is never passed to `fit`): AdamW lr 2e-5, weight decay 0.01 without biases
and LayerNorms, eps 1e-6 (transformers' AdamW that sentence-transformers
then used; torch's default is 1e-8), WarmupLinear over 10% of the steps,
max gradient norm 1; head LogisticRegression(). The pair generation is that
script's `sentence_pairs_generation`. The setfit library's SetFitTrainer
(v0.x API docs, huggingface.co/docs/setfit) has the same defaults:
num_iterations 20, num_epochs 1, learning_rate 2e-5, batch_size 16,
warmup_proportion 0.1, CosineSimilarityLoss; its later TrainingArguments
keep batch 16, one epoch, body lr 2e-5 and warm-up 0.1 but draw pairs
differently (sampling_strategy 'oversampling'). The paper's own text was not
available here to check these against.

Everything is a pure function of (params, support set, key): the pairs,
their order and the dropout masks come from the key, so an episode's result
is deterministic. The `SetFit` learner (registered 'setfit') is a `LogReg`
whose `predict` fine-tunes first; the evaluator loops over episodes
(`per_task_weights`). Any backbone works; it is meant for the `bert_text`
encoder (`fsl_jax.models.text_backbone`, whose `trainable_layers` limits the
fine-tuning to the top layers).

Cost: each step embeds the episode's S support sentences once when S is at
most the batch's 2 x batch_size pair sentences (5-way 1- and 5-shot), else
the pair sentences; without dropout the gradient is the same either way,
with dropout a sentence that appears twice in a batch shares one mask.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from fsl_jax.meta import base, embedding, logreg


def pair_indices(key: jax.Array, labels_S: jax.Array, iterations: int
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(first [P], second [P], target [P] float32) of P = 2 * iterations * S pairs.

  Ordered iteration by iteration, sentence by sentence, positive then
  negative: pair 2 (r S + i) is (i, same-class j, 1), pair 2 (r S + i) + 1
  is (i, other-class j', 0). Needs at least two classes among the labels.
  """
  s = labels_S.shape[0]
  same_SxS = labels_S[:, None] == labels_S[None, :]
  k_pos, k_neg = jax.random.split(key)
  draw = lambda k, allowed: jax.random.categorical(
      k, jnp.where(allowed, 0.0, -jnp.inf)[None], axis=-1, shape=(iterations, s))
  pos_RxS, neg_RxS = draw(k_pos, same_SxS), draw(k_neg, ~same_SxS)
  first = jnp.broadcast_to(jnp.arange(s)[None, :, None], (iterations, s, 2)).reshape(-1)
  second = jnp.stack([pos_RxS, neg_RxS], -1).reshape(-1)
  target = jnp.tile(jnp.asarray([1.0, 0.0], jnp.float32), iterations * s)
  return first.astype(jnp.int32), second.astype(jnp.int32), target


def batches(key: jax.Array, num_pairs: int, batch_size: int, epochs: int
            ) -> tuple[jax.Array, jax.Array]:
  """(pair index [T, B], weight [T, B]): `epochs` shuffled passes in batches of B.

  Each pass is a fresh permutation cut into ceil(P / B) batches; the last
  batch of a pass is padded with weight-0 entries (a smaller batch, as a
  DataLoader without drop_last gives).
  """
  steps = math.ceil(num_pairs / batch_size)
  pad = steps * batch_size - num_pairs
  keys = jax.random.split(key, epochs)
  perm = jax.vmap(lambda k: jax.random.permutation(k, num_pairs))(keys)  # [E, P]
  perm = jnp.concatenate([perm, jnp.zeros((epochs, pad), perm.dtype)], 1)
  weight = jnp.concatenate([jnp.ones((epochs, num_pairs)), jnp.zeros((epochs, pad))], 1)
  return (perm.reshape(epochs * steps, batch_size).astype(jnp.int32),
          weight.reshape(epochs * steps, batch_size))


def warmup_linear(lr: float, total_steps: int, warmup_fraction: float = 0.1):
  """sentence-transformers' WarmupLinear: 0 -> lr over ceil(f T) steps, then -> 0 at T."""
  warmup = math.ceil(total_steps * warmup_fraction)
  decay = optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def decay_mask(params, frozen: Sequence[str] = ()):
  """True for the params AdamW decays: all but biases, LayerNorm parameters and the
  subtrees named in `frozen` (a backbone's frozen layers, which get zero gradients)."""
  def decays(path, _):
    names = [str(getattr(k, "key", k)) for k in path]
    return not (names[-1] == "bias" or any("LayerNorm" in n for n in names)
                or names[0] in frozen)
  return jax.tree_util.tree_map_with_path(decays, params)


def optimizer(lr: float, total_steps: int, warmup_fraction: float = 0.1,
              weight_decay: float = 0.01, grad_clip: float = 1.0, eps: float = 1e-6,
              frozen: Sequence[str] = ()) -> optax.GradientTransformation:
  """AdamW with WarmupLinear, decay off biases, LayerNorms and `frozen`, clipped gradients."""
  tx = optax.adamw(warmup_linear(lr, total_steps, warmup_fraction), b1=0.9, b2=0.999, eps=eps,
                   weight_decay=weight_decay,
                   mask=functools.partial(decay_mask, frozen=tuple(frozen)))
  return optax.chain(optax.clip_by_global_norm(grad_clip), tx) if grad_clip > 0 else tx


def frozen_params(model) -> list[str]:
  """The top-level param names a text backbone's `trainable_layers` or LoRA freezes ([] for
  others): zero gradients leave them as they are under Adam, and they are kept out of weight
  decay."""
  trainable = getattr(model, "trainable_layers", -1)
  config = getattr(model, "config", None)
  if getattr(model, "lora_rank", 0) and config is not None:
    trainable = 0  # LoRA: the whole encoder is frozen, only 'lora' trains
  if trainable is None or trainable < 0 or config is None:
    return []
  from fsl_jax.models import text_backbone  # pylint: disable=g-import-not-at-top
  return text_backbone.frozen_layer_names(config.num_layers, trainable)


def cosine_loss(u_BxD, v_BxD, target_B, weight_B) -> jax.Array:
  """CosineSimilarityLoss: the weighted mean of (cos(u, v) - target)^2."""
  cos_B = jnp.sum(embedding.l2_normalize(u_BxD) * embedding.l2_normalize(v_BxD), -1)
  return jnp.sum(weight_B * (cos_B - target_B) ** 2) / jnp.maximum(jnp.sum(weight_B), 1.0)


def finetune(model, variables, support_x, support_y, key: jax.Array, iterations: int = 20,
             batch_size: int = 16, epochs: int = 1, lr: float = 2e-5, warmup: float = 0.1,
             weight_decay: float = 0.01, grad_clip: float = 1.0, dropout: bool = True
             ) -> tuple[dict, jax.Array]:
  """(the backbone's params after SetFit's contrastive fine-tuning, the loss of every step).

  `variables`: the backbone's ({'params': ..., other collections}); only the
  params change (other collections, e.g. BatchNorm statistics, are read).
  `dropout`: run the encoder in training mode (sentence-transformers' fit).
  """
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}
  s = support_x.shape[0]
  k_pairs, k_order, k_drop = jax.random.split(key, 3)
  first, second, target = pair_indices(k_pairs, support_y, iterations)
  idx_TxB, weight_TxB = batches(k_order, first.shape[0], batch_size, epochs)
  tx = optimizer(lr, idx_TxB.shape[0], warmup, weight_decay, grad_clip,
                 frozen=frozen_params(model))
  embed_all = s <= 2 * batch_size  # static: fewer passes through the encoder

  def embed(p, x, k):
    return embedding.embed(model, {"params": p, **rest}, x, dropout, k)[0]

  def loss_fn(p, idx_B, w_B, k):
    a_B, b_B = first[idx_B], second[idx_B]
    if embed_all:
      emb_SxD = embed(p, support_x, k)
      u_BxD, v_BxD = emb_SxD[a_B], emb_SxD[b_B]
    else:
      emb = embed(p, jnp.concatenate([support_x[a_B], support_x[b_B]]), k)
      u_BxD, v_BxD = emb[:batch_size], emb[batch_size:]
    return cosine_loss(u_BxD, v_BxD, target[idx_B], w_B)

  def step(carry, xs):
    p, opt_state = carry
    idx_B, w_B, t = xs
    loss, grads = jax.value_and_grad(loss_fn)(p, idx_B, w_B, jax.random.fold_in(k_drop, t))
    updates, opt_state = tx.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), loss

  steps = jnp.arange(idx_TxB.shape[0])
  (params, _), losses_T = jax.lax.scan(step, (params, tx.init(params)),
                                       (idx_TxB, weight_TxB, steps))
  return params, losses_T


def check_options(*, iterations, batch_size, epochs, lr, warmup, weight_decay, grad_clip,
                  min_iterations: int = 1, prefix: str = "setfit ") -> None:
  """Raises ValueError naming the fix for an out-of-range SetFit option.

  `min_iterations` = 0 lets the learner run as plain LogReg (no fine-tuning);
  `prefix` names the options as the caller's user writes them ("setfit." in a config).
  """
  for name, v, low in (("iterations", iterations, min_iterations),
                       ("batch_size", batch_size, 1), ("epochs", epochs, 1)):
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
      raise ValueError(f"{prefix}{name}={v!r}: use an integer >= {low} (the paper's defaults: "
                       "iterations 20, batch_size 16, epochs 1).")
  for name, v in (("lr", lr), ("weight_decay", weight_decay), ("grad_clip", grad_clip)):
    if not float(v) >= 0:
      raise ValueError(f"{prefix}{name}={v!r}: use a value >= 0 (SetFit: lr 2e-5, "
                       "weight_decay 0.01, grad_clip 1.0).")
  if not 0 <= float(warmup) < 1:
    raise ValueError(f"{prefix}warmup={warmup!r}: a fraction of the steps in [0, 1).")


@base.register("setfit")
@dataclasses.dataclass(frozen=True)
class SetFit(logreg.LogReg):
  """LogReg on a support-fine-tuned encoder (see the module doc); meta-trains as LogReg."""
  name: str = "setfit"
  iterations: int = 20       # R: pair-generation passes over the support set
  batch_size: int = 16
  epochs: int = 1
  lr: float = 2e-5           # 0 (or iterations=0): no fine-tuning, frozen LogReg
  warmup: float = 0.1        # fraction of the steps with a rising rate
  weight_decay: float = 0.01
  grad_clip: float = 1.0     # 0: none
  dropout: bool = True       # the encoder in training mode while fine-tuning

  # Each episode fine-tunes its own copy: the evaluator loops over episodes on CPU.
  per_task_weights = True

  def __post_init__(self):
    super().__post_init__()
    check_options(iterations=self.iterations, batch_size=self.batch_size, epochs=self.epochs,
                  lr=self.lr, warmup=self.warmup, weight_decay=self.weight_decay,
                  grad_clip=self.grad_clip, min_iterations=0)

  def finetuned_variables(self, variables, support_x, support_y, key):
    """`variables` with the backbone's params fine-tuned on one support set."""
    params, _ = finetune(self.model, self.backbone_variables(variables), support_x, support_y,
                         key, self.iterations, self.batch_size, self.epochs, self.lr,
                         self.warmup, self.weight_decay, self.grad_clip, self.dropout)
    return self.replace_backbone_params(variables, params)

  def predict(self, variables, episode, key=None):
    if self.iterations and self.lr:
      key = jax.random.PRNGKey(0) if key is None else key
      variables = self.finetuned_variables(variables, episode["support_x"],
                                           episode["support_y"], key)
    return self.logits(variables, episode, train=False)[0]
