"""Parallel-text reading, mixing, and a SentencePiece model that loads through MarianTokenizer."""

import numpy as np
import pytest

from fsl_jax.proj.translation import data as td


def test_aligned_tsv_and_slices(tmp_path):
  (tmp_path / "a.en").write_text("one\ntwo\n\nfour\n")
  (tmp_path / "a.sw").write_text("moja\nmbili\ntatu\nnne\n")
  pairs = td.load_pairs(f"{tmp_path}/a:en,sw")
  assert pairs == [("one", "moja"), ("two", "mbili"), ("four", "nne")]  # blank side dropped
  assert td.load_pairs(f"{tmp_path}/a.en,{tmp_path}/a.sw@1:") == pairs[1:]
  td.write_tsv(str(tmp_path / "p.tsv"), pairs)
  assert td.load_pairs(str(tmp_path / "p.tsv")) == pairs
  (tmp_path / "b.sw").write_text("moja\n")
  with pytest.raises(ValueError, match="aligned files"):
    td.load_aligned(str(tmp_path / "a.en"), str(tmp_path / "b.sw"))
  (tmp_path / "bad.tsv").write_text("no tab here\n")
  with pytest.raises(ValueError, match="source<TAB>target"):
    td.load_tsv(str(tmp_path / "bad.tsv"))


def test_mix_ratio_and_tag():
  real = [(f"r{i}", f"t{i}") for i in range(10)]
  synth = [(f"s{i}", f"u{i}") for i in range(100)]
  mixed = td.mix(real, synth, 0.5, np.random.default_rng(0), tag="<BT>")
  assert len(mixed) == 15 and mixed[:10] == real
  assert all(s.startswith("<BT> s") for s, _ in mixed[10:])


def _check_marian_tokenizer(directory, sample_en, sample_sw):
  from transformers import MarianTokenizer  # pylint: disable=import-outside-toplevel
  tok = MarianTokenizer.from_pretrained(str(directory))
  vocab = tok.get_vocab()
  assert vocab["</s>"] == 0 and vocab["<unk>"] == 1 and vocab["<pad>"] == len(vocab) - 1
  assert tok.pad_token_id == len(vocab) - 1 and tok.eos_token_id == 0
  ids = tok(sample_en)["input_ids"]
  assert ids[-1] == 0 and tok.unk_token_id not in ids[:-1]
  assert tok.decode(ids, skip_special_tokens=True) == sample_en
  tgt = tok(text_target=sample_sw)["input_ids"]
  assert tok.decode(tgt, skip_special_tokens=True) == sample_sw
  batch = tok([sample_en, "a"], padding=True)
  assert batch["input_ids"][1][-1] == tok.pad_token_id
  return tok


def test_tokenizer_files_load_in_marian_tokenizer(tmp_path):
  pytest.importorskip("sentencepiece")
  texts = ["the cat sees the dog", "paka anaona mbwa", "a big red house near the river",
           "nyumba kubwa nyekundu karibu na mto"] * 50
  td.train_marian_tokenizer(texts, str(tmp_path), vocab_size=60)
  _check_marian_tokenizer(tmp_path, "the cat sees the dog", "paka anaona mbwa")


def test_tokenizer_on_shared_en_sw_text(shared_dir, tmp_path):
  pytest.importorskip("sentencepiece")
  root = shared_dir / "data" / "translation" / "en_sw_lafand"
  pairs = td.load_pairs(f"{root}/dev:en,swa")
  assert len(pairs) > 1500
  texts = [s for s, _ in pairs] + [t for _, t in pairs]
  td.train_marian_tokenizer(texts, str(tmp_path), vocab_size=2000)
  tok = _check_marian_tokenizer(tmp_path, "The video shares images of the protests.",
                                "Video inaonesha picha za waandamanaji.")
  assert 1900 <= len(tok.get_vocab()) <= 2002
  src, tgt = td.encode_pairs(tok, pairs[:64], max_len=24)
  assert max(len(x) for x in src + tgt) <= 24 and all(x[-1] == 0 for x in src)
