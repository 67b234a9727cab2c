"""MarianMT (Helsinki-NLP opus-mt) in JAX: presets, checkpoint loading, tokenizer.

Marian is `seq2seq` with sinusoidal positions (sin half, then cos half; not
stored in checkpoints), embeddings scaled by sqrt(d_model), post-LayerNorm,
swish FFN, a tied output layer plus `final_logits_bias`, and decoding that
starts from the pad token.

    cfg, params = marian.load("path/to/opus-mt-en-sw")   # or a hub id, online
    logits_BxTxV = seq2seq.forward(cfg, params, ids, mask, dec_ids)
"""

from __future__ import annotations

from fsl_jax.models import seq2seq_hf
from fsl_jax.models.seq2seq import Seq2SeqConfig

FAMILY = "marian"


def config(vocab_size: int = 58101, d_model: int = 512, layers: int = 6, heads: int = 8,
           ffn_dim: int = 2048, max_positions: int = 512, pad_token_id: int | None = None,
           eos_token_id: int = 0, **kw) -> Seq2SeqConfig:
  """A Marian config; the defaults are the opus-mt base shape (vocab varies by pair)."""
  pad = vocab_size - 1 if pad_token_id is None else pad_token_id
  return Seq2SeqConfig(
      family=FAMILY, vocab_size=vocab_size, d_model=d_model, encoder_layers=layers,
      decoder_layers=layers, encoder_heads=heads, decoder_heads=heads,
      encoder_ffn_dim=ffn_dim, decoder_ffn_dim=ffn_dim, max_position_embeddings=max_positions,
      activation="swish", scale_embedding=True, positions="sinusoidal", pre_norm=False,
      layernorm_embedding=False, final_layer_norm=False, pad_token_id=pad,
      eos_token_id=eos_token_id, decoder_start_token_id=pad, forced_eos_token_id=eos_token_id,
      **kw)


def opus_mt_base(vocab_size: int = 58101) -> Seq2SeqConfig:
  """Helsinki-NLP/opus-mt-* shape: 6+6 layers, d 512, 8 heads, FFN 2048."""
  return config(vocab_size=vocab_size)


def tiny(vocab_size: int = 1000) -> Seq2SeqConfig:
  """Seconds-scale tests and smoke runs."""
  return config(vocab_size=vocab_size, d_model=32, layers=2, heads=4, ffn_dim=64,
                max_positions=128)


def load(path_or_id: str, dtype=None):
  """(Seq2SeqConfig, params) of a Marian checkpoint directory or hub id."""
  return seq2seq_hf.load(path_or_id, FAMILY, dtype)


def tokenizer(path_or_id: str):
  """The checkpoint's `MarianTokenizer` (needs sentencepiece)."""
  from transformers import MarianTokenizer  # pylint: disable=import-outside-toplevel
  return MarianTokenizer.from_pretrained(path_or_id)
