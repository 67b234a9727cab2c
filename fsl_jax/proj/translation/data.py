"""Parallel text for translation: aligned files or TSV, tokenisation, batches.

Aligned files are the layout of ../shared/data/translation (`train.en` /
`train.swa`, one sentence per line, line i of one = line i of the other); a
TSV holds `source<TAB>target` per line (what `experiments.back_translate`
writes). `train_marian_tokenizer` trains a joint SentencePiece model and writes
the files `MarianTokenizer.from_pretrained(dir)` expects (`source.spm`,
`target.spm`, `vocab.json`, `tokenizer_config.json`), with Marian's id layout:
`</s>`=0, `<unk>`=1, pieces, `<pad>`=last.

Bad input is a `DataError` naming the file (and the line, counted from 1 with
blank lines included): text that is not UTF-8, a TSV line without exactly one
tab, aligned files of different lengths, and no pairs at all (an empty file or
slice), which `load_pairs` refuses before anything is trained on it.
"""

from __future__ import annotations

import io
import json
import os
from typing import Iterable, Sequence

import numpy as np

from fsl_jax.data.sources import DataError, read_text, text_lines

Pairs = list[tuple[str, str]]


def read_lines(path: str) -> list[str]:
  """The lines of a UTF-8 text file; DataError naming the file (and line) otherwise."""
  return text_lines(read_text(path))


def load_aligned(src_path: str, tgt_path: str) -> Pairs:
  src, tgt = read_lines(src_path), read_lines(tgt_path)
  if len(src) != len(tgt):
    raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: "
                    f"aligned files need one sentence per line on both sides.")
  pairs = [(s, t) for s, t in zip(src, tgt) if s.strip() and t.strip()]
  if not pairs:
    raise DataError(f"{src_path} and {tgt_path} hold no sentence pairs ("
                    + ("both are empty" if not src else "no line has text on both sides")
                    + "): point at the aligned files of the data set.")
  return pairs


def load_tsv(path: str) -> Pairs:
  pairs = []
  for i, line in enumerate(read_lines(path)):
    if not line.strip():
      continue
    parts = line.split("\t")
    if len(parts) != 2:
      raise DataError(f"{path}:{i + 1} has {len(parts)} tab-separated fields; expected "
                      f"'source<TAB>target'.")
    pairs.append((parts[0], parts[1]))
  if not pairs:
    raise DataError(f"{path} holds no 'source<TAB>target' lines (it has no text).")
  return pairs


def load_pairs(spec: str) -> Pairs:
  """`a.en,a.swa` (aligned files), `x.tsv`, or a prefix `dir/train` + `:en,swa`.

  A suffix `@start:stop` keeps that slice of the pairs (e.g. `...@0:1000`).
  No pairs at all (empty files, an empty slice) is a DataError: it is raised
  here, before any tokenizer is trained or model built on them.
  """
  if "@" in spec:
    spec, rng = spec.rsplit("@", 1)
    lo, colon, hi = rng.partition(":")
    try:
      start, stop = int(lo or 0), int(hi) if hi else None
    except ValueError:
      colon = ""
    if not colon:
      raise DataError(f"Bad slice @{rng} in {spec}@{rng}: expected @start:stop, e.g. @0:1000.")
    pairs = load_pairs(spec)
    kept = pairs[start:stop]
    if not kept:
      raise DataError(f"{spec}@{rng} selects no pairs: {spec} holds {len(pairs)} pairs.")
    return kept
  if spec.endswith(".tsv"):
    return load_tsv(spec)
  if ":" in spec and "," in spec.split(":")[-1]:
    prefix, exts = spec.rsplit(":", 1)
    a, b = exts.split(",", 1)
    return load_aligned(f"{prefix}.{a}", f"{prefix}.{b}")
  if "," in spec:
    a, b = spec.split(",", 1)
    return load_aligned(a, b)
  raise DataError(f"Cannot read pairs from {spec!r}: pass 'src_file,tgt_file', "
                  f"'prefix:en,swa' or a .tsv file.")


def write_tsv(path: str, pairs: Iterable[tuple[str, str]]) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for s, t in pairs:
      f.write(f"{s.replace(chr(9), ' ')}\t{t.replace(chr(9), ' ')}\n")
  os.replace(tmp, path)


def mix(real: Pairs, synthetic: Pairs, ratio: float, rng: np.random.Generator,
        tag: str | None = None) -> Pairs:
  """Real pairs plus `ratio * len(real)` synthetic ones (tag prefixed to their sources)."""
  n = min(len(synthetic), int(round(ratio * len(real))))
  idx = rng.permutation(len(synthetic))[:n]
  synth = [(f"{tag} {synthetic[i][0]}" if tag else synthetic[i][0], synthetic[i][1]) for i in idx]
  return list(real) + synth


def train_marian_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = 8000,
                           user_symbols: Sequence[str] = (), max_sentences: int = 200_000,
                           seed: int = 0) -> str:
  """Trains a joint unigram SentencePiece model; writes MarianTokenizer files."""
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  os.makedirs(out_dir, exist_ok=True)
  texts = [t for t in texts if t.strip()]
  if len(texts) > max_sentences:
    idx = np.random.default_rng(seed).permutation(len(texts))[:max_sentences]
    texts = [texts[i] for i in idx]
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
      model_type="unigram", character_coverage=1.0, unk_id=1, eos_id=0, bos_id=-1,
      pad_id=-1, user_defined_symbols=list(user_symbols), num_threads=2,
      minloglevel=2, input_sentence_size=max_sentences, shuffle_input_sentence=True,
      hard_vocab_limit=False)  # small corpora get a smaller vocabulary, not an error
  sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
  for name in ("source.spm", "target.spm"):
    with open(os.path.join(out_dir, name), "wb") as f:
      f.write(model.getvalue())
  vocab = {"</s>": 0, "<unk>": 1}
  for i in range(sp.get_piece_size()):
    piece = sp.id_to_piece(i)
    if piece not in vocab:
      vocab[piece] = len(vocab)
  vocab["<pad>"] = len(vocab)
  with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "MarianTokenizer", "model_max_length": 512,
               "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}, f)
  return out_dir


def _cut(ids, max_len: int) -> np.ndarray:
  ids = list(ids)
  return np.asarray(ids[:max_len - 1] + [ids[-1]] if len(ids) > max_len else ids, np.int32)


def encode_sources(tok, sources: Sequence[str], max_len: int) -> list[np.ndarray]:
  """Source token ids (special tokens added; truncated to max_len keeping the last)."""
  return [_cut(x, max_len) for x in tok(list(sources), add_special_tokens=True)["input_ids"]]


def encode_pairs(tok, pairs: Pairs, max_len: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Token ids (EOS appended, truncated to max_len keeping EOS) of sources and targets."""
  tgt = tok(text_target=[t for _, t in pairs], add_special_tokens=True)["input_ids"]
  return encode_sources(tok, [s for s, _ in pairs], max_len), [_cut(x, max_len) for x in tgt]


def pad_batch(seqs: Sequence[np.ndarray], pad_id: int, multiple: int = 16,
              max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """[B, L] ids and bool mask, L rounded up to `multiple` (fewer recompiles)."""
  n = max(len(s) for s in seqs)
  length = -(-n // multiple) * multiple
  if max_len is not None:
    length = min(length, max_len)
  ids = np.full((len(seqs), length), pad_id, np.int32)
  for i, s in enumerate(seqs):
    ids[i, :len(s)] = s[:length]
  return ids, ids != pad_id


class BatchSampler:
  """Random training batches, reproducible from (seed, step) for exact resume."""

  def __init__(self, src: list[np.ndarray], tgt: list[np.ndarray], batch_size: int,
               pad_id: int, seed: int = 0, max_len: int | None = None):
    if not src:
      raise ValueError("No training pairs.")
    self.src, self.tgt, self.bs, self.pad, self.seed = src, tgt, batch_size, pad_id, seed
    self.max_len = max_len
    self.per_epoch = max(1, len(src) // batch_size)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    epoch, i = divmod(step, self.per_epoch)
    perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.src))
    idx = perm[i * self.bs:(i + 1) * self.bs]
    if len(idx) < self.bs:
      idx = np.concatenate([idx, perm[:self.bs - len(idx)]])
    src_ids, _ = pad_batch([self.src[j] for j in idx], self.pad, max_len=self.max_len)
    labels, _ = pad_batch([self.tgt[j] for j in idx], self.pad, max_len=self.max_len)
    return {"src_ids": src_ids, "src_mask": src_ids != self.pad, "labels": labels,
            "label_mask": labels != self.pad}
