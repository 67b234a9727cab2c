"""Bad input: one `error: ...` line naming the file (and line) and the fix, exit code 2.

Each case is checked in the library (the DataError's message) and through the
binary that reads it (a subprocess: exit code 2, one `error:` line, no
traceback). The subprocesses fail while loading data, before any compile,
except `test_bring_your_own_images_end_to_end`, which runs the command BUILD.md
documents for your own images and then reuses its workdir.
"""

import io
import json
import logging
import os
import pathlib
import re
import subprocess
import sys
import zipfile

import ml_collections
import numpy as np
from PIL import Image
import pytest

from fsl_jax.data import folders, lake_runs, registry
from fsl_jax.data.sources import DataError, as_float
from fsl_jax.proj.dialogue import data as dialogue
from fsl_jax.proj.translation import data as td

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTONET = "experiments/configs/protonet_omniglot.py:runlocal"
NOT_UTF8 = "caf\xe9".encode("latin-1")  # 0xe9 starts a 3-byte UTF-8 sequence; 'f' is no continuation


def run(module, *args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)


def error_line(proc, *fragments) -> str:
  """The one `error:` line of a run that exited 2; it contains every fragment."""
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, proc.stderr[-3000:]
  for fragment in fragments:
    assert str(fragment) in errors[0], (fragment, errors[0])
  return errors[0]


def png_bytes(img_HxW: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img_HxW).save(buf, "PNG")
  return buf.getvalue()


def write_classes(root: pathlib.Path, class_dirs, per_class=6, size=28, seed=0):
  """`root/<class_dir>/NN.png`: random 8-bit grayscale PNGs."""
  rng = np.random.default_rng(seed)
  for c in class_dirs:
    (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
      (root / c / f"{i:02d}.png").write_bytes(
          png_bytes(rng.integers(0, 256, (size, size), dtype=np.uint8)))


# ------------------------------------------------------------ 1. unreadable images

def test_unreadable_image_is_named_or_skipped(tmp_path, caplog):
  write_classes(tmp_path, ["cat", "dog", "emu"], per_class=3)
  good = (tmp_path / "cat" / "00.png").read_bytes()
  (tmp_path / "cat" / "01.png").write_bytes(good[:len(good) // 2])  # truncated
  (tmp_path / "dog" / "02.jpg").write_bytes(b"not an image at all")
  (tmp_path / "emu" / "._00.png").write_bytes(b"macOS metadata")  # hidden: not data

  with pytest.raises(DataError) as err:
    folders.load_image_folder(str(tmp_path), image_size=28)
  msg = str(err.value)
  assert str(tmp_path / "cat" / "01.png") in msg and "truncated" in msg
  assert "--config.data.skip_bad_images=True" in msg and "\n" not in msg

  with caplog.at_level(logging.WARNING):
    src = folders.load_image_folder(str(tmp_path), image_size=28, skip_bad_images=True)
  assert src.class_names == ["cat", "dog", "emu"] and list(src.counts) == [2, 3, 3]
  warned = [r.getMessage() for r in caplog.records if "skip_bad_images" in r.getMessage()]
  assert len(warned) == 2 and all("\n" not in w for w in warned)
  assert "image 1: " in warned[0] and str(tmp_path / "cat" / "01.png") in warned[0]
  assert "image 2: " in warned[1] and "02.jpg" in warned[1]

  # The same from a .zip, through the registry and config.data.skip_bad_images.
  zip_path = tmp_path / "split.zip"
  with zipfile.ZipFile(zip_path, "w") as zf:
    for p in sorted(tmp_path.rglob("*.*g")):
      zf.write(p, p.relative_to(tmp_path).as_posix())
  data = ml_collections.ConfigDict({"name": "image_folder", "train_dir": str(zip_path),
                                    "image_size": 28, "skip_bad_images": False})
  with pytest.raises(DataError, match=f"cat/01.png in {zip_path} does not decode"):
    registry.load_split(data, "train")
  data.skip_bad_images = True
  assert list(registry.load_split(data, "train").counts) == [2, 3, 3]

  # Omniglot layout: the file is named the same way; a whole split unreadable says so.
  omni = tmp_path / "omni"
  write_classes(omni, ["Latin/character01"], per_class=2)
  (omni / "Latin" / "character01" / "01.png").write_bytes(b"")
  with pytest.raises(DataError, match="01.png does not decode"):
    folders.load_omniglot_folder(str(omni))
  assert len(folders.load_omniglot_folder(str(omni), skip_bad_images=True)) == 1
  (omni / "Latin" / "character01" / "00.png").write_bytes(b"")
  with pytest.raises(DataError, match=r"No images in .*omni \(2 unreadable images skipped\)"):
    folders.load_omniglot_folder(str(omni), skip_bad_images=True)


def test_meta_train_names_an_unreadable_image(tmp_path):
  write_classes(tmp_path / "train", [f"c{i}" for i in range(6)])
  bad = tmp_path / "train" / "c3" / "04.png"
  bad.write_bytes(bad.read_bytes()[:100])
  proc = run("experiments.meta_train", f"--config={PROTONET}", f"--workdir={tmp_path / 'wd'}",
             "--config.data.name=image_folder", f"--config.data.train_dir={tmp_path / 'train'}")
  error_line(proc, bad, "does not decode", "skip_bad_images=True")


# ------------------------------------------------------------------ 2. 16-bit images

def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
  levels = np.array([0, 20000, 40000, 65535], np.uint16)
  img16 = np.repeat(levels, 7)[None].repeat(28, 0)  # [28, 28] of 4 vertical bands
  data = png_bytes(img16)
  assert Image.open(io.BytesIO(data)).mode == "I;16"
  gray = folders.decode_image(data, "x.png", grayscale=True)[0, ::7, 0]
  np.testing.assert_allclose(gray, levels / 65535, atol=1e-6)  # convert("L") gave 0, 1, 1, 1
  rgb = folders.decode_image(data, "x.png")
  assert rgb.shape == (28, 28, 3) and np.allclose(rgb[..., 0], rgb[..., 2])
  # Omniglot strokes: a white (65535) background, strokes at 0 and a grey level.
  strokes = folders.read_png_strokes(data)[0, ::7]
  np.testing.assert_allclose(strokes, 1 - levels / 65535, atol=1e-6)

  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  (tmp_path / "a" / "x.png").write_bytes(data)
  (tmp_path / "b" / "y.png").write_bytes(png_bytes((img16 // 257).astype(np.uint8)))
  src = folders.load_image_folder(str(tmp_path), image_size=28, grayscale=True)
  assert src.images.dtype == np.uint8
  a, b = as_float(src.images[0, 0]), as_float(src.images[1, 0])
  np.testing.assert_allclose(a, b, atol=1.01 / 255)  # each rounded to uint8
  assert 0.45 < a.mean() < 0.55  # clipped it was 0.75


# ------------------------------------------------------------ 3. nested class folders

def test_nested_class_folders_are_named_by_relative_path(tmp_path):
  write_classes(tmp_path, ["Latin/character01", "Latin/character02",
                           "Greek/character01", "Greek/character02"], per_class=2)
  src = folders.load_image_folder(str(tmp_path), image_size=28, grayscale=True)
  assert src.class_names == ["Greek/character01", "Greek/character02",
                             "Latin/character01", "Latin/character02"]
  assert list(src.counts) == [2, 2, 2, 2]  # not 2 classes of 4 merged by leaf name
  omni = folders.load_omniglot_folder(str(tmp_path))
  assert omni.class_names == src.class_names and omni.groups == ["Greek"] * 2 + ["Latin"] * 2

  write_classes(tmp_path, ["Latin"], per_class=1)  # Latin/00.png beside Latin/character01/
  with pytest.raises(DataError, match="Latin holds images and also the class folder "
                                      "Latin/character01"):
    folders.load_image_folder(str(tmp_path), image_size=28)
  write_classes(tmp_path / "other", [""], per_class=1)
  with pytest.raises(DataError, match=r"00.png is directly in .*other, outside any class folder"):
    folders.load_image_folder(str(tmp_path / "other"), image_size=28)


# ------------------------------------------------------------------- 4. Lake runs

def _lake_runs(tmp_path) -> pathlib.Path:
  rng = np.random.default_rng(0)
  images_CxDxHxW = (rng.random((4, 2, 28, 28)) < 0.2).astype(np.float32)
  runs = tmp_path / "runs"
  lake_runs.write_runs(str(runs), images_CxDxHxW, ["Latin"] * 4, num_runs=1, ways=4)
  return runs


def test_lake_labels_errors_name_file_and_line(tmp_path):
  runs = _lake_runs(tmp_path)
  assert len(lake_runs.read_runs(str(runs))[0].test_y) == 4
  labels = runs / "run01" / "class_labels.txt"
  lines = labels.read_text().splitlines()

  labels.write_text("\n".join(lines[:2] + ["", lines[2] + " extra"] + lines[3:]) + "\n")
  with pytest.raises(DataError, match=f"{labels}:4 has 3 fields"):
    lake_runs.read_runs(str(runs))
  labels.write_text("\n".join(lines[:3] + ["run01/test/item04.png run01/training/class09.png"]))
  with pytest.raises(DataError, match=f"{labels}:4: run01/training/class09.png is not an image"):
    lake_runs.read_runs(str(runs))
  labels.write_text("\n".join(lines[:1] + ["run01/test/item99.png run01/training/class01.png"]))
  with pytest.raises(DataError, match=f"{labels}:2: run01/test/item99.png is not a file"):
    lake_runs.read_runs(str(runs))
  labels.write_bytes(lines[0].encode() + b"\n" + NOT_UTF8 + b"\n")
  with pytest.raises(DataError, match=f"{labels}:2 is not UTF-8"):
    lake_runs.read_runs(str(runs))
  labels.write_text("\n".join(lines) + "\n")
  (runs / "run01" / "test" / "item02.png").write_bytes(b"\x89PNG")
  with pytest.raises(DataError, match="item02.png does not decode .*make_lake_runs"):
    lake_runs.read_runs(str(runs))


# --------------------------------------------------- 5. dialogue and translation text

def test_text_files_name_file_and_line(tmp_path):
  en, sw = tmp_path / "p.en", tmp_path / "p.sw"
  en.write_bytes(b"one\ntwo\n" + NOT_UTF8 + b"\n")
  sw.write_text("moja\nmbili\ntatu\n")
  with pytest.raises(DataError, match=f"{en}:3 is not UTF-8 text"):
    td.load_pairs(f"{tmp_path}/p:en,sw")
  tsv = tmp_path / "p.tsv"
  tsv.write_text("a\tb\n\nc d\n")
  with pytest.raises(DataError, match=f"{tsv}:3 has 1 tab-separated fields"):
    td.load_pairs(str(tsv))

  jsonl = tmp_path / "d.jsonl"
  good = json.dumps({"context": ["hi", "hello", "a cab"], "response": "Booked."})
  for line, want in [("{not json", "is not valid JSON"),
                     (json.dumps({"context": "hi", "response": 3}), "'response' must be a string"),
                     (json.dumps({"context": ["hi", None], "response": "ok"}), "'context' must be"),
                     (json.dumps(["hi", "ok"]), "'context' and 'response' keys")]:
    jsonl.write_text(f"{good}\n\n{good}\n{line}\n{good}\n")  # line 2 is blank: still counted
    with pytest.raises(DataError, match=f"{jsonl}:4[: ].*{re.escape(want)}"):
      dialogue.read(str(jsonl))
  jsonl.write_bytes(good.encode() + b"\n" + NOT_UTF8 + b"\n")
  with pytest.raises(DataError, match=f"{jsonl}:2 is not UTF-8"):
    dialogue.read(str(jsonl))
  jsonl.write_text("\n\n")
  with pytest.raises(DataError, match=f"{jsonl} is empty"):
    dialogue.read(str(jsonl))

  sgd = tmp_path / "dialogues_001.json"
  sgd.write_text('[\n  {"dialogue_id": "1",\n   "turns": [}\n]\n')
  with pytest.raises(DataError, match=f"{sgd}:3 is not valid JSON"):
    dialogue.read(str(tmp_path))
  sgd.write_text(json.dumps([{"dialogue_id": "7", "turns": [{"speaker": "USER"}]}]))
  with pytest.raises(DataError, match=r"dialogue 0 \(7\), turn 0: each turn needs string"):
    dialogue.read(str(sgd))
  sgd.write_text("")
  with pytest.raises(DataError, match=f"{sgd} is empty"):
    dialogue.read(str(sgd))


def test_back_translate_and_prompt_tune_name_the_line(tmp_path):
  mono = tmp_path / "mono.sw"
  mono.write_bytes(b"moja\nmbili\n" + NOT_UTF8 + b"\n")
  proc = run("experiments.back_translate", f"--model={tmp_path / 'no_model'}", f"--input={mono}",
             f"--output={tmp_path / 'out.tsv'}")
  error_line(proc, f"{mono}:3 is not UTF-8 text")
  assert not (tmp_path / "out.tsv").exists()

  transformers = pytest.importorskip("transformers")
  vocab = {chr(c): c - 32 for c in range(33, 127)}
  vocab["<|endoftext|>"] = len(vocab)
  transformers.GPT2TokenizerFast(vocab=vocab, merges=[], unk_token="<|endoftext|>",
                                 eos_token="<|endoftext|>").save_pretrained(tmp_path / "tok")
  jsonl = tmp_path / "d.jsonl"
  good = json.dumps({"context": "a cab", "response": "Booked."})
  jsonl.write_text(f"{good}\n\n{good}\n{json.dumps({'context': 'hi', 'response': None})}\n")
  proc = run("experiments.prompt_tune",
             "--config=experiments/configs/prompt_tune_dialogue.py:runlocal",
             f"--workdir={tmp_path / 'wd'}", f"--config.data={jsonl}",
             f"--config.tokenizer={tmp_path / 'tok'}")
  error_line(proc, f"{jsonl}:4: 'response' must be a string")


# ------------------------------------------------- 6. empty translation data

def test_empty_translation_data_is_refused(tmp_path):
  (tmp_path / "e.en").write_text("")
  (tmp_path / "e.sw").write_text("")
  with pytest.raises(DataError, match="e.en and .*e.sw hold no sentence pairs \\(both are empty"):
    td.load_pairs(f"{tmp_path}/e:en,sw")
  (tmp_path / "p.en").write_text("one\ntwo\n")
  (tmp_path / "p.sw").write_text("moja\nmbili\n")
  with pytest.raises(DataError, match="p:en,sw@5: selects no pairs: .* holds 2 pairs"):
    td.load_pairs(f"{tmp_path}/p:en,sw@5:")
  with pytest.raises(DataError, match="Bad slice @x:2"):
    td.load_pairs(f"{tmp_path}/p:en,sw@x:2")
  (tmp_path / "e.tsv").write_text("\n")
  with pytest.raises(DataError, match="e.tsv holds no 'source<TAB>target' lines"):
    td.load_pairs(str(tmp_path / "e.tsv"))
  with pytest.raises(DataError, match="Cannot read .*missing.en"):
    td.load_pairs(f"{tmp_path}/missing:en,sw")


def test_adapter_tune_refuses_an_empty_test_set_before_training(tmp_path):
  (tmp_path / "p.en").write_text("the cat\nthe dog\n")
  (tmp_path / "p.sw").write_text("paka\nmbwa\n")
  (tmp_path / "t.en").write_text("\n")
  (tmp_path / "t.sw").write_text("\n")
  wd = tmp_path / "wd"
  proc = run("experiments.adapter_tune", "--config=experiments/configs/adapter_mt_en_sw.py:runlocal",
             f"--workdir={wd}", f"--config.train={tmp_path}/p:en,sw",
             f"--config.test={tmp_path}/t:en,sw")
  error_line(proc, f"{tmp_path}/t.en and {tmp_path}/t.sw hold no sentence pairs")
  assert not (wd / "tokenizer").exists()  # refused before the tokenizer was trained


# ----------------------------------------------- 7. bring your own images (BUILD.md)

def test_config_has_the_folder_keys():
  from experiments.configs import protonet_omniglot  # pylint: disable=import-outside-toplevel
  data = protonet_omniglot.get_config("runlocal").data
  assert {k: data[k] for k in ("train_dir", "val_dir", "test_dir", "grayscale",
                               "skip_bad_images")} == {
      "train_dir": "", "val_dir": "", "test_dir": "", "grayscale": False,
      "skip_bad_images": False}
  data.name = "image_folder"
  with pytest.raises(DataError, match="Set --config.data.val_dir .*val_split=''"):
    registry.load_split(data, "val")
  with pytest.raises(DataError, match="splits train, val and test .* not 'trainval'"):
    registry.load_split(data, "trainval")


def test_bring_your_own_images_end_to_end(tmp_path):
  # Nested classes whose leaf names repeat (8 classes, not 4), one split with
  # 16-bit PNGs; the exact command of BUILD.md's paragraph on your own data.
  classes = [f"{a}/character{c:02d}" for a in ("Greek", "Latin") for c in range(1, 5)]
  for split, seed in (("train", 0), ("val", 1), ("test", 2)):
    write_classes(tmp_path / split, classes, seed=seed)
  for p in (tmp_path / "test").rglob("*.png"):
    img = np.asarray(Image.open(p), np.uint16) * 257
    p.write_bytes(png_bytes(img))
  wd = tmp_path / "wd"
  proc = run("experiments.meta_train", f"--config={PROTONET}", f"--workdir={wd}",
             "--config.data.name=image_folder",
             f"--config.data.train_dir={tmp_path / 'train'}",
             f"--config.data.val_dir={tmp_path / 'val'}",
             f"--config.data.test_dir={tmp_path / 'test'}",
             "--config.data.rotations=False", "--config.eval.queries=5")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (result["split"], result["ways"], result["shots"]) == ("test", 5, 1)
  assert 0.0 <= result["accuracy"] <= 1.0
  assert "image_folder/train: 8 classes" in proc.stderr

  # Lake runs evaluated with this workdir: a malformed line is named.
  runs = _lake_runs(tmp_path)
  labels = runs / "run01" / "class_labels.txt"
  labels.write_text("run01/test/item01.png\n" + labels.read_text())
  proc = run("experiments.omniglot_one_shot", f"--workdir={wd}", f"--runs_dir={runs}")
  error_line(proc, f"{labels}:1 has 1 fields", "expected 'run01/test/itemNN.png")


def test_image_folder_resize_matches_the_jax_resize(tmp_path):
  from fsl_jax.data.sources import resize  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  rgb_HxWx3 = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
  (tmp_path / "a").mkdir()
  Image.fromarray(rgb_HxWx3).save(tmp_path / "a" / "x.png")
  src = folders.load_image_folder(str(tmp_path), image_size=28)
  want = resize(rgb_HxWx3[None].astype(np.float32) / 255, 28)[0]
  # uint8 out of Pillow's uint8 resize: rounding, and Pillow's fixed-point
  # weights, within one level (tests/test_image_loading.py measures more).
  np.testing.assert_allclose(as_float(src.images[0, 0]), want, atol=1.01 / 255)
