"""Episode sampler invariants and errors."""

import jax
import numpy as np
import pytest

from fsl_jax.data import ClassImages, DataError, EpisodeSampler, EpisodeSpec


def _tagged_source(num_classes=12, per_class=10, size=6):
  """Each image is constant = class * 1000 + example: its value says where it came from."""
  vals = np.arange(num_classes)[:, None] * 1000 + np.arange(per_class)[None, :]
  images = np.broadcast_to(vals[:, :, None, None, None].astype(np.float32),
                           (num_classes, per_class, size, size, 1)).copy()
  return ClassImages(images, np.full(num_classes, per_class, np.int32),
                     [f"c{i}" for i in range(num_classes)])


def _origin(x):
  v = np.asarray(x)[:, 0, 0, 0].astype(int)
  return v // 1000, v % 1000


def test_invariants():
  spec = EpisodeSpec(ways=5, shots=2, queries=3)
  sampler = EpisodeSampler(_tagged_source(), spec)
  for seed in range(20):
    ep = sampler.sample(jax.random.PRNGKey(seed))
    classes = np.asarray(ep["classes"])
    assert len(set(classes)) == 5  # no repeated class
    s_cls, s_ex = _origin(ep["support_x"])
    q_cls, q_ex = _origin(ep["query_x"])
    # labels are 0..N-1 in draw order and match the class the image came from
    np.testing.assert_array_equal(np.asarray(ep["support_y"]), np.repeat(np.arange(5), 2))
    np.testing.assert_array_equal(np.asarray(ep["query_y"]), np.repeat(np.arange(5), 3))
    np.testing.assert_array_equal(s_cls, classes[np.asarray(ep["support_y"])])
    np.testing.assert_array_equal(q_cls, classes[np.asarray(ep["query_y"])])
    # support and query disjoint, no example drawn twice
    drawn = set(zip(s_cls, s_ex)) | set(zip(q_cls, q_ex))
    assert len(drawn) == 5 * (2 + 3)


def test_deterministic_and_key_dependent():
  sampler = EpisodeSampler(_tagged_source(), EpisodeSpec(4, 1, 2))
  a = sampler.sample(jax.random.PRNGKey(3))
  b = sampler.sample(jax.random.PRNGKey(3))
  c = sampler.sample(jax.random.PRNGKey(4))
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
  assert not np.array_equal(np.asarray(a["query_x"]), np.asarray(c["query_x"]))
  batch = sampler.sample_batch(jax.random.PRNGKey(3), 6)
  assert batch["support_x"].shape == (6, 4, 6, 6, 1)


def test_uneven_classes_only_eligible_drawn():
  src = _tagged_source(num_classes=8, per_class=10)
  src.counts[:4] = 2  # too few for shots + queries = 4; padded rows must never be drawn
  sampler = EpisodeSampler(src, EpisodeSpec(4, 1, 3))
  for seed in range(10):
    ep = sampler.sample(jax.random.PRNGKey(seed))
    assert set(np.asarray(ep["classes"])) == {4, 5, 6, 7}


def test_rotations_are_extra_classes():
  rng = np.random.default_rng(0)
  images = rng.random((3, 5, 6, 6, 1)).astype(np.float32)
  src = ClassImages(images, np.full(3, 5, np.int32), ["a", "b", "c"])
  sampler = EpisodeSampler(src, EpisodeSpec(12, 1, 1), rotations=True)
  ep = sampler.sample(jax.random.PRNGKey(0))
  classes = np.asarray(ep["classes"])
  assert sorted(classes) == list(range(12))  # 3 classes x 4 rotations
  for i, cls in enumerate(classes):
    base, rot = cls % 3, cls // 3
    x = np.asarray(ep["support_x"][i])
    assert any(np.allclose(x, np.rot90(images[base, j], rot, axes=(0, 1))) for j in range(5))


def test_errors_name_the_fix():
  src = _tagged_source(num_classes=4, per_class=5)
  with pytest.raises(DataError, match="5-way episodes need 5 classes"):
    EpisodeSampler(src, EpisodeSpec(5, 1, 1), split="test")
  with pytest.raises(DataError, match="shots \\+ queries = 3 \\+ 3 = 6"):
    EpisodeSampler(src, EpisodeSpec(2, 3, 3))
  with pytest.raises(DataError, match="ways must be >= 2"):
    EpisodeSpec(1, 1, 1)
