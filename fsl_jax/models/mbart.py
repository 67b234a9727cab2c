"""mBART (facebook/mbart-large-cc25 / -50) in JAX: presets, loading, language ids.

mBART is `seq2seq` with learned positions offset by 2, `layernorm_embedding`,
pre-LayerNorm layers, a final `layer_norm` in encoder and decoder, GELU, a
tied output layer plus `final_logits_bias`. Its decoder starts from
`decoder_start_token_id` (</s> for mbart-50) and the target language id is
forced as the first generated token (`forced_bos_token_id`); for teacher
forcing, `shift_tokens_right` moves the last non-pad token (the language id in
cc25's `... </s> lang` layout) to the front.
"""

from __future__ import annotations

import jax.numpy as jnp

from fsl_jax.models import seq2seq_hf
from fsl_jax.models.seq2seq import Seq2SeqConfig

FAMILY = "mbart"


def config(vocab_size: int = 250027, d_model: int = 1024, layers: int = 12, heads: int = 16,
           ffn_dim: int = 4096, max_positions: int = 1024, pad_token_id: int = 1,
           eos_token_id: int = 2, bos_token_id: int = 0, **kw) -> Seq2SeqConfig:
  """An mBART config; the defaults are mbart-large-cc25."""
  kw.setdefault("decoder_start_token_id", eos_token_id)
  return Seq2SeqConfig(
      family=FAMILY, vocab_size=vocab_size, d_model=d_model, encoder_layers=layers,
      decoder_layers=layers, encoder_heads=heads, decoder_heads=heads,
      encoder_ffn_dim=ffn_dim, decoder_ffn_dim=ffn_dim, max_position_embeddings=max_positions,
      activation="gelu", scale_embedding=True, positions="learned", pre_norm=True,
      layernorm_embedding=True, final_layer_norm=True, pad_token_id=pad_token_id,
      eos_token_id=eos_token_id, bos_token_id=bos_token_id, forced_eos_token_id=eos_token_id,
      **kw)


def large_cc25() -> Seq2SeqConfig:
  return config()


def large_50() -> Seq2SeqConfig:
  return config(vocab_size=250054)


def tiny(vocab_size: int = 1000) -> Seq2SeqConfig:
  return config(vocab_size=vocab_size, d_model=32, layers=2, heads=4, ffn_dim=64,
                max_positions=128)


def load(path_or_id: str, dtype=None):
  """(Seq2SeqConfig, params) of an mBART checkpoint directory or hub id."""
  return seq2seq_hf.load(path_or_id, FAMILY, dtype)


def shift_tokens_right(labels_BxT: jnp.ndarray, pad_token_id: int) -> jnp.ndarray:
  """mBART teacher forcing: the last non-pad token of each row goes first."""
  labels = jnp.where(labels_BxT < 0, pad_token_id, labels_BxT)
  last = jnp.sum(labels != pad_token_id, axis=1) - 1
  start = jnp.take_along_axis(labels, last[:, None], axis=1)
  return jnp.concatenate([start, labels[:, :-1]], axis=1)


def tokenizer(path_or_id: str, src_lang: str = "en_XX", tgt_lang: str | None = None):
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  return AutoTokenizer.from_pretrained(path_or_id, src_lang=src_lang, tgt_lang=tgt_lang)
