"""The image loader: uint8 from disk to device, no compilation, a decoded-array cache.

Issue 25: images decode and resize on the host (Pillow, a thread pool), the
result is uint8, nothing compiles per image or per image size, and the
decoded array is cached (memory-mapped later) until a file changes.
"""

import io
import logging
import os
import warnings
import zipfile

import jax
import numpy as np
from PIL import Image
import pytest

from fsl_jax.data import cache, folders, registry
from fsl_jax.data.sources import as_float, resize

import ml_collections


def _jpeg(rgb_HxWx3, quality=90) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(rgb_HxWx3).save(buf, "JPEG", quality=quality)
  return buf.getvalue()


def _photo(rng, h, w) -> np.ndarray:
  """A smooth photo-like RGB image (JPEG-friendly), uint8 [h, w, 3]."""
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  phase = rng.random(3) * 6
  img = 0.5 + 0.25 * np.sin(8 * xx[..., None] + phase) * np.cos(5 * yy[..., None] - phase)
  img += 0.05 * rng.standard_normal((h, w, 3))
  return np.clip(img * 255, 0, 255).astype(np.uint8)


def _folder(tmp_path, sizes=((50, 70), (64, 64), (120, 90), (33, 200)), per_class=3):
  rng = np.random.default_rng(0)
  for c, (h, w) in enumerate(sizes):
    d = tmp_path / f"class{c}"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
      (d / f"{i}.jpg").write_bytes(_jpeg(_photo(rng, h + i, w)))
  return tmp_path


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
  d = tmp_path / "cache"
  monkeypatch.setenv("FSL_JAX_CACHE_DIR", str(d))
  monkeypatch.delenv("FSL_JAX_NO_CACHE", raising=False)
  return d


def test_loading_images_of_many_sizes_compiles_nothing(tmp_path, cache_dir):
  del cache_dir
  root = _folder(tmp_path / "data")
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, *a, **k: compiles.append(name)
      if name == "/jax/core/compile/backend_compile_duration" else None)
  jax.jit(lambda x: x + 1)(np.ones(3, np.float32) * 7.5)  # the listener sees compilations
  assert len(compiles) == 1
  src = folders.load_image_folder(str(root), image_size=28)
  assert len(compiles) == 1, f"loading compiled {len(compiles) - 1} programs"
  assert src.images.dtype == np.uint8 and src.images.shape == (4, 3, 28, 28, 3)
  assert list(src.counts) == [3, 3, 3, 3]


def test_resize_matches_the_float_resize_within_stated_tolerances():
  rng = np.random.default_rng(1)
  # PNG (and JPEGs smaller than twice the size): Pillow's uint8 resize is the
  # float resize rounded, within one level; the float resize is JAX's.
  rgb = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, "PNG")
  new = as_float(folders.decode_resize(buf.getvalue(), "x.png", 28))
  want = resize(rgb[None].astype(np.float32) / 255, 28)[0]
  np.testing.assert_allclose(folders._float_resize(rgb.astype(np.float32) / 255, 28), want,
                             atol=1e-5)
  np.testing.assert_allclose(new, want, atol=1.01 / 255)
  # JPEGs at least twice the size decode in draft mode (scaled in the DCT):
  # measured on NEU-DET and LFW photos at 84 and 32 px, mean 0.75-1.1 levels,
  # 99th percentile 4-8 levels, max 13-28; bounds here: mean 2, p99 12.
  diffs = []
  for h, w in ((200, 200), (250, 180), (400, 300)):
    data = _jpeg(_photo(rng, h, w))
    new = as_float(folders.decode_resize(data, "x.jpg", 84))
    old = folders._float_resize(folders.decode_image(data, "x.jpg"), 84)
    diffs.append(np.abs(new - old))
  diffs = np.stack(diffs) * 255
  assert diffs.mean() < 2 and np.percentile(diffs, 99) < 12, (diffs.mean(), diffs.max())


def test_cached_and_fresh_arrays_are_identical_and_a_touched_file_rebuilds(tmp_path, cache_dir):
  root = _folder(tmp_path / "data")
  fresh = folders.load_image_folder(str(root), image_size=32)
  cache.wait()  # entries are written in a background thread
  entries = sorted(p.name for p in cache_dir.iterdir())
  assert len(entries) == 2 and entries[0].endswith(".json") and entries[1].endswith(".npy")
  warm = folders.load_image_folder(str(root), image_size=32)
  assert isinstance(warm.images, np.memmap)  # read back, not decoded
  np.testing.assert_array_equal(warm.images, fresh.images)
  np.testing.assert_array_equal(warm.counts, fresh.counts)
  assert warm.class_names == fresh.class_names

  # A changed file (new content, new mtime) is a new entry; the old one goes.
  target = root / "class1" / "0.jpg"
  target.write_bytes(_jpeg(np.zeros((64, 64, 3), np.uint8)))
  st = target.stat()
  os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  changed = folders.load_image_folder(str(root), image_size=32)
  assert not isinstance(changed.images, np.memmap)
  assert changed.images[1, 0].max() == 0 and fresh.images[1, 0].max() > 0
  cache.wait()
  assert len(list(cache_dir.iterdir())) == 2  # the stale entry was pruned
  # Another size is another entry; FSL_JAX_NO_CACHE=1 writes nothing.
  folders.load_image_folder(str(root), image_size=16)
  cache.wait()
  assert len(list(cache_dir.iterdir())) == 4
  os.environ["FSL_JAX_NO_CACHE"] = "1"
  try:
    again = folders.load_image_folder(str(root / ".."), image_size=32, name="other")
  finally:
    del os.environ["FSL_JAX_NO_CACHE"]
  assert not isinstance(again.images, np.memmap) and len(list(cache_dir.iterdir())) == 4


@pytest.mark.parametrize("damage", ["truncate", "flip", "json"])
def test_a_damaged_cache_is_rebuilt_with_one_warning(tmp_path, cache_dir, caplog, damage):
  root = _folder(tmp_path / "data", per_class=2)
  fresh = folders.load_image_folder(str(root), image_size=24)
  cache.wait()
  npy = next(cache_dir.glob("*.npy"))
  data = bytearray(npy.read_bytes())
  if damage == "truncate":
    npy.write_bytes(bytes(data[:len(data) // 2]))
  elif damage == "flip":
    data[-100] ^= 0xFF
    npy.write_bytes(bytes(data))
  else:
    next(cache_dir.glob("*.json")).write_text("{not json")
  with caplog.at_level(logging.WARNING):
    again = folders.load_image_folder(str(root), image_size=24)
  warnings = [r.getMessage() for r in caplog.records if "cache" in r.getMessage()]
  assert len(warnings) == 1 and "damaged" in warnings[0] and "rebuilding" in warnings[0]
  assert not isinstance(again.images, np.memmap)  # decoded again, not trusted
  np.testing.assert_array_equal(again.images, fresh.images)
  healed = folders.load_image_folder(str(root), image_size=24)
  assert isinstance(healed.images, np.memmap)


def _makes_holes(directory) -> bool:
  """Whether this filesystem stores a file's unwritten range as a hole (most do)."""
  probe = directory / "probe"
  with open(probe, "wb") as f:
    f.seek(1 << 22)
    f.write(b"x")
  holes = probe.stat().st_blocks * 512 < 1 << 21
  probe.unlink()
  return holes


def test_padding_slots_cost_no_disk(tmp_path, cache_dir):
  # One large class pads every other one to its size (LFW at 224: 12.6 GB of
  # [C, M] slots for 0.65 GB of photos); the cache writes the real images only.
  root = _folder(tmp_path / "data", sizes=((60, 60),) * 4, per_class=2)
  rng = np.random.default_rng(1)
  for i in range(2, 30):
    (root / "class0" / f"{i}.jpg").write_bytes(_jpeg(_photo(rng, 60, 60)))
  fresh = folders.load_image_folder(str(root), image_size=64)
  assert list(fresh.counts) == [30, 2, 2, 2] and fresh.images.shape[:2] == (4, 30)
  cache.wait()
  warm = folders.load_image_folder(str(root), image_size=64)
  assert isinstance(warm.images, np.memmap)
  np.testing.assert_array_equal(warm.images, fresh.images)  # padding reads back as zeros
  npy = next(cache_dir.glob("*.npy"))
  real = 36 * 64 * 64 * 3
  assert npy.stat().st_size > 3 * real  # the [4, 30] array's apparent size
  if _makes_holes(cache_dir):
    assert npy.stat().st_blocks * 512 < real + (1 << 17)  # what is on disk: ~the 36 images


def test_a_zip_is_cached_until_it_changes(tmp_path, cache_dir, capsys):
  root = _folder(tmp_path / "data", per_class=2)
  zpath = tmp_path / "data.zip"
  with zipfile.ZipFile(zpath, "w") as zf:
    for p in sorted(root.rglob("*.jpg")):
      zf.write(p, "top/" + str(p.relative_to(root)))
  first = folders.load_image_folder(str(zpath), image_size=20)
  assert first.class_names == [f"top/class{c}" for c in range(4)]
  second = folders.load_image_folder(str(zpath), image_size=20)
  assert isinstance(second.images, np.memmap)
  err = capsys.readouterr().err  # the log says where the cache went
  assert f"Wrote the decoded-array cache {cache_dir}" in err
  assert f"data.zip-20-rgb from the decoded-array cache {cache_dir}" in err
  np.testing.assert_array_equal(first.images, second.images)
  with zipfile.ZipFile(zpath, "a") as zf:
    zf.writestr("top/class4/0.jpg", _jpeg(np.zeros((30, 30, 3), np.uint8)))
  third = folders.load_image_folder(str(zpath), image_size=20)
  assert third.num_classes == 5 and not isinstance(third.images, np.memmap)


def test_skipped_images_leave_no_holes(tmp_path, cache_dir):
  del cache_dir
  root = _folder(tmp_path / "data", per_class=3)
  (root / "class2" / "1.jpg").write_bytes(b"not a jpeg")
  src = folders.load_image_folder(str(root), image_size=16, skip_bad_images=True)
  assert list(src.counts) == [3, 3, 2, 3]
  assert src.images[2, :2].max() > 0  # the two good images packed first


def test_the_registry_loads_folders_as_uint8_with_the_configured_cache(tmp_path, monkeypatch):
  monkeypatch.delenv("FSL_JAX_NO_CACHE", raising=False)
  root = _folder(tmp_path / "data", per_class=2)
  cfg = ml_collections.ConfigDict({"name": "image_folder", "train_dir": str(root),
                                   "image_size": 16, "grayscale": False,
                                   "skip_bad_images": False,
                                   "cache_dir": str(tmp_path / "mine")})
  src = registry.load_split(cfg, "train")
  cache.wait()
  assert src.images.dtype == np.uint8
  assert len(list((tmp_path / "mine").glob("*.npy"))) == 1
  assert cache.cache_dir(str(tmp_path / "mine")) == str(tmp_path / "mine")


@pytest.mark.parametrize("zipped", [False, True])
def test_process_and_thread_decoding_agree_and_report_bad_files(tmp_path, zipped):
  # Large loads decode in forked processes (PROCESS_MIN_FILES), small ones in
  # threads: the same pixels, and the same unreadable files named in order.
  root = _folder(tmp_path / "data", per_class=3)
  (root / "class2" / "1.jpg").write_bytes(b"not a jpeg")
  path = root
  if zipped:
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as zf:
      for p in sorted(root.rglob("*.jpg")):
        zf.write(p, str(p.relative_to(root)))
  jax.devices()  # a running backend: JAX's fork warning is armed
  with folders.list_images(str(path)) as files:
    runs = {}
    for processes in (False, True):
      out = np.zeros((len(files), 24, 24, 3), np.uint8)
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = folders.decode_files(files, 24, skip_bad_images=True, out=out,
                                    processes=processes)
      # Forked decoders never call JAX: users are not told of a deadlock that cannot happen.
      assert not [w for w in caught if "fork" in str(w.message)]
      runs[processes] = (out, kept)
    np.testing.assert_array_equal(runs[True][0], runs[False][0])
    np.testing.assert_array_equal(runs[True][1], runs[False][1])
    assert list(np.flatnonzero(~runs[True][1])) == [7]  # class2/1.jpg
    with pytest.raises(folders.UnreadableImage, match=r"class2/1.jpg.* does not decode"):
      folders.decode_files(files, 24, out=np.zeros((len(files), 24, 24, 3), np.uint8),
                           processes=True)
