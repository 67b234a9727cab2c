"""Hugging Face Marian / mBART checkpoints <-> `seq2seq` params.

Reading files (safetensors, shards, `pytorch_model.bin`, hub ids) is
`fsl_jax.models.hf_loading`; this module maps names and layouts:
PyTorch `Linear.weight` [out, in] -> `kernel` [in, out]; LayerNorm
`weight` -> `scale`; Embedding `weight` -> `embedding`; `final_logits_bias`
[1, V] -> [V]; `lm_head.weight` only when the output layer is untied.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from fsl_jax.models import hf_loading
from fsl_jax.models.seq2seq import Params, Seq2SeqConfig

_FAMILY_FLAGS = {
    "marian": dict(positions="sinusoidal", pre_norm=False, layernorm_embedding=False,
                   final_layer_norm=False),
    "mbart": dict(positions="learned", pre_norm=True, layernorm_embedding=True,
                  final_layer_norm=True),
}


def config_from_hf(hf: dict, family: str) -> Seq2SeqConfig:
  """Our config from a config.json dict, refusing another architecture."""
  model_type = hf.get("model_type")
  if model_type != family:
    raise ValueError(f"Checkpoint has model_type={model_type!r}, but a {family!r} port was asked "
                     f"for; load it with fsl_jax.models.{model_type or '<its family>'} instead.")
  if family == "marian" and not hf.get("share_encoder_decoder_embeddings", True):
    if hf.get("decoder_vocab_size") not in (None, hf["vocab_size"]):
      raise NotImplementedError("Marian checkpoints with a separate decoder vocabulary "
                                "(decoder_vocab_size != vocab_size) are not supported yet.")
  tie = hf.get("tie_word_embeddings", True)
  eos = hf.get("eos_token_id")
  return Seq2SeqConfig(
      family=family, vocab_size=hf["vocab_size"], d_model=hf["d_model"],
      encoder_layers=hf["encoder_layers"], decoder_layers=hf["decoder_layers"],
      encoder_heads=hf["encoder_attention_heads"], decoder_heads=hf["decoder_attention_heads"],
      encoder_ffn_dim=hf["encoder_ffn_dim"], decoder_ffn_dim=hf["decoder_ffn_dim"],
      max_position_embeddings=hf["max_position_embeddings"],
      activation=hf.get("activation_function", "gelu"),
      scale_embedding=bool(hf.get("scale_embedding", False)),
      tie_word_embeddings=bool(tie), pad_token_id=hf["pad_token_id"],
      eos_token_id=eos[0] if isinstance(eos, list) else eos,
      bos_token_id=hf.get("bos_token_id"),
      decoder_start_token_id=hf.get("decoder_start_token_id", hf["pad_token_id"]),
      forced_bos_token_id=hf.get("forced_bos_token_id"),
      forced_eos_token_id=hf.get("forced_eos_token_id"),
      dropout=float(hf.get("dropout", 0.1)),
      **_FAMILY_FLAGS[family])


def config_to_hf(cfg: Seq2SeqConfig) -> dict:
  """The config.json fields transformers needs to rebuild the same model."""
  d = dict(model_type=cfg.family, vocab_size=cfg.vocab_size, d_model=cfg.d_model,
           encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
           encoder_attention_heads=cfg.encoder_heads, decoder_attention_heads=cfg.decoder_heads,
           encoder_ffn_dim=cfg.encoder_ffn_dim, decoder_ffn_dim=cfg.decoder_ffn_dim,
           max_position_embeddings=cfg.max_position_embeddings,
           activation_function=cfg.activation, scale_embedding=cfg.scale_embedding,
           tie_word_embeddings=cfg.tie_word_embeddings, pad_token_id=cfg.pad_token_id,
           eos_token_id=cfg.eos_token_id, bos_token_id=cfg.bos_token_id,
           decoder_start_token_id=cfg.decoder_start_token_id,
           forced_bos_token_id=cfg.forced_bos_token_id,
           forced_eos_token_id=cfg.forced_eos_token_id, dropout=cfg.dropout)
  if cfg.family == "marian":
    d["decoder_vocab_size"] = cfg.vocab_size
  return d


def _leaf(parts: list[str], value: np.ndarray) -> tuple[list[str], np.ndarray]:
  *mod, kind = parts
  if mod and mod[-1] == "embed_positions":
    return mod + ["embedding"], value
  if mod and (mod[-1].endswith("layer_norm") or mod[-1] == "layernorm_embedding"):
    return mod + ["scale" if kind == "weight" else "bias"], value
  if mod and mod[-1] in ("shared", "embed_tokens"):
    return mod + ["embedding"], value
  if kind == "weight":
    return mod + ["kernel"], value.T
  return mod + [kind], value


def params_from_state_dict(state: dict[str, np.ndarray], cfg: Seq2SeqConfig) -> Params:
  """Maps PyTorch names (`model.encoder.layers.0.fc1.weight`) to our tree."""
  state = hf_loading.strip_prefix(state, ["model."])
  tree: dict[str, Any] = {}
  for name, value in state.items():
    value = np.asarray(value, np.float32)
    if name == "final_logits_bias":
      tree["final_logits_bias"] = value.reshape(-1)
      continue
    if name == "lm_head.weight":
      if not cfg.tie_word_embeddings:
        tree["lm_head"] = {"kernel": value.T}
      continue
    if name.endswith("embed_positions.weight") and cfg.positions == "sinusoidal":
      continue  # Marian's table is computed, not learned.
    parts, value = _leaf(name.split("."), value)
    node = tree
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = value
  # Encoder/decoder token embeddings are copies of `shared` when tied; an
  # untied decoder table (share_encoder_decoder_embeddings=False) is kept.
  enc_et = tree.get("encoder", {}).pop("embed_tokens", None)
  dec_et = tree.get("decoder", {}).pop("embed_tokens", None)
  if "shared" not in tree and enc_et is not None:
    tree["shared"] = enc_et
  if dec_et is not None and not np.array_equal(dec_et["embedding"], tree["shared"]["embedding"]):
    tree["decoder"]["embed_tokens"] = dec_et
  if "shared" not in tree:
    raise ValueError("Checkpoint has no token embedding (model.shared.weight).")
  if "lm_head" not in tree and not cfg.tie_word_embeddings:
    raise ValueError("Config says tie_word_embeddings=False but the checkpoint has no lm_head.weight.")
  tree.setdefault("final_logits_bias", np.zeros((cfg.vocab_size,), np.float32))
  for side in ("encoder", "decoder"):
    layers = tree[side]["layers"]
    tree[side]["layers"] = [layers[str(i)] for i in range(len(layers))]
  _check_shapes(tree, cfg)
  return tree


def _check_shapes(tree: Params, cfg: Seq2SeqConfig) -> None:
  v, d = tree["shared"]["embedding"].shape
  if (v, d) != (cfg.vocab_size, cfg.d_model):
    raise ValueError(f"Embedding is [{v}, {d}] but the config says [{cfg.vocab_size}, {cfg.d_model}]: "
                     f"config.json and weights are from different models.")
  for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
    if len(tree[side]["layers"]) != n:
      raise ValueError(f"{side} has {len(tree[side]['layers'])} layers in the weights, {n} in the config.")
  for side in ("encoder", "decoder"):
    has_ln = "layernorm_embedding" in tree[side]
    if has_ln != cfg.layernorm_embedding:
      raise ValueError(f"{side}.layernorm_embedding {'present' if has_ln else 'absent'} in the weights but "
                       f"the {cfg.family} config disagrees: is this a {cfg.family} checkpoint?")


def state_dict_from_params(params: Params, cfg: Seq2SeqConfig) -> dict[str, np.ndarray]:
  """Inverse of `params_from_state_dict` (for save_pretrained-style export)."""
  out = {}
  from fsl_jax.peft import freeze  # pylint: disable=import-outside-toplevel
  for path, value in freeze.flatten_with_paths(jax.device_get(params)).items():
    value = np.asarray(value, np.float32)
    if path == "final_logits_bias":
      out["final_logits_bias"] = value[None]
      continue
    if path == "lm_head/kernel":
      out["lm_head.weight"] = value.T
      continue
    parts = path.split("/")
    if re.search(r"adapter|lora", path):
      raise ValueError("Merge or drop adapters before exporting a Hugging Face checkpoint.")
    *mod, kind = parts
    if kind == "kernel":
      value, kind = value.T, "weight"
    elif kind in ("scale", "embedding"):
      kind = "weight"
    out["model." + ".".join(mod + [kind])] = value
  emb = out["model.shared.weight"]
  out["model.encoder.embed_tokens.weight"] = emb
  out["model.decoder.embed_tokens.weight"] = emb
  if cfg.tie_word_embeddings:
    out["lm_head.weight"] = emb
  return out


def load(path_or_id: str, family: str, dtype=None) -> tuple[Seq2SeqConfig, Params]:
  """(config, params) of a local checkpoint directory or hub id."""
  directory = hf_loading.resolve(path_or_id, allow_patterns=[
      "*.json", "*.safetensors", "*.spm", "*.model", "*.txt"])
  cfg = config_from_hf(hf_loading.load_config(directory), family)
  params = params_from_state_dict(hf_loading.load_state_dict(directory), cfg)
  params = jax.tree.map(lambda x: jax.numpy.asarray(x, dtype or np.float32), params)
  return cfg, params
