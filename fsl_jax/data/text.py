"""Class-indexed text sources for few-shot text classification, and their episodes.

A `TextClasses` is a split as class name -> list of strings: classes in a
fixed order (sorted; integer labels numerically), the examples of each class
in file order. `tokenize(tokenizer_fn, max_length)` turns it into a
`TokenizedClasses`: token ids and attention masks as int32 [C, M, L] plus
`counts` [C], the padded class-indexed layout of the image `ClassImages`, so
episodes are drawn by the same `episodes.episode_indices` (same key, same
classes and examples) and gathered on the device (`text_episode`,
`TextEpisodeSampler`).

Readers (each returns {split name: TextClasses}):
- `clinc150(path)`: CLINC150 (Larson et al. 2019, github.com/clinc/oos-eval)
  `data_{full,small,imbalanced,oos_plus}.json`: train/val/test with the 150
  intents, and the out-of-scope rows (`oos_train` etc.) as one more class
  named `oos`, placed last (`oos=False` drops it and leaves the other indices
  unchanged).
- `jsonl_raw_label(path)`: JSON lines `{"raw": text, "label": int}`, the
  format of the HuffPost / Reuters / HWU64 / Liu54 copies (processed by Bao
  et al. 2020); one split "all". `bao_splits` cuts it into Bao's classes.
- `fewrel(path)`: FewRel 1.0/2.0 JSON (relation -> list of {tokens, h, t});
  a folder gives one split per file (`val_wiki`, `val_pubmed`, ...).
- `csv_text_label(path, text_column, label_column)`: a user's CSV / TSV or
  JSON lines with named columns (optionally a split column).

Class splits: `BAO_CLASS_SPLITS` holds the label index lists of Bao et al.
2020 ("Few-shot Text Classification with Distributional Signatures"), read
from their src/dataset/loader.py (github.com/YujiaBao/Distributional-
Signatures, commit c613ed0): HuffPost 20/5/16 of 41, Reuters 15/5/11 of 31,
FewRel 65/5/10 of 80. The FewRel lists index the integer labels of Bao's own
processed fewrel.json; which relation (P-code) each integer is lives only in
that data file, so raw FewRel JSON is split with `seeded_class_split` (same
sizes, a seeded permutation of the sorted relation ids), not Bao's classes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax.data.episodes import EpisodeSpec, check_spec, episode_indices
from fsl_jax.data.sources import DataError, read_text, text_lines

Episode = dict[str, jax.Array]
ALL = "all"  # the split name of a reader without splits

# Bao et al. 2020, src/dataset/loader.py (_get_{huffpost,reuters,fewrel}_classes).
BAO_CLASS_SPLITS = {
    "huffpost": {"train": tuple(range(20)), "val": tuple(range(20, 25)),
                 "test": tuple(range(25, 41))},
    "reuters": {"train": tuple(range(15)), "val": tuple(range(15, 20)),
                "test": tuple(range(20, 31))},
    "fewrel": {  # integer labels of Bao's processed fewrel.json, not P-codes
        "train": (0, 1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 13, 14, 15, 16, 19, 21, 22, 24, 25, 26,
                  27, 28, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 43, 44, 45, 46, 48,
                  49, 50, 52, 53, 56, 57, 58, 59, 61, 62, 63, 64, 66, 67, 68, 69, 70, 71, 72,
                  73, 74, 75, 76, 77, 78),
        "val": (7, 9, 17, 18, 20),
        "test": (23, 29, 42, 47, 51, 54, 55, 60, 65, 79)},
}
# The split sizes of those lists, for `seeded_class_split` on other label sets.
BAO_SPLIT_SIZES = {name: {s: len(c) for s, c in parts.items()}
                   for name, parts in BAO_CLASS_SPLITS.items()}

# FewRel entity markers: head [E1] ... [/E1], tail [E2] ... [/E2] around the
# entity's tokens, as in "Matching the Blanks" (Baldini Soares et al. 2019).
FEWREL_MARKERS = ("[E1]", "[/E1]", "[E2]", "[/E2]")


def _sort_key(name: str):
  """Integer labels numerically (so index == label for 0..C-1), others as strings."""
  try:
    return (0, int(name), "")
  except ValueError:
    return (1, 0, name)


@dataclasses.dataclass
class TextClasses:
  """A split: `texts[c]` are the examples of class `class_names[c]`, in order."""
  class_names: list[str]
  texts: list[list[str]]

  def __post_init__(self):
    if len(self.class_names) != len(self.texts):
      raise DataError(f"{len(self.class_names)} class names but {len(self.texts)} text lists.")
    if len(set(self.class_names)) != len(self.class_names):
      raise DataError("class names must be unique.")

  @classmethod
  def from_pairs(cls, pairs: Iterable[tuple[str, str]],
                 last: Sequence[str] = ()) -> "TextClasses":
    """Groups (label, text) pairs; classes sorted (`_sort_key`), those in `last` at the end."""
    groups: dict[str, list[str]] = {}
    for label, text in pairs:
      groups.setdefault(str(label), []).append(text)
    names = sorted((n for n in groups if n not in last), key=_sort_key)
    names += [n for n in last if n in groups]
    return cls(names, [groups[n] for n in names])

  @classmethod
  def from_dict(cls, texts: Mapping[str, Sequence[str]]) -> "TextClasses":
    """Class name -> texts, in the mapping's order."""
    return cls([str(n) for n in texts], [list(t) for t in texts.values()])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def counts(self) -> np.ndarray:
    return np.asarray([len(t) for t in self.texts], np.int32)

  def __len__(self) -> int:
    return int(sum(len(t) for t in self.texts))

  def __getitem__(self, name: str) -> list[str]:
    try:
      return self.texts[self.class_names.index(str(name))]
    except ValueError:
      raise KeyError(f"No class {name!r}; classes: {_preview(self.class_names)}.") from None

  def as_dict(self) -> dict[str, list[str]]:
    return dict(zip(self.class_names, self.texts))

  def subset(self, classes: Sequence[str | int]) -> "TextClasses":
    """The named classes (names or str(label)), in the order given."""
    names = [str(c) for c in classes]
    missing = [n for n in names if n not in self.class_names]
    if missing:
      raise DataError(f"Classes {_preview(missing)} are not in this source; it has "
                      f"{self.num_classes}: {_preview(self.class_names)}.")
    return TextClasses(names, [self[n] for n in names])

  def tokenize(self, tokenizer_fn: Callable, max_length: int, pad_id: int = 0,
               batched: bool = False, pad_to_max_length: bool = False) -> "TokenizedClasses":
    """Token ids and masks, int32 [C, M, L], padded on the right with `pad_id`.

    `tokenizer_fn(text)` returns a text's ids (a sequence of ints, or a
    mapping with 'input_ids', as a Hugging Face tokenizer called on one
    string does); with `batched=True` it takes a list of texts and returns one
    such sequence per text (or a mapping whose 'input_ids' is that list).
    Ids past `max_length` are cut off (counted in `truncated`). L is the
    longest tokenised text (at most `max_length`), or `max_length` with
    `pad_to_max_length` (the same shape for every split). M is the largest
    class; `mask` is 1 for tokens, 0 for padding, as BERT's attention_mask.
    """
    if max_length < 1:
      raise DataError(f"max_length must be >= 1, got {max_length}.")
    flat = [t for texts in self.texts for t in texts]
    if batched:
      out = tokenizer_fn(flat)
      if isinstance(out, Mapping):
        out = out["input_ids"]
      ids = [_as_ids(o) for o in out]
      if len(ids) != len(flat):
        raise DataError(f"tokenizer_fn returned {len(ids)} sequences for {len(flat)} texts.")
    else:
      ids = [_as_ids(tokenizer_fn(t)) for t in flat]
    lengths = np.asarray([len(i) for i in ids], np.int64)
    if len(ids) and lengths.min() == 0:
      i = int(np.argmin(lengths))
      raise DataError(f"Text {flat[i]!r} tokenizes to no tokens; remove it or use a tokenizer "
                      "that adds special tokens.")
    counts = self.counts
    c, m = self.num_classes, int(counts.max()) if self.num_classes else 0
    width = max_length if pad_to_max_length else int(min(max_length, lengths.max(initial=1)))
    ids_CxMxL = np.full((c, m, width), pad_id, np.int32)
    mask_CxMxL = np.zeros((c, m, width), np.int32)
    k = 0
    for ci in range(c):
      for mi in range(int(counts[ci])):
        row = ids[k][:width]
        ids_CxMxL[ci, mi, :len(row)] = row
        mask_CxMxL[ci, mi, :len(row)] = 1
        k += 1
    return TokenizedClasses(ids_CxMxL, mask_CxMxL, counts, list(self.class_names),
                            truncated=int((lengths > width).sum()))


def _as_ids(seq: Any) -> np.ndarray:
  if isinstance(seq, Mapping):
    seq = seq["input_ids"]
  arr = np.asarray(seq)
  if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
    raise DataError(f"tokenizer_fn must return a 1-D sequence of integer ids per text, got "
                    f"shape {arr.shape} of {arr.dtype}; for a batched tokenizer pass "
                    "batched=True.")
  return arr.astype(np.int64)


def _preview(names: Sequence[str], n: int = 8) -> str:
  shown = ", ".join(repr(x) for x in names[:n])
  return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


@dataclasses.dataclass
class TokenizedClasses:
  """A tokenised split: `ids` and `mask` int32 [C, M, L], `counts` int32 [C]."""
  ids: np.ndarray
  mask: np.ndarray
  counts: np.ndarray
  class_names: list[str]
  truncated: int = 0  # texts cut at max_length

  def __post_init__(self):
    if self.ids.ndim != 3 or self.ids.shape != self.mask.shape:
      raise DataError(f"ids and mask must both be [C, M, L], got {self.ids.shape} and "
                      f"{self.mask.shape}.")
    if len(self.counts) != self.ids.shape[0] or len(self.class_names) != len(self.counts):
      raise DataError("ids, counts and class_names disagree on the number of classes.")

  @property
  def num_classes(self) -> int:
    return int(self.ids.shape[0])

  @property
  def max_length(self) -> int:
    return int(self.ids.shape[2])

  def __len__(self) -> int:
    return int(self.counts.sum())


# ------------------------------------------------------------------ episodes

def text_episode(key: jax.Array, ids_CxMxL: jax.Array, mask_CxMxL: jax.Array,
                 counts_C: jax.Array, spec: EpisodeSpec) -> Episode:
  """One N-way K-shot Q-query text episode; shapes are static given `spec`.

  Classes and examples are those `episodes.episode_indices` draws from `key`
  (the image sampler's draw). Returns support_ids / support_mask [N*K, L],
  support_y [N*K], query_ids / query_mask [N*Q, L], query_y [N*Q] (labels
  0..N-1 in draw order, grouped by class) and classes [N] (the class indices).
  """
  n, k, q = spec.ways, spec.shots, spec.queries
  max_m, width = ids_CxMxL.shape[1], ids_CxMxL.shape[2]
  classes_N, idx_NxS = episode_indices(key, counts_C, max_m, spec)
  ids = ids_CxMxL[classes_N[:, None], idx_NxS]    # [N, K+Q, L]
  mask = mask_CxMxL[classes_N[:, None], idx_NxS]
  labels = jnp.arange(n, dtype=jnp.int32)
  return {
      "support_ids": ids[:, :k].reshape(n * k, width),
      "support_mask": mask[:, :k].reshape(n * k, width),
      "support_y": jnp.repeat(labels, k),
      "query_ids": ids[:, k:].reshape(n * q, width),
      "query_mask": mask[:, k:].reshape(n * q, width),
      "query_y": jnp.repeat(labels, q),
      "classes": classes_N,
  }


class TextEpisodeSampler:
  """Holds a tokenised split on the device; samples episodes or meta-batches."""

  def __init__(self, source: TokenizedClasses, spec: EpisodeSpec, split: str = ""):
    check_spec(source, spec, False, split)
    self.source, self.spec = source, spec
    self.ids, self.mask = jnp.asarray(source.ids), jnp.asarray(source.mask)
    self.counts = jnp.asarray(source.counts)
    self._one = jax.jit(self.sample_fn())
    self._batch = jax.jit(self.batch_fn(), static_argnums=1)

  def sample_fn(self):
    """A pure `fn(key, ids, mask, counts) -> Episode`, for use inside a jitted step."""
    spec = self.spec
    return lambda key, ids, mask, counts: text_episode(key, ids, mask, counts, spec)

  def batch_fn(self):
    one = self.sample_fn()

    def batch(key, size, ids, mask, counts):
      keys = jax.random.split(key, size)
      return jax.vmap(one, in_axes=(0, None, None, None))(keys, ids, mask, counts)

    return batch

  def sample(self, key: jax.Array) -> Episode:
    return self._one(key, self.ids, self.mask, self.counts)

  def sample_batch(self, key: jax.Array, size: int) -> Episode:
    return self._batch(key, size, self.ids, self.mask, self.counts)


# ------------------------------------------------------------------ class splits

def split_classes(source: TextClasses, parts: Mapping[str, Sequence[str | int]]
                  ) -> dict[str, TextClasses]:
  """{split: the classes listed for it}; a class in two splits is refused."""
  seen: dict[str, str] = {}
  for split, classes in parts.items():
    for c in classes:
      if str(c) in seen:
        raise DataError(f"Class {c!r} is in both split {seen[str(c)]!r} and {split!r}.")
      seen[str(c)] = split
  return {split: source.subset(classes) for split, classes in parts.items()}


def bao_splits(source: TextClasses, dataset: str) -> dict[str, TextClasses]:
  """Bao et al. 2020's train/val/test classes of 'huffpost', 'reuters' or 'fewrel'.

  `source` must have Bao's integer labels as class names ("0".."40" for
  HuffPost), as `jsonl_raw_label` reads the shared {raw, label} copies; the
  FewRel lists need Bao's processed fewrel.json (`csv_text_label(path,
  'text', 'label')`), not the P-codes of raw FewRel (`seeded_class_split`).
  """
  if dataset not in BAO_CLASS_SPLITS:
    raise DataError(f"No Bao et al. class split for {dataset!r}; they exist for "
                    f"{', '.join(BAO_CLASS_SPLITS)}. Use seeded_class_split for others.")
  parts = BAO_CLASS_SPLITS[dataset]
  want = sum(len(c) for c in parts.values())
  if source.num_classes != want:
    raise DataError(f"Bao et al.'s {dataset} split has {want} classes, the source has "
                    f"{source.num_classes}; is this the right file?")
  return split_classes(source, parts)


def seeded_class_split(source: TextClasses, sizes: Mapping[str, int], seed: int = 0
                       ) -> dict[str, TextClasses]:
  """Disjoint class splits of the given sizes from a seeded permutation of the classes.

  The permutation (numpy PCG64 `default_rng(seed)`) is of the classes in
  their sorted order, so it does not depend on file order; within a split
  the classes keep that order. E.g. sizes BAO_SPLIT_SIZES['fewrel'] (65/5/10)
  on FewRel's 80 relations (train_wiki + val_wiki, `merge_classes`).
  """
  need = sum(int(s) for s in sizes.values())
  if need > source.num_classes:
    raise DataError(f"The split sizes {dict(sizes)} need {need} classes; the source has "
                    f"{source.num_classes}. Lower the sizes or merge more files "
                    "(merge_classes).")
  names = sorted(source.class_names, key=_sort_key)
  order = np.random.default_rng(seed).permutation(len(names))
  out, start = {}, 0
  for split, size in sizes.items():
    picked = sorted(order[start:start + int(size)])
    out[split] = source.subset([names[i] for i in picked])
    start += int(size)
  return out


def merge_classes(sources: Sequence[TextClasses]) -> TextClasses:
  """The classes of several sources, in order; a class name in two of them is refused."""
  names, texts = [], []
  for s in sources:
    for n, t in zip(s.class_names, s.texts):
      if n in names:
        raise DataError(f"Class {n!r} is in more than one source; merge_classes keeps "
                        "classes apart (use disjoint sources).")
      names.append(n)
      texts.append(t)
  return TextClasses(names, texts)


# ------------------------------------------------------------------ readers

def _load_json(path: str) -> Any:
  text = read_text(path)
  if not text.strip():
    raise DataError(f"{path} is empty.")
  try:
    return json.loads(text)
  except json.JSONDecodeError as err:
    raise DataError(f"{path}:{err.lineno} is not valid JSON ({err.msg}, column "
                    f"{err.colno}).") from None


CLINC_VARIANTS = ("full", "small", "imbalanced", "oos_plus")


def clinc150(path: str, oos: bool = True, variant: str = "full") -> dict[str, TextClasses]:
  """CLINC150's {'train', 'val', 'test'}: 150 intents, plus 'oos' (last) unless `oos=False`.

  `path` is a data_*.json file or the folder holding them (then
  data_{variant}.json). Each file maps split -> [[text, intent], ...], the
  out-of-scope rows under oos_train / oos_val / oos_test with intent 'oos'.
  data_full: 100 / 20 / 30 examples per intent, oos 100 / 100 / 1,000.
  """
  if os.path.isdir(path):
    if variant not in CLINC_VARIANTS:
      raise DataError(f"Unknown CLINC150 variant {variant!r}; choose one of "
                      f"{', '.join(CLINC_VARIANTS)}.")
    path = os.path.join(path, f"data_{variant}.json")
  data = _load_json(path)
  out = {}
  for split in ("train", "val", "test"):
    keys = [split] + ([f"oos_{split}"] if oos else [])
    pairs = []
    for key in keys:
      rows = data.get(key) if isinstance(data, dict) else None
      if not isinstance(rows, list):
        have = ", ".join(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path} has no {key!r} list (it has {have}); expected a CLINC150 "
                        "data_*.json.")
      for i, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 2 and all(isinstance(v, str) for v in row)):
          raise DataError(f"{path}: {key}[{i}] must be [text, intent] strings, got {row!r:.80}.")
        pairs.append((row[1], row[0]))
    out[split] = TextClasses.from_pairs(pairs, last=("oos",))
  return out


def jsonl_raw_label(path: str) -> dict[str, TextClasses]:
  """{'all': classes} of JSON lines {"raw": text, "label": int or str}.

  The shared HuffPost (41 x 900), Reuters (31 x 20), HWU64 (64) and Liu54
  (54) files; class names are the labels as strings ("0".."40"), in numeric
  order. `bao_splits(source, 'huffpost')` gives Bao et al.'s splits.
  """
  return csv_text_label(path, "raw", "label", fmt="jsonl")


def _fewrel_text(tokens: list[str], head: list, tail: list, markers) -> str:
  """The tokens joined by spaces, each head/tail span wrapped in its markers."""
  before = [[] for _ in tokens]
  after = [[] for _ in tokens]
  if markers is not None:
    for (open_m, close_m), spans in ((markers[:2], head), (markers[2:], tail)):
      for span in spans:
        before[min(span)].append(open_m)
        after[max(span)].insert(0, close_m)
  words = []
  for b, tok, a in zip(before, tokens, after):
    words += b + [tok] + a
  return " ".join(w.strip() for w in words if w.strip())


def fewrel(path: str, markers: Sequence[str] | None = FEWREL_MARKERS) -> dict[str, TextClasses]:
  """FewRel 1.0 / 2.0 JSON: {file stem: relation -> its sentences}.

  `path` is one file (train_wiki.json, val_wiki.json, val_pubmed.json) or a
  folder of them (pid2name.json, the relation names, is skipped). Each
  instance is {tokens, h: [name, id, [[token positions], ...]], t: ...}. The
  text is the tokens joined by single spaces (whitespace-only tokens, which
  FewRel has, dropped) with every head mention wrapped as `[E1] ... [/E1]`
  and every tail mention as `[E2] ... [/E2]` (`markers`, 4 strings: head
  open/close, tail open/close; None for plain text). Markers are plain
  words: a tokenizer without them as special tokens splits them into pieces
  (consistently), which keeps the entity positions visible to any encoder.
  Relations are sorted by id; val_wiki holds 16 relations x 700.
  """
  if markers is not None and len(markers) != 4:
    raise DataError(f"markers must be 4 strings (head open, head close, tail open, tail "
                    f"close), got {markers!r}.")
  if os.path.isdir(path):
    files = sorted(p for p in pathlib.Path(path).glob("*.json") if p.name != "pid2name.json")
    if not files:
      raise DataError(f"{path} holds no FewRel *.json files (e.g. val_wiki.json).")
  else:
    files = [pathlib.Path(path)]
  out = {}
  for f in files:
    data = _load_json(str(f))
    if not isinstance(data, dict):
      raise DataError(f"{f} is not FewRel JSON (an object: relation -> list of instances).")
    pairs = []
    for rel, instances in data.items():
      if not isinstance(instances, list):
        raise DataError(f"{f}: relation {rel!r} must map to a list of instances.")
      for i, inst in enumerate(instances):
        where = f"{f}: {rel}[{i}]"
        try:
          tokens, head, tail = inst["tokens"], inst["h"][2], inst["t"][2]
          ok = all(isinstance(t, str) for t in tokens) and all(
              len(s) and all(0 <= int(j) < len(tokens) for j in s) for s in head + tail)
        except (KeyError, IndexError, TypeError, ValueError):
          ok = False
        if not ok:
          raise DataError(f"{where} must be {{tokens: [str], h: [name, id, [[positions]]], "
                          "t: ...}} with positions inside tokens.")
        pairs.append((rel, _fewrel_text(tokens, head, tail, markers)))
    out[f.stem] = TextClasses.from_pairs(pairs)
  return out


def _json_rows(path: str, text: str):
  """(line number, dict) per non-blank JSON line (blank lines counted)."""
  for n, line in enumerate(text_lines(text), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as err:
      raise DataError(f"{path}:{n} is not valid JSON ({err.msg}, column {err.colno}).") from None
    if not isinstance(row, dict):
      raise DataError(f"{path}:{n}: each line needs a JSON object, got "
                      f"{type(row).__name__}.")
    yield n, row


def _csv_rows(path: str, text: str, delimiter: str):
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
  try:
    header = next(reader)
  except StopIteration:
    return
  for row in reader:
    if not any(v.strip() for v in row):
      continue
    if len(row) != len(header):
      raise DataError(f"{path}:{reader.line_num} has {len(row)} fields, the header "
                      f"{len(header)} ({', '.join(header)}); quote fields that hold "
                      f"{delimiter!r}.")
    yield reader.line_num, dict(zip(header, row))


def csv_text_label(path: str, text_column: str, label_column: str,
                   split_column: str | None = None, fmt: str = "auto"
                   ) -> dict[str, TextClasses]:
  """A user's labelled texts: {'all': classes}, or {split: classes} by `split_column`.

  `fmt` 'csv' (comma), 'tsv' (tab) or 'jsonl' (one JSON object per line);
  'auto' picks by suffix (.csv, .tsv, else JSON lines). A text that is a
  JSON list of strings (pre-tokenised files such as Bao et al.'s) is joined
  by spaces; labels are strings or integers (class names are str(label),
  integers in numeric order). A missing column names the columns there are;
  a bad row (empty text, missing value, wrong type) names its line.
  """
  if fmt == "auto":
    fmt = {".csv": "csv", ".tsv": "tsv"}.get(pathlib.Path(path).suffix.lower(), "jsonl")
  if fmt not in ("csv", "tsv", "jsonl"):
    raise DataError(f"fmt={fmt!r}: use auto, csv, tsv or jsonl.")
  text = read_text(path)
  rows = (_json_rows(path, text) if fmt == "jsonl"
          else _csv_rows(path, text, "," if fmt == "csv" else "\t"))
  columns = [text_column, label_column] + ([split_column] if split_column else [])
  groups: dict[str, list[tuple[str, str]]] = {}
  for n, row in rows:
    missing = [c for c in columns if c not in row]
    if missing:
      raise DataError(f"{path}:{n} has no column {missing[0]!r}; its columns are "
                      f"{', '.join(map(repr, row))}.")
    value, label = row[text_column], row[label_column]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
      value = " ".join(value)
    if not isinstance(value, str) or not value.strip():
      raise DataError(f"{path}:{n}: {text_column!r} must be a non-empty string, got "
                      f"{value!r:.60}.")
    if isinstance(label, bool) or not isinstance(label, (str, int)) or str(label) == "":
      raise DataError(f"{path}:{n}: {label_column!r} must be a non-empty string or an "
                      f"integer, got {label!r:.60}.")
    split = str(row[split_column]) if split_column else ALL
    groups.setdefault(split, []).append((str(label), value))
  if not groups:
    raise DataError(f"{path} holds no examples.")
  return {split: TextClasses.from_pairs(pairs) for split, pairs in groups.items()}
