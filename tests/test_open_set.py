"""experiments.open_set and fsl_jax.proj.image_open_set: the split, the run on generated
person folders (a random-weight Conv4 tells their colours apart), the refusals, and the
real LFW crops with EfficientNet-Lite0 and dlib (FSL_JAX_SHARED; dlib when installed)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from experiments.configs import open_set_faces
from fsl_jax import openset
from fsl_jax.models import efficientnet
from fsl_jax.data.sources import DataError
from fsl_jax.proj import image_open_set

ROOT = pathlib.Path(__file__).resolve().parents[1]
KEYS = {"known_people", "unknown_people", "enroll", "known_accuracy", "dir_at_far1", "auroc",
        "model", "threshold", "far_measured", "seconds"}


def make_people(root, eligible=8, per_person=12, strangers=3, size=24, seed=0, family=(),
                look_alikes=None):
  """person_XX/NN.png: each person a random 8x8 colour pattern of its own (an identity),
  each image that pattern plus noise; the first `eligible` people have `per_person`
  images, the strangers 1-2 each. The people named in `family` share half their pattern
  (they resemble each other more than anyone else); `look_alikes` {person: other} gives
  a person the other's pattern."""
  rng = np.random.default_rng(seed)
  block = lambda: np.kron(rng.uniform(0.1, 0.9, size=(8, 8, 3)),
                          np.ones((size // 8, size // 8, 1)))
  base = block()
  names = [f"person_{p:02d}" for p in range(eligible + strangers)]
  patterns = {n: (base + block()) / 2 if n in family else block() for n in names}
  for p, name in enumerate(names):
    pattern = patterns[(look_alikes or {}).get(name, name)]
    folder = pathlib.Path(root) / name
    folder.mkdir(parents=True)
    for i in range(per_person if p < eligible else 1 + p % 2):
      img = pattern + 0.05 * rng.normal(size=pattern.shape)
      Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
  return root


def known_people(eligible=8, per_person=12, strangers=3, **overrides):
  """The known people `make_people`'s folder gets (the split depends on names and counts)."""
  counts = {f"person_{p:02d}": per_person if p < eligible else 1 + p % 2
            for p in range(eligible + strangers)}
  return image_open_set.split_people(counts, config("x", **overrides)).known


def config(root, **overrides):
  c = open_set_faces.get_config()
  c.data.root = str(root)
  c.model, c.weights, c.image_size = "conv4", "random", 24
  c.enroll = 3
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    node[leaf] = value
  return c


@pytest.fixture(scope="module")
def people(tmp_path_factory):
  """8 people (4 known) and 3 strangers; the known resemble each other more than they
  resemble the unknown, so impostors among the known set a threshold that rejects the
  unknown (with few people the threshold is otherwise a noisy maximum)."""
  return make_people(tmp_path_factory.mktemp("people"), family=known_people())


def test_split_is_seeded_disjoint_and_nested():
  counts = {f"p{i:02d}": 10 + i for i in range(20)} | {"s1": 1, "s2": 3}
  c = config("x")
  a, b = image_open_set.split_people(counts, c), image_open_set.split_people(counts, c)
  assert a == b and len(a.known) == len(a.unknown) == 10 and a.strangers == ("s1", "s2")
  assert not set(a.known) & set(a.unknown)
  assert image_open_set.split_people(counts, config("x", seed=1)) != a
  start = {p: 100 * i for i, p in enumerate(sorted(counts))}
  images_of = {p: start[p] + np.arange(counts[p]) for p in counts}
  roles = image_open_set.assign_images(a, images_of, c)
  all_idx = np.concatenate(list(roles.values()))
  assert len(all_idx) == len(set(all_idx)) == sum(counts[p] for p in a.known)
  assert len(roles["enroll"]) == 3 * len(a.known)
  for p in a.known:  # each known person: >= 1 calibration and >= 1 test image
    mine = lambda role: int(np.isin(roles[role], images_of[p]).sum())
    assert mine("enroll") == 3 and mine("calibration") >= 1 and mine("known_probes") >= 1
  # Enrolling 2 picks the first 2 of the images enrolling 3 picks; one person's draw does
  # not depend on the others in the folder.
  two = image_open_set.assign_images(a, images_of, config("x", enroll=2))
  assert set(two["enroll"]) < set(roles["enroll"])
  alone = image_open_set.People(a.known[:2], a.unknown, ())
  one = image_open_set.assign_images(alone, images_of, c)
  np.testing.assert_array_equal(one["enroll"], roles["enroll"][:6])
  strangers = image_open_set.assign_images(a, images_of, config("x", calibration="strangers"))
  assert len(strangers["calibration"]) == 0
  assert len(strangers["known_probes"]) == len(roles["known_probes"]) + len(
      roles["calibration"])


def test_separable_people_are_recognised_and_unknowns_rejected(people, tmp_path):
  wd = tmp_path / "wd"
  # Uncentred: centring on the enrolled mean would take out what the known share.
  res = image_open_set.run(config(people, center="none"), str(wd))
  assert KEYS <= set(res)
  assert (res["known_people"], res["unknown_people"], res["enroll"]) == (4, 4, 3)
  assert (res["known_probes"], res["unknown_probes"]) == (4 * 9 - res["calibration_probes"],
                                                          4 * 12)
  assert res["known_accuracy"] == 1.0 and res["dir_at_far1"] == 1.0
  assert res["far_measured"] == 0.0 and res["auroc"] == 1.0
  assert res["embedded_now"] == 8 * 12 and res["dropped_images"] == 0
  # The gallery persists: the enrolled embeddings of the known people, with the threshold.
  g = openset.Gallery.load(str(wd / "gallery.npz"))
  assert len(g) == 4 * 3 and sorted(g.classes) == sorted(known_people())
  meta = json.loads((wd / "gallery.json").read_text())
  assert meta["threshold"] == pytest.approx(res["threshold"], abs=1e-6)
  assert meta["center"] is None and meta["known_people"] == list(known_people())
  # Reruns embed nothing and give the same numbers.
  again = image_open_set.run(config(people, center="none"), str(wd))
  assert again["embedded_now"] == 0
  assert {k: v for k, v in again.items() if k not in ("seconds", "embedded_now")} == {
      k: v for k, v in res.items() if k not in ("seconds", "embedded_now")}
  # Centred (the default): still separable.
  centred = image_open_set.run(config(people), str(wd))
  assert centred["known_accuracy"] == 1.0 and centred["auroc"] == 1.0
  assert (wd / "gallery_center.npy").exists()
  # The strangers as extra unknown probes (embedded now), or as the calibration set.
  probes = image_open_set.run(config(people, center="none", stranger_probes=True), str(wd))
  assert probes["embedded_now"] == 4 and probes["unknown_probes"] == 4 * 12 + 4
  assert probes["far_measured"] == 0.0
  cal = image_open_set.run(config(people, center="none", calibration="strangers"), str(wd))
  assert cal["calibration_probes"] == 4 and cal["embedded_now"] == 0
  assert cal["known_probes"] == 4 * 9 and cal["dir_at_far1"] == 1.0
  rows = [json.loads(l) for l in (wd / "results.jsonl").read_text().splitlines()]
  assert len(rows) == 5


def test_the_test_unknowns_never_set_the_threshold(people, tmp_path):
  """The same known people with each unknown person replaced by a known person's twin:
  the threshold is unchanged (only held-out known images set it) and the twins get in."""
  known = known_people()
  unknown = [f"person_{p:02d}" for p in range(8) if f"person_{p:02d}" not in known]
  twins = make_people(tmp_path / "twins", family=known,
                      look_alikes={u: known[i] for i, u in enumerate(unknown)})
  c = config(people, center="none")
  res = image_open_set.run(c, str(tmp_path / "a"))
  c.data.root = str(twins)
  res_twins = image_open_set.run(c, str(tmp_path / "b"))
  assert res_twins["threshold"] == res["threshold"]
  assert res_twins["far_measured"] == 1.0 and res["far_measured"] == 0.0


def test_refusals(people, tmp_path):
  few = make_people(tmp_path / "few", eligible=2, strangers=1)
  with pytest.raises(DataError, match=r"2 people with >= 10 images.*at least 2 known and 1 "
                     r"unknown.*min_per_class"):
    image_open_set.run(config(few), str(tmp_path / "wd"))
  with pytest.raises(ValueError, match=r"min_per_class=4.*--config.data.min_per_class=5"):
    image_open_set.run(config(people, **{"data.min_per_class": 4}), str(tmp_path / "wd"))
  with pytest.raises(ValueError, match="known_fraction"):
    image_open_set.run(config(people, known_fraction=1.0), str(tmp_path / "wd"))
  with pytest.raises(ValueError, match="stranger_probes"):
    image_open_set.run(config(people, calibration="strangers", stranger_probes=True),
                       str(tmp_path / "wd"))
  loose = tmp_path / "loose"
  loose.mkdir()
  Image.new("RGB", (8, 8)).save(loose / "a.png")
  with pytest.raises(DataError, match="outside any person folder"):
    image_open_set.run(config(loose), str(tmp_path / "wd"))


def test_dlib_missing_names_the_install(monkeypatch):
  monkeypatch.setattr(image_open_set.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ValueError, match=r"pip install --no-deps face-recognition-models==0\.3\.0 "
                     r"dlib-bin==20\.0\.1\.post1"):
    image_open_set.dlib_paths()


def test_binary_prints_the_json_line_and_refuses_in_one_line(people, tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  args = [sys.executable, "-m", "experiments.open_set",
          "--config=experiments/configs/open_set_faces.py", f"--workdir={tmp_path / 'wd'}",
          f"--config.data.root={people}", "--config.model=conv4", "--config.weights=random",
          "--config.image_size=24", "--config.enroll=3"]
  proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads(proc.stdout.strip().splitlines()[-1])
  assert KEYS <= set(res) and res["known_accuracy"] == 1.0
  rows = (tmp_path / "wd" / "results.jsonl").read_text().splitlines()
  assert json.loads(rows[-1])["dir_at_far1"] == res["dir_at_far1"]
  proc = subprocess.run(args + ["--config.known_fraction=0.05"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "at least 2 known" in proc.stderr and "Traceback" not in proc.stderr


def _lfw_counts(lfw, names):
  return sum(len(list((lfw / n).glob("*.jpg"))) for n in names)


def test_real_lfw_runlocal(shared_dir, tmp_path):
  """EfficientNet-Lite0's real ImageNet weights (64 px) on 12 LFW people: a small, real run."""
  if importlib.util.find_spec(efficientnet.PACKAGE) is None:
    msg = f"{efficientnet.PACKAGE_PIN} is not installed (pip install --no-deps ...)."
    if os.environ.get("FSL_JAX_REQUIRE_SHARED") == "1":
      pytest.fail(msg)
    pytest.skip(msg)
  lfw = shared_dir / "data" / "images" / "lfw"
  if not lfw.is_dir():
    pytest.fail(f"{lfw} is missing from ../shared.")
  c = open_set_faces.get_config("runlocal")
  c.data.root = str(lfw)
  res = image_open_set.run(c, str(tmp_path / "wd"))
  people = image_open_set.split_people(
      {p.name: len(list(p.glob("*.jpg"))) for p in lfw.iterdir() if p.is_dir()}, c)
  assert (res["known_people"], res["unknown_people"]) == (6, 6)
  assert res["unknown_probes"] == _lfw_counts(lfw, people.unknown)
  assert res["known_probes"] + res["calibration_probes"] == _lfw_counts(
      lfw, people.known) - 6 * 5
  assert res["pretrained_on"] == "ImageNet-1k" and res["weights_sha256"] == "579344248a93e230"
  assert res["auroc"] > 0.55 and res["known_accuracy"] > 0.4  # chance: 1/6 and 0.5
  assert res["dir_at_far1"] <= res["known_accuracy"]


def test_real_lfw_dlib(shared_dir, tmp_path):
  """dlib's face embedding on 6 LFW people (113 images): it knows faces, so near-perfect."""
  if importlib.util.find_spec("dlib") is None:  # optional: never required, not in make test
    pytest.skip(f"dlib is not installed ({image_open_set.DLIB_PACKAGES}).")
  c = open_set_faces.get_config("runlocal")
  c.data.root = str(shared_dir / "data" / "images" / "lfw")
  c.model, c.image_size, c.data.max_people = "dlib", 0, 6
  res = image_open_set.run(c, str(tmp_path / "wd"))
  assert (res["known_people"], res["unknown_people"], res["image_size"]) == (3, 3, 150)
  assert res["dropped_images"] == 0 and res["center"] == "none"
  assert res["known_accuracy"] > 0.95 and res["auroc"] > 0.95
