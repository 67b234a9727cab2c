"""Open-set recognition (fsl_jax.openset) on generated embeddings."""

import itertools
import os
import zipfile

import numpy as np
import pytest

from fsl_jax import openset
from fsl_jax.openset import UNKNOWN, Gallery


def _clusters(classes=6, per_class=8, dim=16, spread=0.05, seed=0, offset=0):
  """Gaussian clusters around random unit centres; labels 'c{offset + i}'."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  x = centres[:, None] + spread * rng.normal(size=(classes, per_class, dim))
  labels = np.repeat([f"c{offset + i}" for i in range(classes)], per_class)
  return x.reshape(-1, dim).astype(np.float32), labels


def _split_known_unknown(seed=0, dim=16):
  """(support, support labels, probes, probe labels): 6 known classes, 6 unknown."""
  x, y = _clusters(classes=12, per_class=10, dim=dim, seed=seed)
  xs, ys = x.reshape(12, 10, dim), y.reshape(12, 10)
  support, support_y = xs[:6, :3].reshape(-1, dim), ys[:6, :3].ravel()
  probes = np.concatenate([xs[:6, 3:].reshape(-1, dim), xs[6:].reshape(-1, dim)])
  probe_y = np.concatenate([ys[:6, 3:].ravel(), ys[6:].ravel()])
  return support, support_y, probes, probe_y


@pytest.mark.parametrize("metric,mode", [("cosine", "prototype"), ("cosine", "nearest"),
                                         ("sq_euclidean", "prototype")])
def test_separated_clusters_are_recognised_and_unknowns_rejected(metric, mode):
  support, support_y, probes, probe_y = _split_known_unknown()
  g = Gallery(metric=metric, mode=mode)
  g.enroll(support, support_y)
  assert g.classes == tuple(f"c{i}" for i in range(6))
  m = openset.evaluate(g, probes, probe_y, far=0.01)
  assert m["known"] == 42 and m["unknown"] == 60
  assert m["known_accuracy"] == 1.0
  assert m["auroc"] == 1.0
  assert m["dir"] >= 0.97 and m["tar"] >= m["dir"]
  assert m["far_actual"] <= 0.01 and m["unknown_recall"] == 1.0 - m["far_actual"]
  pred = g.predict(probes, m["threshold"])
  assert np.all(pred[42:] == UNKNOWN)
  assert np.mean(pred[:42] == probe_y[:42]) == m["dir"]


def test_metrics_on_a_hand_counted_example():
  scores = np.array([[0.9, 0.1],    # a: right, accepted at 0.5
                     [0.2, 0.6],    # a: wrong (b), accepted
                     [0.1, 0.3],    # b: right, rejected
                     [0.7, 0.2],    # unknown, accepted (a false alarm)
                     [0.1, 0.4],    # unknown, rejected
                     [0.2, 0.25]])  # unknown, rejected
  labels = ["a", "a", "b", "x", "y", "z"]
  m = openset.open_set_metrics(scores, ["a", "b"], labels, threshold=0.5)
  third = pytest.approx(1 / 3)
  assert m["threshold"] == 0.5 and (m["known"], m["unknown"]) == (3, 3)
  assert m["known_accuracy"] == pytest.approx(2 / 3) and m["dir"] == third
  assert m["tar"] == pytest.approx(2 / 3) and m["far_actual"] == third
  # rejected: b's probe, y, z -> unknown precision 2/3, recall 2/3
  assert m["unknown_recall"] == pytest.approx(2 / 3)
  assert m["unknown_precision"] == pytest.approx(2 / 3)
  assert m["unknown_f1"] == pytest.approx(2 / 3)
  assert m["auroc"] == pytest.approx(6 / 9)  # known bests .9 .6 .3 vs .7 .4 .25
  # calibrated on the unknowns at far 0.34: one of three accepted, the same decisions
  c = openset.open_set_metrics(scores, ["a", "b"], labels, far=0.34)
  assert 0.4 < c["threshold"] < 0.40001 and c["far_actual"] == third and c["dir"] == third
  none_rejected = openset.open_set_metrics(scores, ["a", "b"], labels, threshold=0.0)
  assert none_rejected["unknown_precision"] == 0.0 and none_rejected["unknown_f1"] == 0.0


def test_prototypes_are_normalised_means_of_normalised_embeddings():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(5, 4)).astype(np.float32)
  g = Gallery()
  g.enroll(x, ["a", "a", "a", "b", "b"])
  q = rng.normal(size=(3, 4)).astype(np.float32)
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  protos = np.stack([unit[:3].mean(0), unit[3:].mean(0)])
  protos /= np.linalg.norm(protos, axis=1, keepdims=True)
  want = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ protos.T
  np.testing.assert_allclose(g.scores(q), want, atol=1e-6)
  near = Gallery(mode="nearest")
  near.enroll(x, ["a", "a", "a", "b", "b"])
  s = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ unit.T
  np.testing.assert_allclose(near.scores(q), np.stack([s[:, :3].max(1), s[:, 3:].max(1)], 1),
                             atol=1e-6)
  raw = Gallery(metric="sq_euclidean", normalize=False)
  raw.enroll(x, ["a", "a", "a", "b", "b"])
  means = np.stack([x[:3].mean(0), x[3:].mean(0)])
  want = -((q[:, None] - means[None]) ** 2).sum(-1)
  np.testing.assert_allclose(raw.scores(q), want, rtol=1e-5, atol=1e-5)


def _pairwise_auc(pos, neg):
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


def test_auroc_equals_the_pairwise_count_with_ties():
  rng = np.random.default_rng(2)
  for trial in range(20):
    pos = rng.integers(0, 6, rng.integers(1, 30)).astype(np.float64)  # many ties
    neg = rng.integers(0, 5, rng.integers(1, 30)).astype(np.float64)
    if trial % 2:
      pos, neg = pos + rng.normal(size=pos.shape), neg + rng.normal(size=neg.shape)
    assert openset.auroc(pos, neg) == pytest.approx(_pairwise_auc(pos, neg), abs=1e-12)
  assert openset.auroc([1.0, 1.0], [1.0]) == 0.5
  np.testing.assert_array_equal(openset.midranks([3, 1, 3, 2, 3]), [4, 1, 4, 2, 4])


def test_calibrate_far_accepts_the_exact_fraction():
  s = np.arange(100, dtype=np.float32)[::-1] / 100  # 100 distinct scores, in no order needed
  rng = np.random.default_rng(3)
  s = rng.permutation(s)
  for far, accepted in [(0.01, 1), (0.05, 5), (0.29, 29), (0.5, 50), (0.001, 0)]:
    t = openset.calibrate_far(s, far)
    assert np.sum(s.astype(np.float64) >= t) == accepted, far
    assert np.float32(t) > np.sort(s)[::-1][accepted]  # the next score down is rejected
    assert openset.decide(np.full(100, "x"), s, t).tolist().count("x") == accepted
  # ties at the cut: accepting any of them would exceed far, so none is accepted
  tied = np.array([0.9, 0.8, 0.8, 0.8, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
  t = openset.calibrate_far(tied, 0.2)
  assert np.sum(tied >= t) == 1
  genuine = np.linspace(0.0, 1.0, 21)
  t = openset.calibrate_frr(genuine, 0.1)
  assert np.sum(genuine < t) == 2 and t == genuine[2]


def test_impostor_scores_equal_scoring_without_the_class():
  support, support_y, probes, probe_y = _split_known_unknown(seed=4)
  g = Gallery(mode="nearest")
  g.enroll(support, support_y)
  known = probes[:42]
  imp = g.impostor_scores(known, probe_y[:42])
  for c in g.classes:
    h = Gallery(mode="nearest")
    h.enroll(support, support_y)
    h.remove(c)
    rows = probe_y[:42] == c
    np.testing.assert_allclose(imp[rows], h.best(known[rows])[1], atol=1e-6)
  t = openset.calibrate_far(imp, 0.05)
  assert np.mean(imp >= t) <= 0.05


def test_enroll_remove_save_load_round_trip(tmp_path):
  support, support_y, probes, probe_y = _split_known_unknown(seed=5)
  g = Gallery(mode="nearest")
  ids = g.enroll(support[:9], support_y[:9])
  more = g.enroll(support[9:], support_y[9:])
  np.testing.assert_array_equal(np.r_[ids, more], np.arange(18))
  t = openset.calibrate_far(g.scores(probes[42:]).max(1), 0.05)
  before = g.predict(probes, t)
  assert set(before[:42]) <= set(g.classes) | {UNKNOWN}

  assert g.remove("c2") == 3
  assert "c2" not in g.classes and "c2" not in g.predict(probes, -np.inf).tolist()
  g.remove_examples(more[:2])                 # two of c3's three examples
  assert len(g) == 13 and g.classes.count("c3") == 1
  with pytest.raises(ValueError, match="not enrolled"):
    g.remove_examples(more[:1])
  with pytest.raises(ValueError, match="no class 'c2' is enrolled"):
    g.remove("c2")

  path = str(tmp_path / "g.npz")
  g.save(path)
  assert os.listdir(tmp_path) == ["g.npz"]    # no temporary file left behind
  h = Gallery.load(path)
  assert (h.metric, h.mode, h.classes) == (g.metric, g.mode, g.classes)
  np.testing.assert_array_equal(h.scores(probes), g.scores(probes))
  np.testing.assert_array_equal(h.predict(probes, t), g.predict(probes, t))
  np.testing.assert_array_equal(h.ids_N, g.ids_N)
  new = h.enroll(support[6:7], ["c2"])        # ids keep counting after a reload
  assert new.tolist() == [18] and "c2" in h.classes

  ints = Gallery()                            # non-string labels come back as strings
  ints.enroll(support[:6], [0, 0, 0, 1, 1, 1])
  ints.save(path)
  assert Gallery.load(path).predict(support[:1], 0.5).tolist() == ["0"]


def test_other_versions_and_damaged_files_are_refused(tmp_path):
  g = Gallery()
  g.enroll(*_clusters(classes=2, per_class=2))
  good = str(tmp_path / "g.npz")
  g.save(good)
  data = dict(np.load(good))

  def write(name, **changes):
    path = str(tmp_path / name)
    with open(path, "wb") as f:
      np.savez(f, **{**data, **changes})
    return path

  with pytest.raises(ValueError, match="version 2; this fsl_jax reads version 1.*re-enroll"):
    Gallery.load(write("v2.npz", version=np.asarray(2)))
  with pytest.raises(ValueError, match="is not a fsl_jax.openset.Gallery file"):
    Gallery.load(write("other.npz", format=np.asarray("something.else")))
  with pytest.raises(ValueError, match="mismatched arrays.*damaged"):
    Gallery.load(write("sizes.npz", labels=data["labels"][:3]))
  with pytest.raises(ValueError, match="mismatched arrays"):
    Gallery.load(write("ids.npz", ids=data["ids"][:2]))
  truncated = str(tmp_path / "cut.npz")
  with open(good, "rb") as f, open(truncated, "wb") as out:
    out.write(f.read()[:100])
  with pytest.raises(ValueError, match="not a readable gallery file.*Gallery.save"):
    Gallery.load(truncated)
  with zipfile.ZipFile(str(tmp_path / "plain.npz"), "w") as z:
    z.writestr("x.txt", "hello")
  with pytest.raises(ValueError, match="not a fsl_jax.openset.Gallery file"):
    Gallery.load(str(tmp_path / "plain.npz"))
  with pytest.raises(FileNotFoundError, match="Gallery.save"):
    Gallery.load(str(tmp_path / "missing.npz"))


def test_bad_input_names_the_fix():
  x, y = _clusters(classes=2, per_class=2, dim=8)
  with pytest.raises(ValueError, match="gallery is empty: enroll"):
    Gallery().scores(x)
  g = Gallery()
  g.enroll(x, y)
  with pytest.raises(ValueError, match="are 5-d; the gallery holds 8-d"):
    g.scores(np.zeros((3, 5)))
  with pytest.raises(ValueError, match="are 5-d; the gallery holds 8-d"):
    g.enroll(np.zeros((1, 5)), ["z"])
  with pytest.raises(ValueError, match="one label per embedding row"):
    g.enroll(x[:2], ["a"])
  with pytest.raises(ValueError, match="reserved"):
    g.enroll(x[:1], [UNKNOWN])
  with pytest.raises(ValueError, match="NaN or inf"):
    g.scores(np.full((1, 8), np.nan))
  for far in (0.0, 1.0, 1, -0.1, 5.0):
    with pytest.raises(ValueError, match=r"pass a rate in \(0, 1\), e.g. 0.01"):
      openset.calibrate_far([0.1, 0.2], far)
  with pytest.raises(ValueError, match="non-empty 1-d array"):
    openset.calibrate_far([], 0.1)
  with pytest.raises(ValueError, match="pass a rate"):
    openset.calibrate_frr([0.1], 1.5)
  with pytest.raises(ValueError, match="metric='dot'"):
    Gallery(metric="dot")
  with pytest.raises(ValueError, match="threshold is not a number"):
    g.predict(x, None)
  with pytest.raises(ValueError, match="pass both"):
    openset.open_set_metrics(g.scores(x), g.classes, y)
  with pytest.raises(ValueError, match="one label per row"):
    openset.open_set_metrics(g.scores(x), g.classes, y[:2])
