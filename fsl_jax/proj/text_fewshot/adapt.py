"""Methods that change the encoder for each support set: SetFit in `experiments.text_fewshot`.

    adapter = SetFitAdapter(encoder, max_length=64, options={"iterations": 20})
    tuned = adapter.finetuned(support_texts, support_y, key)   # an `encoders.Encoder`
    emb_NxD = encoders.embed_texts(tuned, texts, max_length=64)

SetFit (Tunstall et al. 2022; `fsl_jax.meta.setfit`, which holds the pairs,
the CosineSimilarityLoss, the AdamW schedule and their sources): the
encoder is fine-tuned as a Siamese network on pairs of support sentences,
then the 'logreg' method (`methods`) is fitted on the fine-tuned support
embeddings and classifies the queries' fine-tuned embeddings.

The support sentences are tokenised as the frozen path tokenises them
(`Encoder.tokenize`, truncated at max_length) and padded to the power of two
at or above the longest (at least 8, at most max_length): the fine-tuning
program compiles once per (width, support size, options other than the
rate) in a process -- a compilation costs far more than an episode (35 s
against 0.1 s for a 2-layer test encoder here) -- and padding is masked, so
it changes no embedding and no gradient.

Per episode (setting='episodic') the runner draws the same classes and
examples as the frozen methods (`episode_indices` from fold_in(PRNGKey(seed),
i)), so SetFit's accuracies pair episode by episode with SimpleShot's and
logreg's; the fine-tuning key is fold_in(that episode key, 1). Nothing is
cached: every episode starts again from the pretrained encoder.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax.meta import setfit
from fsl_jax.models import text_backbone
from fsl_jax.proj.text_fewshot import encoders

# The config keys under `setfit.` (experiments/configs/text_common.py) and SetFit's defaults.
SETFIT_DEFAULTS = {"iterations": 20, "batch_size": 16, "epochs": 1, "lr": 2e-5,
                   "warmup": 0.1, "weight_decay": 0.01, "grad_clip": 1.0}


def check_options(options: dict) -> dict:
  """`options` (SETFIT_DEFAULTS' keys) checked as the SetFit learner checks them."""
  unknown = sorted(set(options) - set(SETFIT_DEFAULTS))
  if unknown:
    raise ValueError(f"Unknown SetFit options {unknown}; use {sorted(SETFIT_DEFAULTS)}.")
  opts = {**SETFIT_DEFAULTS, **options}
  setfit.check_options(**opts, prefix="setfit.")
  return opts


def pack(ids: Sequence[Sequence[int]], width: int, pad: int) -> jax.Array:
  """Token id lists -> the packed int32 [B, 2, width, 1] of `text_backbone.pack`."""
  ids_BxT, mask_BxT = encoders.pad_ids(ids, width, pad)
  return text_backbone.pack(jnp.asarray(ids_BxT), jnp.asarray(mask_BxT))


@functools.lru_cache(maxsize=8)
def _program(config, iterations: int, batch_size: int, epochs: int, warmup: float,
             weight_decay: float, grad_clip: float):
  """jit(fn(variables, support_x, support_y, key, lr) -> (params, losses)), one per options."""
  model = text_backbone.TextEncoder(config=config)

  def run(variables, x, y, key, lr):
    return setfit.finetune(model, variables, x, y, key, iterations=iterations,
                           batch_size=batch_size, epochs=epochs, lr=lr, warmup=warmup,
                           weight_decay=weight_decay, grad_clip=grad_clip)

  return jax.jit(run)


class SetFitAdapter:
  """Fine-tunes copies of a frozen `encoders.Encoder` on support sets (SetFit)."""

  def __init__(self, encoder: encoders.Encoder, max_length: int, options: dict | None = None):
    self.encoder = encoder
    self.max_length = min(int(max_length), encoder.config.max_seq_length)
    self.options = check_options(dict(options or {}))
    o = self.options
    self._finetune = _program(encoder.config, o["iterations"], o["batch_size"], o["epochs"],
                              float(o["warmup"]), float(o["weight_decay"]),
                              float(o["grad_clip"]))

  def finetuned(self, texts: Sequence[str], labels_S, key: jax.Array
                ) -> tuple[encoders.Encoder, np.ndarray]:
    """(the encoder fine-tuned on the labelled support texts, the loss of every step)."""
    labels = np.asarray(labels_S, np.int32)
    if len(np.unique(labels)) < 2:
      raise ValueError("SetFit's negative pairs need support examples of at least 2 classes.")
    ids = self.encoder.tokenize(list(texts), self.max_length)
    longest = max(len(i) for i in ids)
    width = min(max(8, 1 << (longest - 1).bit_length()), max(self.max_length, longest))
    x = pack(ids, width, self.encoder.config.pad_token_id)
    params, losses = self._finetune({"params": self.encoder.params}, x, jnp.asarray(labels), key,
                                    jnp.float32(self.options["lr"]))
    name = f"{self.encoder.name}+setfit"
    return dataclasses.replace(self.encoder, name=name, params=params), np.asarray(losses)
