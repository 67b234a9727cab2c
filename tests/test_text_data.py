"""Text sources (fsl_jax.data.text): readers on generated files, tokenised episodes.

The last test reads the real shared copies (FSL_JAX_SHARED) and checks the
class and example counts counted by hand from the files.
"""

import json

import jax
import numpy as np
import pytest

from fsl_jax.data import text as text_lib
from fsl_jax.data.episodes import EpisodeSpec, episode_indices
from fsl_jax.data.sources import DataError


def char_ids(s):
  """A toy tokenizer: one id per character (its code point)."""
  return [ord(ch) for ch in s]


def decode(ids, mask):
  return "".join(chr(i) for i, m in zip(np.asarray(ids), np.asarray(mask)) if m)


def write(path, text):
  path.write_text(text, encoding="utf-8")
  return str(path)


def test_tokenize_pads_truncates_and_counts():
  src = text_lib.TextClasses.from_dict({"a": ["hi", "hello world"], "b": ["x"], "c": []})
  assert src.num_classes == 3 and len(src) == 3
  np.testing.assert_array_equal(src.counts, [2, 1, 0])
  tok = src.tokenize(char_ids, max_length=5)
  assert tok.ids.shape == (3, 2, 5) and tok.ids.dtype == np.int32 and tok.mask.dtype == np.int32
  assert tok.truncated == 1  # "hello world" cut to 5
  assert decode(tok.ids[0, 0], tok.mask[0, 0]) == "hi"
  assert decode(tok.ids[0, 1], tok.mask[0, 1]) == "hello"
  np.testing.assert_array_equal(tok.mask[1, 0], [1, 0, 0, 0, 0])
  np.testing.assert_array_equal(tok.mask[1, 1], 0)  # padding example of a 1-example class
  np.testing.assert_array_equal(tok.counts, [2, 1, 0])
  # L is the longest text when it is shorter than max_length, unless padded to it.
  assert src.tokenize(char_ids, 64).ids.shape == (3, 2, 11)
  assert src.tokenize(char_ids, 64, pad_to_max_length=True).ids.shape == (3, 2, 64)
  # pad_id and a batched tokenizer returning a mapping (as Hugging Face's do).
  batched = lambda texts: {"input_ids": [char_ids(t) for t in texts]}
  tok_b = src.tokenize(batched, 5, pad_id=-1, batched=True)
  np.testing.assert_array_equal(tok_b.mask, tok.mask)
  np.testing.assert_array_equal(np.where(tok.mask == 1, tok.ids, -1), tok_b.ids)
  with pytest.raises(DataError, match="no tokens"):
    text_lib.TextClasses.from_dict({"a": ["ok", "bad"]}).tokenize(
        lambda s: [] if s == "bad" else [1], 4)
  with pytest.raises(DataError, match="batched=True"):
    src.tokenize(lambda s: [[1, 2]], 4)


def test_text_episodes_reuse_episode_indices():
  texts = {f"class{c}": [f"{c}:{i}" + "." * (i % 4) for i in range(3 + c)] for c in range(6)}
  tok = text_lib.TextClasses.from_dict(texts).tokenize(char_ids, 16)
  spec = EpisodeSpec(ways=4, shots=2, queries=1)
  sampler = text_lib.TextEpisodeSampler(tok, spec)
  key = jax.random.key(3)
  ep = sampler.sample(key)
  # The draw of the image sampler: same key, same classes and examples.
  classes, idx = jax.jit(episode_indices, static_argnums=(2, 3))(
      key, tok.counts, tok.ids.shape[1], spec)
  np.testing.assert_array_equal(ep["classes"], classes)
  np.testing.assert_array_equal(ep["support_y"], [0, 0, 1, 1, 2, 2, 3, 3])
  np.testing.assert_array_equal(ep["query_y"], [0, 1, 2, 3])
  assert ep["support_ids"].shape == (8, tok.max_length) and ep["query_mask"].shape == (4, 6)
  names = tok.class_names
  for j, c in enumerate(np.asarray(classes)):
    drawn = [decode(ep["support_ids"][j * 2 + s], ep["support_mask"][j * 2 + s])
             for s in range(2)] + [decode(ep["query_ids"][j], ep["query_mask"][j])]
    assert drawn == [texts[names[c]][i] for i in np.asarray(idx[j])]
    assert len(set(drawn)) == 3  # distinct examples of the class
  again = sampler.sample(key)
  np.testing.assert_array_equal(again["query_ids"], ep["query_ids"])
  batch = sampler.sample_batch(jax.random.key(4), 3)
  assert batch["support_ids"].shape == (3, 8, 6) and batch["classes"].shape == (3, 4)
  third = sampler.sample(jax.random.split(jax.random.key(4), 3)[2])
  for name in ("support_ids", "support_mask", "query_ids", "classes"):
    np.testing.assert_array_equal(batch[name][2], third[name])
  with pytest.raises(DataError, match="7-way"):
    text_lib.TextEpisodeSampler(tok, EpisodeSpec(7, 2, 1))


def test_clinc150_oos_is_its_own_last_class(tmp_path):
  data = {s: [["wake me up", "alarm"], ["what is 2 plus 2", "calculator"],
              ["set an alarm", "alarm"]] for s in ("train", "val", "test")}
  data.update({f"oos_{s}": [["how tall is a giraffe", "oos"]] * n
               for s, n in (("train", 1), ("val", 2), ("test", 3))})
  folder = tmp_path / "clinc150"
  folder.mkdir()
  write(folder / "data_small.json", json.dumps(data))
  splits = text_lib.clinc150(str(folder), variant="small")
  assert set(splits) == {"train", "val", "test"}
  assert splits["test"].class_names == ["alarm", "calculator", "oos"]
  np.testing.assert_array_equal(splits["test"].counts, [2, 1, 3])
  assert splits["train"]["alarm"] == ["wake me up", "set an alarm"]
  no_oos = text_lib.clinc150(str(folder / "data_small.json"), oos=False)
  assert no_oos["val"].class_names == ["alarm", "calculator"]
  with pytest.raises(DataError, match="variant"):
    text_lib.clinc150(str(folder), variant="tiny")
  del data["oos_val"]
  bad = write(tmp_path / "bad.json", json.dumps(data))
  with pytest.raises(DataError, match="no 'oos_val' list"):
    text_lib.clinc150(bad)
  assert text_lib.clinc150(bad, oos=False)["val"].num_classes == 2


def test_jsonl_raw_label_and_bao_splits(tmp_path):
  rows = [{"raw": f"headline {i} of {c}", "label": c} for i in range(2) for c in range(40, -1, -1)]
  path = write(tmp_path / "huffpost.json", "\n".join(json.dumps(r) for r in rows) + "\n\n")
  src = text_lib.jsonl_raw_label(path)["all"]
  assert src.class_names == [str(c) for c in range(41)]  # numeric, not "0", "1", "10", ...
  assert src["7"] == ["headline 0 of 7", "headline 1 of 7"]
  splits = text_lib.bao_splits(src, "huffpost")
  assert [splits[s].num_classes for s in ("train", "val", "test")] == [20, 5, 16]
  assert splits["val"].class_names == ["20", "21", "22", "23", "24"]
  assert splits["test"].class_names[-1] == "40"
  with pytest.raises(DataError, match="31 classes, the source has 41"):
    text_lib.bao_splits(src, "reuters")
  with pytest.raises(DataError, match="seeded_class_split"):
    text_lib.bao_splits(src, "hwu64")
  assert sum(len(v) for v in text_lib.BAO_CLASS_SPLITS["fewrel"].values()) == 80
  assert text_lib.BAO_SPLIT_SIZES["fewrel"] == {"train": 65, "val": 5, "test": 10}
  broken = write(tmp_path / "broken.json", json.dumps(rows[0]) + "\n\n{\"raw\": \"x\"\n")
  with pytest.raises(DataError, match=r"broken.json:3 is not valid JSON"):
    text_lib.jsonl_raw_label(broken)


def test_fewrel_marks_head_and_tail(tmp_path):
  inst = {"tokens": ["The", "Cape", "Girardeau", " ", "Bridge", "crosses", "the", "Mississippi",
                     "."],
          "h": ["cape girardeau bridge", "Q1", [[1, 2, 3, 4]]],
          "t": ["mississippi", "Q2", [[7]]]}
  tail_first = {"tokens": ["Ohio", "flows", "into", "Mississippi"],
                "h": ["mississippi", "Q2", [[3]]], "t": ["ohio", "Q3", [[0]], ]}
  both = {"tokens": ["Paris", "is", "Paris"], "h": ["p", "Q4", [[0], [2]]],
          "t": ["p", "Q4", [[2]]]}
  folder = tmp_path / "fewrel"
  folder.mkdir()
  write(folder / "val_wiki.json", json.dumps({"P177": [inst, tail_first], "P17": [both]}))
  write(folder / "pid2name.json", json.dumps({"P177": ["crosses", "..."]}))
  splits = text_lib.fewrel(str(folder))
  assert list(splits) == ["val_wiki"]
  src = splits["val_wiki"]
  assert src.class_names == ["P17", "P177"]
  assert src["P177"] == [
      "The [E1] Cape Girardeau Bridge [/E1] crosses the [E2] Mississippi [/E2] .",
      "[E2] Ohio [/E2] flows into [E1] Mississippi [/E1]"]
  assert src["P17"] == ["[E1] Paris [/E1] is [E1] [E2] Paris [/E2] [/E1]"]
  plain = text_lib.fewrel(str(folder / "val_wiki.json"), markers=None)["val_wiki"]
  assert plain["P177"][0] == "The Cape Girardeau Bridge crosses the Mississippi ."
  inst["h"][2] = [[12]]
  write(folder / "val_wiki.json", json.dumps({"P177": [tail_first, inst]}))
  with pytest.raises(DataError, match=r"P177\[1\]"):
    text_lib.fewrel(str(folder))


def test_csv_text_label_columns_lines_and_splits(tmp_path):
  csv_path = write(tmp_path / "tickets.csv",
                   'id,message,intent,fold\n'
                   '1,"reset my pin, please",pin,train\n'
                   '2,"card\nstolen",lost_card,train\n'
                   '\n'
                   '3,where is my card,lost_card,test\n')
  splits = text_lib.csv_text_label(csv_path, "message", "intent", split_column="fold")
  assert splits["train"].as_dict() == {"lost_card": ["card\nstolen"],
                                       "pin": ["reset my pin, please"]}
  assert splits["test"].class_names == ["lost_card"]
  with pytest.raises(DataError, match="no column 'label'; its columns are 'id', 'message', "
                     "'intent', 'fold'"):
    text_lib.csv_text_label(csv_path, "message", "label")
  bad = write(tmp_path / "bad.csv", "text,label\nok,a\nalso ok,b\n  ,a\n")
  with pytest.raises(DataError, match=r"bad.csv:4: 'text' must be a non-empty string"):
    text_lib.csv_text_label(bad, "text", "label")
  short = write(tmp_path / "short.tsv", "text\tlabel\nok\ta\nmissing label\n")
  with pytest.raises(DataError, match=r"short.tsv:3 has 1 fields"):
    text_lib.csv_text_label(short, "text", "label")
  # JSON lines, pre-tokenised text (a list of tokens, as Bao et al.'s files) joined by spaces.
  jl = write(tmp_path / "bao.jsonl", '{"text": ["a", "b"], "label": 1}\n'
             '{"text": "c d", "label": 0}\n{"label": 2}\n')
  with pytest.raises(DataError, match=r"bao.jsonl:3 has no column 'text'; its columns are "
                     "'label'"):
    text_lib.csv_text_label(jl, "text", "label")
  write(tmp_path / "bao.jsonl", '{"text": ["a", "b"], "label": 1}\n{"text": "c d", "label": 0}\n')
  assert text_lib.csv_text_label(jl, "text", "label")["all"].as_dict() == {
      "0": ["c d"], "1": ["a b"]}
  with pytest.raises(DataError, match="holds no examples"):
    text_lib.csv_text_label(write(tmp_path / "empty.csv", "text,label\n"), "text", "label")


def test_seeded_class_split_and_merge():
  src = text_lib.TextClasses.from_dict({f"P{c}": [f"s{c}"] for c in range(12)})
  reordered = text_lib.TextClasses.from_dict({f"P{c}": [f"s{c}"] for c in reversed(range(12))})
  sizes = {"train": 7, "val": 2, "test": 3}
  a = text_lib.seeded_class_split(src, sizes, seed=1)
  b = text_lib.seeded_class_split(reordered, sizes, seed=1)
  assert {k: v.class_names for k, v in a.items()} == {k: v.class_names for k, v in b.items()}
  assert [a[s].num_classes for s in sizes] == [7, 2, 3]
  assert sorted(sum((v.class_names for v in a.values()), [])) == sorted(src.class_names)
  c = text_lib.seeded_class_split(src, sizes, seed=2)
  assert c["test"].class_names != a["test"].class_names
  with pytest.raises(DataError, match="need 13 classes"):
    text_lib.seeded_class_split(src, {"train": 13})
  merged = text_lib.merge_classes([src.subset(["P0", "P1"]), src.subset(["P2"])])
  assert merged.class_names == ["P0", "P1", "P2"]
  with pytest.raises(DataError, match="more than one source"):
    text_lib.merge_classes([src, src.subset(["P3"])])
  with pytest.raises(DataError, match="both split"):
    text_lib.split_classes(src, {"train": ["P0", "P1"], "test": ["P1"]})


def test_shared_text_datasets(shared_dir):
  """Counts checked by hand on the shared copies (json.load + collections.Counter)."""
  root = shared_dir / "data" / "text"
  clinc = text_lib.clinc150(str(root / "clinc150"))
  # data_full: 150 intents x 100 / 20 / 30, plus oos 100 / 100 / 1,000.
  for split, per_intent, n_oos in (("train", 100, 100), ("val", 20, 100), ("test", 30, 1000)):
    src = clinc[split]
    assert src.num_classes == 151 and src.class_names[-1] == "oos"
    assert set(src.counts[:150].tolist()) == {per_intent} and src.counts[150] == n_oos
    assert len(src) == 150 * per_intent + n_oos
  assert text_lib.clinc150(str(root / "clinc150"), oos=False)["test"].num_classes == 150
  folder = root / "huffpost_reuters_hwu64_liu54"
  counts = {}
  for name in ("huffpost", "reuters", "hwu64", "liu54"):
    src = text_lib.jsonl_raw_label(str(folder / f"{name}.json"))["all"]
    counts[name] = (src.num_classes, len(src), int(src.counts.min()), int(src.counts.max()))
  assert counts == {"huffpost": (41, 36900, 900, 900), "reuters": (31, 620, 20, 20),
                    "hwu64": (64, 11036, 38, 194), "liu54": (54, 25478, 24, 5920)}
  huff = text_lib.bao_splits(text_lib.jsonl_raw_label(str(folder / "huffpost.json"))["all"],
                             "huffpost")
  assert {k: len(v) for k, v in huff.items()} == {"train": 18000, "val": 4500, "test": 14400}
  rel = text_lib.fewrel(str(root / "fewrel"))
  assert {k: (v.num_classes, len(v)) for k, v in rel.items()} == {
      "val_wiki": (16, 11200), "val_pubmed": (10, 1000)}
  assert all("[E1]" in t and "[E2]" in t for t in rel["val_wiki"]["P177"])
  tok = huff["val"].tokenize(lambda s: [len(w) for w in s.split()], 24)
  ep = text_lib.TextEpisodeSampler(tok, EpisodeSpec(5, 5, 10)).sample(jax.random.key(0))
  assert ep["query_ids"].shape == (50, tok.max_length)
