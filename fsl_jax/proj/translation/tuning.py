"""Translation models for tuning: load / build / export a base, the token loss and the
pure training step, batched beam-search translation and BLEU / chrF scoring.

`config.model` is a Hugging Face checkpoint directory / hub id of a Marian or
mBART model, or `scratch`: a Marian-shaped model of `config.scratch` size with
a SentencePiece vocabulary trained on the training text. Full training
(`method=full`) exports the result as a Hugging Face directory
(`workdir/model`) that transformers and this module both load, so a base
trained here can be adapted, back-translated with and compared later. The
binary's driver is `fsl_jax.proj.translation.trainer`.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsl_jax.models import hf_loading, marian, mbart, seq2seq, seq2seq_hf
from fsl_jax.models import seq2seq_generate as sg
from fsl_jax.peft import adapters
from fsl_jax.proj.translation import data as td

TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json", "tokenizer_config.json",
                   "sentencepiece.bpe.model", "tokenizer.json", "special_tokens_map.json")


# ----------------------------------------------------------------------------- model I/O
def load_model(path_or_id: str):
  """(cfg, params) of a Marian or mBART checkpoint, by its config's model_type."""
  directory = hf_loading.resolve(path_or_id, ["*.json", "*.safetensors", "*.spm", "*.model"])
  family = hf_loading.load_config(directory).get("model_type")
  if family not in ("marian", "mbart"):
    raise ValueError(f"{path_or_id} is a {family!r} checkpoint; translation needs marian or mbart.")
  return (marian if family == "marian" else mbart).load(directory)


def load_tokenizer(path: str, config=None):
  from transformers import AutoTokenizer, MarianTokenizer  # pylint: disable=import-outside-toplevel
  if os.path.exists(os.path.join(path, "source.spm")):
    return MarianTokenizer.from_pretrained(path)
  kw = {}
  if config is not None and config.get("src_lang"):
    kw = {"src_lang": config.get("src_lang"), "tgt_lang": config.get("tgt_lang") or None}
  return AutoTokenizer.from_pretrained(path, **kw)


def export_hf(directory: str, cfg: seq2seq.Seq2SeqConfig, params, tokenizer_dir: str | None):
  """Writes config.json + model.safetensors (+ tokenizer files): a save_pretrained layout."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  os.makedirs(directory, exist_ok=True)
  hf = seq2seq_hf.config_to_hf(cfg)
  hf["architectures"] = ["MarianMTModel" if cfg.family == "marian" else "MBartForConditionalGeneration"]
  state = seq2seq_hf.state_dict_from_params(params, cfg)
  state = {k: v for k, v in state.items() if "embed_tokens" not in k and k != "lm_head.weight"
           or (k == "lm_head.weight" and not cfg.tie_word_embeddings)}
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()},
            os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf, f, indent=1)
  if tokenizer_dir:
    for name in TOKENIZER_FILES:
      if os.path.exists(os.path.join(tokenizer_dir, name)):
        shutil.copy(os.path.join(tokenizer_dir, name), directory)


def build_base(config, workdir: str, pairs: td.Pairs):
  """(cfg, params, tokenizer, tokenizer_dir) from `config.model`."""
  if config.model != "scratch":
    cfg, params = load_model(config.model)
    directory = hf_loading.resolve(config.model, ["*.json", "*.spm", "*.model"])
    return cfg, params, load_tokenizer(directory, config), directory
  if config.method != "full":
    raise ValueError("model=scratch trains a new base: use method=full (adapters need a trained base).")
  tok_dir = os.path.join(workdir, "tokenizer")
  if not os.path.exists(os.path.join(tok_dir, "vocab.json")):
    texts = [s for s, _ in pairs] + [t for _, t in pairs]
    td.train_marian_tokenizer(texts, tok_dir, config.scratch.vocab_size,
                              user_symbols=[config.bt_tag] if config.get("bt_tag") else ())
  tok = load_tokenizer(tok_dir)
  s = config.scratch
  cfg = marian.config(vocab_size=len(tok.get_vocab()), d_model=s.d_model, layers=s.layers,
                      heads=s.heads, ffn_dim=s.ffn_dim, max_positions=s.max_positions,
                      dropout=s.dropout)
  params = seq2seq.init_params(cfg, jax.random.PRNGKey(config.seed))
  return cfg, params, tok, tok_dir


# ----------------------------------------------------------------------------- training
def token_loss(cfg, params, adapter_cfg, batch, rng, label_smoothing: float):
  """Mean label-smoothed cross-entropy over target tokens."""
  labels = batch["labels"]
  dec_in = seq2seq.shift_right(cfg, labels)
  logits = seq2seq.forward(cfg, params, batch["src_ids"], batch["src_mask"], dec_in,
                           adapter_cfg=adapter_cfg, dropout_rng=rng)
  v = logits.shape[-1]
  target = optax.smooth_labels(jax.nn.one_hot(labels, v), label_smoothing)
  ce = optax.softmax_cross_entropy(logits, target)
  w = batch["label_mask"].astype(jnp.float32)
  return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)


def params_fn(method: str, spec, lspec):
  """trainable, base -> (params, adapter_cfg) for `method` (static)."""
  if method == "full":
    return lambda trainable, base: (trainable, None)
  return lambda trainable, base: adapters.apply(base, trainable, spec, lspec)


def make_train_step(cfg, merge, tx: optax.GradientTransformation, label_smoothing: float,
                    dropout_key: jax.Array | None = None):
  """A pure `step(state, batch, base) -> (state, {"loss"})` for `fsl_jax.train.loop`.

  state = {"trainable", "opt_state", "step"}; `merge(trainable, base)` gives
  the model's (params, adapter_cfg); `base` is never updated. With
  `dropout_key`, step s drops out with fold_in(dropout_key, s).
  """

  def step(state, batch, base):
    rng = None if dropout_key is None else jax.random.fold_in(dropout_key, state["step"])

    def loss(t):
      params, acfg = merge(t, base)
      return token_loss(cfg, params, acfg, batch, rng, label_smoothing)

    value, grads = jax.value_and_grad(loss)(state["trainable"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["trainable"])
    return {**state, "trainable": optax.apply_updates(state["trainable"], updates),
            "opt_state": opt_state}, {"loss": value}

  return step


# ----------------------------------------------------------------------------- evaluation
def translate(cfg, params, tok, sources: list[str], gen: sg.GenerationConfig,
              adapter_cfg=None, batch_size: int = 32, max_len: int = 128,
              progress: bool = False) -> list[str]:
  """Batched beam-search translation, in input order."""
  ids = td.encode_sources(tok, sources, max_len)
  order = np.argsort([len(x) for x in ids])
  out = [""] * len(sources)
  it = range(0, len(order), batch_size)
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    it = tqdm(it, desc="translate", unit="batch")
  for i in it:
    idx = order[i:i + batch_size]
    chunk = [ids[j] for j in idx]
    if len(chunk) < batch_size:  # constant batch shape: one compilation
      chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))
    src, mask = td.pad_batch(chunk, cfg.pad_token_id)
    gen_ids = sg.generate(cfg, params, src, mask, gen, adapter_cfg)
    for j, row in zip(idx, gen_ids):
      out[j] = tok.decode(sg.strip(row, cfg), skip_special_tokens=True)
  return out


def score(hyps: list[str], refs: list[str]) -> dict[str, float]:
  import sacrebleu  # pylint: disable=import-outside-toplevel
  return {"bleu": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
          "chrf": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)}


def generation_config(config, cfg, tok) -> sg.GenerationConfig:
  """Beam search options; mBART gets its target language id as forced BOS."""
  forced_bos = None
  if cfg.family == "mbart" and config.get("tgt_lang"):
    forced_bos = tok.convert_tokens_to_ids(config.tgt_lang)
  return sg.GenerationConfig(max_new_tokens=config.max_new_tokens, num_beams=config.num_beams,
                             length_penalty=config.length_penalty, forced_bos_token_id=forced_bos,
                             bad_token_ids=(cfg.pad_token_id,))
