"""A decoded-array cache: a split decoded once, memory-mapped on later loads.

Decoding and resizing 18,000 JPEGs costs seconds each run; reading back the
uint8 array they make costs a memory map. `cached(name, fingerprint, build)`
returns `build()`'s `ClassImages` and writes it to

    <cache dir>/<name>-<hash of fingerprint>.npy   (images [C, M, H, W, D])
    <cache dir>/<name>-<hash of fingerprint>.json  (counts, names, checksum)

Only each class's real images are written: the padding slots of classes
with fewer than M images are left as holes of a sparse file (zeros when
read), so a split with one large class costs the disk what its images do
(LFW at 224x224: 158 people padded to George_W_Bush's 530 photos is a
12.6 GB array of 0.65 GB of images).

or, when both files are there and whole, reads them back instead. The
fingerprint is whatever identifies the result: for a folder, the file list
with each file's size and modification time and the image size, so a
changed, added or removed file (or another size) is a different entry. The
json is written last and holds the array's shape, dtype and checksum (xxHash
XXH3-64 of every real image's bytes, class by class: 1.6 ms for NEU-DET's
28 MB where zlib's CRC-32 took 7.7, the largest part of a warm load), so a
truncated or corrupt entry is detected, reported in one warning line and
rebuilt, never trusted. Older entries of the same name are removed when a
new one is written.

The cache dir is `cache_dir` when given, else $FSL_JAX_CACHE_DIR, else
~/.cache/fsl_jax. FSL_JAX_NO_CACHE=1 turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from typing import Any, Callable

from absl import logging
import numpy as np
import xxhash

from fsl_jax.data.sources import ClassImages

# Bumped when the decoding or the entry format changes, so old entries are never read.
FORMAT = 3  # 3: real images only, sparse padding (2: XXH3-64 of every byte; 1: CRC-32)


def say(msg: str, *args) -> None:
  """A progress line on stderr (absl INFO is off in the binaries): where the cache went."""
  print(time.strftime("%H:%M:%S ") + (msg % args if args else msg), file=sys.stderr, flush=True)


def cache_dir(explicit: str | None = None) -> str | None:
  """Where entries go, or None when FSL_JAX_NO_CACHE=1."""
  if os.environ.get("FSL_JAX_NO_CACHE", "") not in ("", "0"):
    return None
  return (explicit or os.environ.get("FSL_JAX_CACHE_DIR")
          or os.path.join(os.path.expanduser("~"), ".cache", "fsl_jax"))


def slug(text: str) -> str:
  """A file-name-safe form of `text` (a dataset root, a split name)."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[-80:] or "data"


def _checksum(images: np.ndarray, counts: np.ndarray) -> str:
  """XXH3-64 of the real images' bytes (class c's first counts[c]) in C order, as hex."""
  h = xxhash.xxh3_64()
  step = 1 << 26
  for c, n in enumerate(np.asarray(counts)):
    real = images[c, :int(n)]
    flat = real.reshape(-1).view(np.uint8) if real.size else real.reshape(-1)
    for i in range(0, flat.size, step):
      h.update(np.ascontiguousarray(flat[i:i + step]))
  return h.hexdigest()


def _read(stem: str) -> ClassImages | None:
  """The entry at `stem`, or None (with a warning) when it is not whole."""
  if not os.path.exists(stem + ".json"):
    return None
  try:
    with open(stem + ".json") as f:
      meta = json.load(f)
    images = np.load(stem + ".npy", mmap_mode="r")
    problem = None
    if list(images.shape) != meta["shape"] or str(images.dtype) != meta["dtype"]:
      problem = f"array {images.shape} {images.dtype}, expected {meta['shape']} {meta['dtype']}"
    elif (meta.get("format") != FORMAT or len(meta["counts"]) != images.shape[0]
          or _checksum(images, meta["counts"]) != meta["xxh3_64"]):
      problem = "checksum mismatch"
    if problem is None:
      return ClassImages(images, np.asarray(meta["counts"], np.int32), meta["class_names"],
                         meta["groups"])
  except (OSError, ValueError, KeyError, TypeError) as err:  # truncated .npy, bad json
    problem = f"{type(err).__name__}: {' '.join(str(err).split())[:120]}"
  logging.warning("Decoded-array cache %s.npy is damaged (%s); rebuilding it.", stem, problem)
  return None


def _write(stem: str, src: ClassImages, fingerprint_hash: str) -> None:
  directory = os.path.dirname(stem)
  os.makedirs(directory, exist_ok=True)
  images, counts = src.images, np.asarray(src.counts)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npy.tmp")
  os.close(fd)
  try:
    # open_memmap sizes the file by seeking to its end: what is never written
    # (the padding slots) stays a hole, read back as zeros.
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=images.dtype, shape=images.shape)
    for c, n in enumerate(counts):
      out[c, :int(n)] = images[c, :int(n)]
    out.flush()
    del out
    os.replace(tmp, stem + ".npy")
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  meta = {"format": FORMAT, "fingerprint": fingerprint_hash, "shape": list(images.shape),
          "dtype": str(images.dtype), "xxh3_64": _checksum(images, counts),
          "counts": [int(c) for c in src.counts], "class_names": list(src.class_names),
          "groups": None if src.groups is None else list(src.groups)}
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".json.tmp")
  with os.fdopen(fd, "w") as f:
    json.dump(meta, f)
  os.replace(tmp, stem + ".json")


def _prune(directory: str, name: str, keep: str) -> None:
  """Removes the other entries of `name` (an older file list or a damaged entry)."""
  pattern = re.compile(re.escape(name) + r"-[0-9a-f]{16}\.(npy|json)$")
  for entry in os.listdir(directory):
    if pattern.match(entry) and not entry.startswith(os.path.basename(keep) + "."):
      try:
        os.remove(os.path.join(directory, entry))
      except OSError:
        pass


def cached(name: str, fingerprint: Any, build: Callable[[], ClassImages],
           directory: str | None = None) -> ClassImages:
  """`build()`, read from the cache entry of (name, fingerprint) when it is whole.

  `name` is file-name safe (see `slug`) and names the source and its
  settings, e.g. 'tiny-imagenet-200.zip-train-84-rgb'; `fingerprint` is any
  JSON-serialisable value that changes whenever the result would.
  """
  where = cache_dir(directory)
  if where is None:
    return build()
  digest = hashlib.sha256(json.dumps([FORMAT, name, fingerprint], sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]
  stem = os.path.join(where, f"{name}-{digest}")
  with _LOCK:
    pending = _PENDING.get(stem)
  if pending is not None:  # this process is still writing it
    pending.join()
  hit = _read(stem)
  if hit is not None:
    say("Read %s from the decoded-array cache %s.npy", name, stem)
    return hit
  src = build()
  # Written in a background thread: the caller trains (compiles) meanwhile
  # instead of waiting for ~1 s of np.save per 300 MB. The entry appears
  # atomically (json last); a later lookup of it in this process, and the
  # interpreter's exit (a non-daemon thread), wait for the write.
  writer = threading.Thread(target=_write_entry, args=(where, name, stem, src, digest),
                            name=f"cache-write-{name}")
  with _LOCK:
    _PENDING[stem] = writer
  writer.start()
  return src


_LOCK = threading.Lock()
_PENDING: dict[str, threading.Thread] = {}


def wait() -> None:
  """Waits for every decoded-array cache write this process started."""
  with _LOCK:
    threads = list(_PENDING.values())
  for t in threads:
    t.join()


def _write_entry(where: str, name: str, stem: str, src: ClassImages, digest: str) -> None:
  try:
    _write(stem, src, digest)
    _prune(where, name, stem)
    real = int(np.sum(src.counts)) * int(np.prod(src.images.shape[2:])) * src.images.itemsize
    say("Wrote the decoded-array cache %s.npy (%.0f MB of images; FSL_JAX_NO_CACHE=1 turns it "
        "off)", stem, real / 2**20)
  except OSError as err:  # a read-only or full disk costs the next run a decode, nothing else
    logging.warning("Could not write the decoded-array cache in %s (%s); set "
                    "config.data.cache_dir or FSL_JAX_CACHE_DIR to a writable folder.", where,
                    err.strerror or err)
  finally:
    with _LOCK:
      _PENDING.pop(stem, None)
