r"""Image loading throughput: our loader against PyTorch's DataLoader, one JSON line per loader.

    python benchmarks/data_loading.py --rounds=3                    # NEU-DET folder + Tiny ImageNet zip
    python benchmarks/data_loading.py --cases=generated --rounds=1  # no ../shared needed

Each case is a set of image files (a folder of class folders or a .zip) that
every loader turns, from the root path on, into uint8 [N, size, size, 3] and
its labels, on the same files in one process:

- `fsl_jax_cold`: `folders.load_image_folder` (a .zip: `load_classes` with
  the case's class rule) into a fresh, empty cache dir: list, decode and
  resize everything in the thread pool and write the cache entry, what a
  user's first run pays;
  the entry is written in a background thread, so this is the time until
  the array is returned (training starts); `fsl_jax_cold_incl_write` adds
  the wait for that write (`cache.wait()`);
- `fsl_jax_warm`: the same call again, which reads that entry back (the
  memory map and its checksum over every byte); each round starts from a
  fresh cache dir, so only the second load is timed as warm;
- `fsl_jax_nocache`: the same call with FSL_JAX_NO_CACHE=1: decoding alone;
- `pillow_loop`: one thread: open each file with Pillow, convert RGB, resize
  BILINEAR, np.asarray, stack;
- `torch_dataloader`: `torch.utils.data.DataLoader(num_workers=2,
  batch_size=64)` over a Dataset whose `__getitem__` does what torchvision's
  ImageFolder + Resize((size, size)) does (open with Pillow, convert RGB,
  resize BILINEAR with antialiasing), returning an HWC uint8 tensor and its
  label; iterated to the end and concatenated. Zip members are read by a
  ZipFile each worker opens lazily (torchvision does not import against the
  CPU torch here, ../shared/REFERENCE.md).

Cases: `neu_det` (../shared/data/images/neu-det, 1,326 200x200 JPEGs in 6
class folders), `tiny_imagenet` (train/<wnid>/images/*.JPEG of
../shared/data/images/tiny-imagenet-200.zip, 16,000 64x64 JPEGs) and
`generated` (--generated_images mixed-size JPEGs, 60..400 px a side, in a
temporary folder; the default when ../shared is absent).

The machine is shared with other jobs, so the loaders run in `--rounds`
rounds, in a rotated order each round, and each line reports the median
seconds over the rounds (`seconds_rounds` lists them; `load_avg` is the
1-minute load average before and after the case). `cpu_s` (median) counts
the CPU seconds of all threads and of the DataLoader's worker processes,
which depends less on the other jobs than wall time does. All files are read once
before the first round, so every loader finds them in the page cache.
`ratio_vs_torch_dataloader` is images_per_s / the DataLoader's images_per_s
of the same case; `mean_abs_diff_vs_pillow_loop` (0..255, first round) shows
that every loader made the same pixels (ours differs by draft-mode JPEG
decoding when shrinking 2x or more, see folders.decode_resize).
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
import zipfile
from typing import Callable

from absl import app, flags
import numpy as np
from PIL import Image
import torch
import torch.utils.data

from fsl_jax.data import folders

FLAGS = flags.FLAGS
flags.DEFINE_list("cases", [], "Cases among neu_det, tiny_imagenet, generated (default: the two "
                  "shared ones when --shared exists, else generated).")
flags.DEFINE_string("shared", None, "The shared data folder (default: $FSL_JAX_SHARED, else "
                    "../shared beside the repository).")
flags.DEFINE_integer("image_size", 84, "Square output size.")
flags.DEFINE_integer("rounds", 3, "Rounds over all loaders; lines report the median.")
flags.DEFINE_integer("generated_images", 2000, "Images in the generated case.")
flags.DEFINE_integer("workers", 2, "DataLoader num_workers.")
flags.DEFINE_integer("batch_size", 64, "DataLoader batch_size.")
flags.DEFINE_string("cache_root", None, "Where each round's fresh cache dir goes (default: the "
                    "system temporary folder).")

LOADERS = ("fsl_jax_cold", "fsl_jax_cold_incl_write", "fsl_jax_warm", "fsl_jax_nocache", "pillow_loop", "torch_dataloader")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Case:
  """A root (folder or .zip) and the rule `class_of(path parts) -> class or None`."""
  name: str
  root: str
  class_of: Callable[[tuple[str, ...]], str | None]
  cleanup: Callable[[], None] = lambda: None


def _folder_class(parts):  # load_image_folder's rule: the folder path is the class
  return "/".join(parts[:-1]) if len(parts) >= 2 else None


def _tiny_class(parts):  # tiny-imagenet-200/train/<wnid>/images/<wnid>_<i>.JPEG
  return parts[2] if len(parts) == 5 and parts[1] == "train" and parts[3] == "images" else None


def _generated(n: int, seed: int = 0) -> Case:
  """n JPEGs in 20 class folders, each side 60..400 px, smooth colour fields plus noise."""
  root = tempfile.mkdtemp(prefix="fsl_jax_bench_images_")
  rng = np.random.default_rng(seed)
  for i in range(n):
    w, h = (int(v) for v in rng.integers(60, 401, 2))
    coarse_4x4x3 = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse_4x4x3).resize((w, h), Image.BICUBIC)
    noise_HxWx3 = rng.integers(-12, 13, (h, w, 3))
    img = Image.fromarray(np.clip(np.asarray(img) + noise_HxWx3, 0, 255).astype(np.uint8))
    folder = os.path.join(root, f"class{i % 20:02d}")
    os.makedirs(folder, exist_ok=True)
    img.save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
  return Case("generated", root, _folder_class, lambda: shutil.rmtree(root, ignore_errors=True))


def _make_case(name: str, shared: str) -> Case:
  images = os.path.join(shared, "data", "images")
  if name == "generated":
    return _generated(FLAGS.generated_images)
  root = {"neu_det": os.path.join(images, "neu-det"),
          "tiny_imagenet": os.path.join(images, "tiny-imagenet-200.zip")}.get(name)
  if root is None:
    raise app.UsageError(f"Unknown case {name!r}: use neu_det, tiny_imagenet or generated.")
  if not os.path.exists(root):
    raise app.UsageError(f"{root} does not exist: pass --shared=PATH (or set FSL_JAX_SHARED) to "
                         "the shared data folder, or use --cases=generated.")
  return Case(name, root, _folder_class if name == "neu_det" else _tiny_class)


# ----- the loaders: each goes from the root path to (uint8 [N, S, S, 3], labels [N]) -----


def _scan(case: Case) -> tuple[list[str], np.ndarray]:
  """Files (paths, or zip members) sorted by path and their labels (classes sorted by name),
  the way ImageFolder scans: our loader orders its [C, M] slots the same way."""
  if os.path.isfile(case.root):
    with zipfile.ZipFile(case.root) as zf:
      names = zf.namelist()
    found = [(tuple(p for p in n.split("/") if p), n) for n in names]
  else:
    found = []
    for dirpath, _, filenames in os.walk(case.root):
      rel = os.path.relpath(dirpath, case.root)
      prefix = () if rel == "." else tuple(rel.split(os.sep))
      found += [(prefix + (f,), os.path.join(dirpath, f)) for f in filenames]
  found = sorted((parts, where, c) for parts, where in found
                 if parts[-1].lower().endswith(folders.IMAGE_SUFFIXES)
                 and (c := case.class_of(parts)) is not None)
  classes = sorted({c for _, _, c in found})
  index = {c: i for i, c in enumerate(classes)}
  return [w for _, w, _ in found], np.asarray([index[c] for _, _, c in found])


class PillowDataset(torch.utils.data.Dataset):
  """ImageFolder's loader + Resize((size, size)): Pillow open, RGB, BILINEAR, HWC uint8."""

  def __init__(self, root: str, items: list[str], labels: np.ndarray, size: int):
    self.root, self.items, self.labels, self.size = root, items, labels, size
    self.is_zip = os.path.isfile(root)
    self._zip = None  # opened in each worker on its first item

  def __len__(self):
    return len(self.items)

  def _open(self, i):
    if not self.is_zip:
      return open(self.items[i], "rb")
    if self._zip is None:
      self._zip = zipfile.ZipFile(self.root)
    return self._zip.open(self.items[i])

  def __getitem__(self, i):
    with self._open(i) as f:
      img = Image.open(f).convert("RGB").resize((self.size, self.size), Image.BILINEAR)
    return torch.from_numpy(np.array(img)), int(self.labels[i])


def torch_dataloader(case: Case, size: int) -> tuple[np.ndarray, np.ndarray]:
  items, labels = _scan(case)
  loader = torch.utils.data.DataLoader(PillowDataset(case.root, items, labels, size),
                                       batch_size=FLAGS.batch_size, num_workers=FLAGS.workers)
  batches = list(loader)
  return (torch.cat([b[0] for b in batches]).numpy(),
          torch.cat([b[1] for b in batches]).numpy())


def pillow_loop(case: Case, size: int) -> tuple[np.ndarray, np.ndarray]:
  items, labels = _scan(case)
  zf = zipfile.ZipFile(case.root) if os.path.isfile(case.root) else None
  out = []
  for item in items:
    with (zf.open(item) if zf else open(item, "rb")) as f:
      out.append(np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)))
  if zf:
    zf.close()
  return np.stack(out), labels


def fsl_jax(case: Case, size: int, cache_dir: str | None):
  """ClassImages uint8 [C, M, S, S, 3] (`_flat` turns it into images and labels, untimed)."""
  if os.path.isfile(case.root):
    return folders.load_classes(case.root, case.class_of, size, cache_dir=cache_dir,
                                name=case.name)
  return folders.load_image_folder(case.root, size, cache_dir=cache_dir)


def _flat(out) -> tuple[np.ndarray, np.ndarray]:
  if isinstance(out, tuple):
    return out
  images = np.concatenate([out.images[c, :n] for c, n in enumerate(out.counts)])
  return images, np.repeat(np.arange(len(out.counts)), out.counts)


# ----- timing -----


def _cpu_s() -> float:
  """CPU seconds of this process's threads and of its exited children (DataLoader workers)."""
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return time.process_time() + children.ru_utime + children.ru_stime


def _timed(fn):
  """(wall seconds, CPU seconds, fn())."""
  gc.collect()
  t0, c0 = time.perf_counter(), _cpu_s()
  out = fn()
  return time.perf_counter() - t0, _cpu_s() - c0, out


def _round(case: Case, size: int, r: int) -> tuple[dict[str, tuple[float, float]], dict]:
  """(wall, CPU) seconds of every loader in one round (order rotated by r), and their outputs."""
  cache_dir = tempfile.mkdtemp(prefix="fsl_jax_bench_cache_", dir=FLAGS.cache_root)

  def ours_pair():  # cold into the fresh cache dir, then warm from it
    from fsl_jax.data import cache  # pylint: disable=g-import-not-at-top
    cold = _timed(lambda: fsl_jax(case, size, cache_dir))
    write = _timed(cache.wait)  # the entry is written in a background thread
    with_write = (cold[0] + write[0], cold[1] + write[1], cold[2])
    return {"fsl_jax_cold": cold, "fsl_jax_cold_incl_write": with_write,
            "fsl_jax_warm": _timed(lambda: fsl_jax(case, size, cache_dir))}

  def nocache():
    os.environ["FSL_JAX_NO_CACHE"] = "1"
    try:
      return {"fsl_jax_nocache": _timed(lambda: fsl_jax(case, size, None))}
    finally:
      del os.environ["FSL_JAX_NO_CACHE"]

  steps = [ours_pair, nocache, lambda: {"pillow_loop": _timed(lambda: pillow_loop(case, size))},
           lambda: {"torch_dataloader": _timed(lambda: torch_dataloader(case, size))}]
  steps = steps[r % len(steps):] + steps[:r % len(steps)]
  seconds, outputs = {}, {}
  try:
    for step in steps:
      for loader, (dt, cpu, out) in step().items():
        seconds[loader] = (dt, cpu)
        if r == 0:
          outputs[loader] = _flat(out)
  finally:
    shutil.rmtree(cache_dir, ignore_errors=True)
  return seconds, outputs


def _prime(case: Case) -> None:
  """Reads every file once so that no loader pays for the first read from disk."""
  if os.path.isfile(case.root):
    with open(case.root, "rb") as f:
      while f.read(1 << 24):
        pass
    return
  for dirpath, _, filenames in os.walk(case.root):
    for fname in filenames:
      with open(os.path.join(dirpath, fname), "rb") as f:
        f.read()


def _machine() -> dict:
  model = "unknown"
  with open("/proc/cpuinfo") as f:
    for line in f:
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__,
          "pillow": Image.__version__}


def run_case(case: Case, size: int, rounds: int) -> list[dict]:
  _prime(case)
  load_before = os.getloadavg()[0]
  per_round, outputs = [], {}
  for r in range(rounds):
    seconds, out = _round(case, size, r)
    per_round.append(seconds)
    outputs.update(out)
  load_after = os.getloadavg()[0]
  ref_images, ref_labels = outputs["pillow_loop"]
  rows = {}
  for loader in LOADERS:
    images, labels = outputs[loader]
    if images.shape != ref_images.shape or not np.array_equal(labels, ref_labels):
      raise RuntimeError(f"{case.name}: {loader} made {images.shape} (labels "
                         f"{np.bincount(labels)}), the Pillow loop {ref_images.shape}: the "
                         "loaders did not read the same files.")
    diff = float(np.abs(images.astype(np.int16) - ref_images).mean())
    secs = [s[loader][0] for s in per_round]
    median = statistics.median(secs)
    cpu = statistics.median(s[loader][1] for s in per_round)
    rows[loader] = {"case": case.name, "loader": loader, "images": int(len(labels)),
                    "seconds": round(median, 3),
                    "images_per_s": round(len(labels) / median, 1),
                    "seconds_rounds": [round(s, 3) for s in secs],
                    "cpu_s": round(cpu, 3), "cpu_us_per_image": round(1e6 * cpu / len(labels)),
                    "mean_abs_diff_vs_pillow_loop": round(diff, 3), "image_size": size,
                    "rounds": rounds, "root": case.root}
  torch_ips = rows["torch_dataloader"]["images_per_s"]
  date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  machine = _machine()
  for row in rows.values():
    row["ratio_vs_torch_dataloader"] = round(row["images_per_s"] / torch_ips, 3)
    row.update(machine=machine, date=date, load_avg=[round(load_before, 2), round(load_after, 2)])
  rows["fsl_jax_warm"]["ratio_vs_cold"] = round(
      rows["fsl_jax_warm"]["images_per_s"] / rows["fsl_jax_cold"]["images_per_s"], 1)
  return list(rows.values())


def main(argv):
  del argv
  shared = FLAGS.shared or os.environ.get("FSL_JAX_SHARED") or os.path.join(_REPO, "..", "shared")
  names = FLAGS.cases or (["neu_det", "tiny_imagenet"] if os.path.isdir(shared) else ["generated"])
  if FLAGS.rounds < 1 or FLAGS.image_size < 1:
    raise app.UsageError("--rounds and --image_size must be at least 1.")
  os.environ.pop("FSL_JAX_NO_CACHE", None)  # each loader sets the cache up itself
  for name in names:
    case = _make_case(name, shared)
    try:
      for row in run_case(case, FLAGS.image_size, FLAGS.rounds):
        print(json.dumps(row), flush=True)
    finally:
      case.cleanup()


if __name__ == "__main__":
  app.run(main)
