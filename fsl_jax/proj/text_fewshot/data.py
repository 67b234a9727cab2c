"""The text data sets of `experiments.text_fewshot`, by `data.name`, as named splits.

`load(data_cfg, oos_label)` returns `Splits`: {split name: TextClasses} and
whether the splits hold the SAME classes (split by examples: CLINC150's
train/val/test, a user's train/val/test files) or DISJOINT classes (split by
classes, as few-shot benchmarks cut HuffPost, Reuters and FewRel).

- clinc150: `data.path` a folder (data_{data.variant}.json) or one
  data_*.json; splits by examples. All 150 intents are in every split, so
  the episodic benchmark draws its novel classes from the test split's 150
  intents (a frozen encoder was trained on none of them). The `oos` rows are
  kept as a class when `oos_label` is 'oos'. `data.class_split=seeded`
  instead merges each intent's train, val and test rows (in that order; oos
  dropped) and splits the intents by `data.class_sizes` (as
  experiments/configs/protonet_text.py's clinc150 does: 50/50/50, seed 0).
- huffpost / reuters / hwu64 / liu54: the {raw, label} JSON lines (`data.path`
  the file, or the folder holding NAME.json), split by classes:
  `data.class_split` 'bao' (HuffPost, Reuters: Bao et al. 2020's lists,
  `fsl_jax.data.text.BAO_CLASS_SPLITS`), 'seeded' (`data.class_sizes`, e.g.
  'train=32,val=8,test=24', `data.class_seed`) or 'none' (every class in
  'test': a frozen encoder trains on none). Defaults: bao for HuffPost and
  Reuters, none for HWU64 and Liu54 (no published class split is encoded).
- fewrel: FewRel 1.0/2.0 JSON (`data.path` one file, e.g. val_wiki.json),
  entity markers as `fsl_jax.data.text.fewrel`. Split by classes, default
  'seeded' with FEWREL_SIZES (the sizes experiments/configs/protonet_text.py
  uses, so the frozen and the meta-trained rows share their 5 novel
  relations): the shared copy holds only val_wiki's 16 relations (not
  train_wiki's 64), so Bao's FewRel lists (indices into their own
  80-relation file) cannot apply.
- csv: a user's CSV / TSV / JSON lines with `data.text_column` and
  `data.label_column`: `data.train_file`, `data.val_file`, `data.test_file`
  become the splits train / val / test (split by examples); `data.path`
  alone is one 'test' split.
"""

from __future__ import annotations

import dataclasses
import os

from fsl_jax.data import text as text_lib
from fsl_jax.data.sources import DataError
from fsl_jax.registry import Registry

JSONL_SETS = ("huffpost", "reuters", "hwu64", "liu54")
CLASS_SPLITS = ("bao", "seeded", "none")
# val_wiki's 16 relations: 6 to train an encoder on (protonet), 5 to validate, 5 novel.
FEWREL_SIZES = {"train": 6, "val": 5, "test": 5}

DATASETS = Registry("text dataset")


@dataclasses.dataclass
class Splits:
  splits: dict[str, text_lib.TextClasses]
  by: str            # 'examples' (same classes in every split) or 'classes' (disjoint)
  class_split: str   # how the classes were split ('' when by examples)

  def get(self, split: str) -> text_lib.TextClasses:
    if split not in self.splits:
      raise DataError(f"No split {split!r} here; it has {', '.join(self.splits)} (pass "
                      f"--config.split=NAME).")
    return self.splits[split]


def parse_sizes(text: str) -> dict[str, int]:
  """'train=6,val=2,test=8' -> {'train': 6, 'val': 2, 'test': 8}."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, _, value = part.partition("=")
    try:
      out[name.strip()] = int(value)
    except ValueError:
      out = {}
      break
  if not out or any(v < 0 for v in out.values()):
    raise DataError(f"data.class_sizes={text!r}: write split sizes as 'train=6,val=2,test=8'.")
  return out


def _class_split(source: text_lib.TextClasses, data_cfg, name: str, default: str) -> Splits:
  how = data_cfg.class_split or default
  if how not in CLASS_SPLITS:
    raise DataError(f"data.class_split={how!r}: use one of {', '.join(CLASS_SPLITS)} (or '' "
                    "for the data set's default).")
  if how == "bao":
    return Splits(text_lib.bao_splits(source, name), "classes", "bao")
  if how == "seeded":
    if data_cfg.class_sizes:
      sizes = parse_sizes(data_cfg.class_sizes)
    elif name == "fewrel":
      sizes = FEWREL_SIZES
    else:
      raise DataError(f"data.class_split=seeded on {name} needs data.class_sizes, e.g. "
                      f"'train=...,val=...,test=...' summing to at most {source.num_classes}.")
    splits = text_lib.seeded_class_split(source, sizes, int(data_cfg.class_seed))
    return Splits(splits, "classes", f"seeded({data_cfg.class_seed}):"
                  + ",".join(f"{k}={v}" for k, v in sizes.items()))
  return Splits({"test": source}, "classes", "none")


@DATASETS.register("clinc150")
def _clinc150(data_cfg, oos_label: str) -> Splits:
  if oos_label not in ("", "oos"):
    raise DataError(f"oos_label={oos_label!r}: CLINC150's out-of-scope class is named 'oos' "
                    "(or '' to drop it).")
  if data_cfg.class_split not in ("", "seeded"):
    raise DataError(f"data.class_split={data_cfg.class_split!r}: CLINC150 takes '' (its "
                    "train/val/test rows) or 'seeded' (intents split by data.class_sizes).")
  seeded = data_cfg.class_split == "seeded"
  splits = text_lib.clinc150(data_cfg.path, oos=bool(oos_label) and not seeded,
                             variant=data_cfg.variant or "full")
  if not seeded:
    return Splits(splits, "examples", "")
  names = splits["train"].class_names
  merged = text_lib.TextClasses(names, [sum((s[n] for s in splits.values()), [])
                                        for n in names])
  return _class_split(merged, data_cfg, "clinc150", "seeded")


def _jsonl(name: str):
  def load(data_cfg, oos_label: str) -> Splits:
    del oos_label
    path = data_cfg.path
    if os.path.isdir(path):
      path = os.path.join(path, f"{name}.json")
    source = text_lib.jsonl_raw_label(path)[text_lib.ALL]
    return _class_split(source, data_cfg, name, "bao" if name in text_lib.BAO_CLASS_SPLITS
                        else "none")
  return load


for _name in JSONL_SETS:
  DATASETS.register(_name, _jsonl(_name))


@DATASETS.register("fewrel")
def _fewrel(data_cfg, oos_label: str) -> Splits:
  del oos_label
  files = text_lib.fewrel(data_cfg.path)
  if len(files) != 1:
    raise DataError(f"data.path={data_cfg.path} holds {len(files)} FewRel files "
                    f"({', '.join(files)}); pass one, e.g. .../fewrel/val_wiki.json.")
  if data_cfg.class_split == "bao":
    raise DataError("Bao et al.'s FewRel lists index their own processed 80-relation file, "
                    "not raw FewRel relations: use data.class_split=seeded (or none).")
  return _class_split(next(iter(files.values())), data_cfg, "fewrel", "seeded")


@DATASETS.register("csv")
def _csv(data_cfg, oos_label: str) -> Splits:
  del oos_label
  files = {"train": data_cfg.train_file, "val": data_cfg.val_file,
           "test": data_cfg.test_file or data_cfg.path}
  if not files["test"]:
    raise DataError("data.name=csv reads data.test_file (and data.train_file, data.val_file), "
                    "or one labelled file as data.path.")
  read = lambda path: text_lib.csv_text_label(path, data_cfg.text_column,
                                              data_cfg.label_column)[text_lib.ALL]
  splits = {split: read(path) for split, path in files.items() if path}
  return Splits(splits, "examples", "")


def load(data_cfg, oos_label: str = "") -> Splits:
  """The named splits of `data_cfg.name` (see the module docstring)."""
  return DATASETS.get(data_cfg.name)(data_cfg, oos_label)
