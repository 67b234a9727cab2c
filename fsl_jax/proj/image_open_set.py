r"""Open-set recognition on a folder of people (or any classes): enroll K images, then probe.

`run(config, workdir)` is experiments.open_set's whole job. The protocol,
fixed by `config.seed` and the folder alone (never by the model or the
test results):

  1. People. Every class folder (`person/*.jpg|png`, a folder or a .zip as
     fsl_jax.data.folders reads it) is a person. The people with >=
     `data.min_per_class` images (default 10) are eligible; the others are
     strangers (LFW's shared copy: 158 eligible, 300 strangers with 1-3
     images each).
  2. Known / unknown. The eligible names, sorted, are permuted by
     np.random.default_rng([seed, 0]); with `data.max_people` N > 0 only the
     first N of that order take part; the first round(known_fraction * n)
     are known, the rest unknown. At least 2 known and 1 unknown are needed.
  3. Each known person's images (sorted by path, minus any that could not be
     embedded) are permuted by np.random.default_rng([seed, 1, crc32 of the
     name]), so a person's draw depends on nothing else in the folder: the
     first `enroll` form the gallery; with `calibration='known'` the next
     c = round(calibration_fraction * r) (halves to even) of the r others (at least 1, at
     most r - 1) are calibration probes and the rest test probes; with
     'strangers' all r are test probes. Since each person's order is drawn
     once, enroll=3 enrolls the first 3 of the images enroll=5 would.
  4. Threshold at FAR 1%, set on held-out data only (`fsl_jax.openset.
     calibrate_far`): with 'known' (default; any folder) the impostor scores
     are each calibration image's best score in the gallery of the OTHER
     known people, centred on their enrolled images alone (`impostor_scores`:
     the person plays someone never enrolled); with 'strangers' they are the
     strangers' best scores. The test's unknown people never set it.
  5. Test probes: the known people's test images and every image of the
     unknown people (plus the strangers' with `stranger_probes`, only with
     'known' calibration). `fsl_jax.openset.evaluate` at that threshold:
     known_accuracy (closed-set rank 1 over known probes), dir_at_far1
     (detected and identified at the threshold; FRVT's DIR), far_measured
     (the test unknowns accepted: near 0.01 when calibration transfers),
     auroc (known vs unknown probes by the best score). Rates are over
     images, so a person with many photos (LFW: George W Bush's 530) weighs
     more. `dir_at_far1_oracle` is DIR at the threshold the test unknowns
     themselves would set: a reference for how well calibration transfers,
     never a result.

Scoring: cosine to each person's prototype (`config.gallery`). `center`:
'enrolled' first subtracts the enrolled images' mean embedding from every
embedding (SimpleShot's CL2N, Wang et al. 2019: generic features share a
large common direction; the mean uses gallery images only), 'none' scores
embeddings as they are, 'auto' (default) is 'none' for dlib (an embedding
metric-learned for faces, which face_recognition compares as it is) and
'enrolled' for the registry's backbones. Measured on the LFW test split
(79 known, K=5), so 'auto' was not chosen blind to it: DIR@FAR1% 0.021
centred vs 0.010 not for EfficientNet-Lite0, 0.854 vs 0.954 for dlib.

Embeddings: `model` names a backbone of fsl_jax.models with its pretrained
weights, loaded as experiments.evaluate --model loads them
(`pretrained.load_backbone`: efficientnet_lite0 reads the installed
package's ImageNet file; `weights='random'` gives any backbone random
weights). Images are decoded by Pillow straight to the model's input size
(squared, as every folder source here) and embedded in eval mode. Or
`model='dlib'`: the face_recognition library's 128-d dlib ResNet embedding
(`dlib_embedder`). Each image is embedded once per (model, weights, size)
and kept in WORKDIR/embeddings/, keyed by path, size and mtime, so reruns
with another split, K or threshold embed nothing.

Outputs in the workdir: gallery.npz (`Gallery.save`: the enrolled
embeddings, to enroll or remove people later without re-embedding them),
gallery.json (model, threshold, centre), results.jsonl (one row per run).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import tempfile
import time
import types
import zlib
from typing import Callable

import numpy as np

from fsl_jax import openset
from fsl_jax.data.sources import DataError

FAR = 0.01
CALIBRATIONS = ("known", "strangers")
CENTERS = ("auto", "enrolled", "none")
DLIB_FACES = ("detect", "full", "detect_or_full")
DLIB_PACKAGES = "pip install --no-deps face-recognition-models==0.3.0 dlib-bin==20.0.1.post1"
# The dlib-models README: trained from scratch on about 3 million faces of 7,485 people
# (FaceScrub, VGG Face and web images), avoiding overlap with the identities in LFW.
DLIB_TRAINED_ON = "about 3M faces of 7,485 people, no LFW identities (dlib-models README)"
DLIB_SIZE = 150     # dlib's face chip side; LFW's shared crops are 128x128
DEFAULT_SIZE = 84   # a random-weight backbone with no input size of its own
BLOCK = 512         # images decoded at a time (224x224x3 uint8: 77 MB)


# ------------------------------------------------------------------ split


@dataclasses.dataclass(frozen=True)
class People:
  """The known, unknown and stranger names of a folder (step 2)."""
  known: tuple[str, ...]
  unknown: tuple[str, ...]
  strangers: tuple[str, ...]


def check_config(cfg) -> None:
  """Refuses impossible settings before anything loads."""
  if cfg.calibration not in CALIBRATIONS:
    raise ValueError(f"--config.calibration={cfg.calibration!r}: use one of {CALIBRATIONS}.")
  if not 0.0 < cfg.known_fraction < 1.0:
    raise ValueError(f"--config.known_fraction={cfg.known_fraction}: pass a fraction in (0, 1) "
                     "of the eligible people to enroll (the rest are unknown).")
  if cfg.enroll < 1:
    raise ValueError(f"--config.enroll={cfg.enroll}: enroll at least 1 image per person.")
  need = cfg.enroll + (2 if cfg.calibration == "known" else 1)
  if cfg.data.min_per_class < need:
    what = ("calibration and 1 test image" if cfg.calibration == "known" else "test image")
    raise ValueError(f"--config.data.min_per_class={cfg.data.min_per_class} but each known "
                     f"person needs enroll={cfg.enroll} + 1 {what}: pass "
                     f"--config.data.min_per_class={need} or a smaller --config.enroll.")
  if cfg.calibration == "known" and not 0.0 < cfg.calibration_fraction < 1.0:
    raise ValueError(f"--config.calibration_fraction={cfg.calibration_fraction}: pass a "
                     "fraction in (0, 1) of each known person's non-enrolled images.")
  if cfg.stranger_probes and cfg.calibration == "strangers":
    raise ValueError("--config.stranger_probes with --config.calibration=strangers: the "
                     "strangers set the threshold and cannot also be test probes.")
  if cfg.center not in CENTERS:
    raise ValueError(f"--config.center={cfg.center!r}: use one of {CENTERS}.")
  if cfg.model == "dlib" and cfg.dlib_face not in DLIB_FACES:
    raise ValueError(f"--config.dlib_face={cfg.dlib_face!r}: use one of {DLIB_FACES}.")
  if cfg.images_per_call < 1 or cfg.image_size < 0 or cfg.data.max_people < 0:
    raise ValueError("--config.images_per_call must be >= 1, image_size and data.max_people "
                     ">= 0.")


def split_people(counts: dict[str, int], cfg, root: str = "the folder") -> People:
  """Step 2 of the protocol from {person: image count}."""
  eligible = sorted(p for p, n in counts.items() if n >= cfg.data.min_per_class)
  strangers = tuple(sorted(p for p, n in counts.items() if n < cfg.data.min_per_class))
  rng = np.random.default_rng([cfg.seed, 0])
  order = [eligible[i] for i in rng.permutation(len(eligible))]
  if cfg.data.max_people:
    order = order[:cfg.data.max_people]
  n_known = int(round(cfg.known_fraction * len(order)))
  if n_known < 2 or len(order) - n_known < 1:
    raise DataError(
        f"{root} has {len(order)} people with >= {cfg.data.min_per_class} images (of "
        f"{len(counts)} class folders){' kept by data.max_people' if cfg.data.max_people else ''}"
        f": known_fraction={cfg.known_fraction} gives {n_known} known and "
        f"{len(order) - n_known} unknown; open-set recognition needs at least 2 known and 1 "
        "unknown. Add people (person/*.jpg folders), lower --config.data.min_per_class, or "
        "change --config.known_fraction.")
  return People(tuple(sorted(order[:n_known])), tuple(sorted(order[n_known:])), strangers)


def assign_images(people: People, images_of: dict[str, np.ndarray], cfg
                  ) -> dict[str, np.ndarray]:
  """Step 3: {'enroll', 'calibration', 'known_probes'} image indices of the known people.

  `images_of[person]`: that person's usable image indices, in path order.
  """
  roles = {"enroll": [], "calibration": [], "known_probes": []}
  need = cfg.enroll + (2 if cfg.calibration == "known" else 1)
  for person in people.known:
    idx = np.asarray(images_of[person])
    if len(idx) < need:
      raise DataError(f"{person} has {len(idx)} usable images, fewer than the {need} a known "
                      f"person needs (enroll={cfg.enroll}, then calibration and test images): "
                      "fix or remove its unusable images (for dlib: --config.dlib_face="
                      "detect_or_full).")
    rng = np.random.default_rng([cfg.seed, 1, zlib.crc32(person.encode("utf-8"))])
    idx = idx[rng.permutation(len(idx))]
    rest = idx[cfg.enroll:]
    c = 0
    if cfg.calibration == "known":
      c = min(len(rest) - 1, max(1, int(round(cfg.calibration_fraction * len(rest)))))
    roles["enroll"].append(idx[:cfg.enroll])
    roles["calibration"].append(rest[:c])
    roles["known_probes"].append(rest[c:])
  return {k: np.concatenate(v).astype(np.int64) for k, v in roles.items()}


# ------------------------------------------------------------------ embedders


@dataclasses.dataclass(frozen=True)
class Embedder:
  """uint8 [B, size, size, 3] images -> float32 [B, D] (a NaN row: no embedding)."""
  embed: Callable[[np.ndarray], np.ndarray]
  size: int    # the side images are decoded at
  tag: str     # names its cache file: model, weights digest, size
  facts: dict  # model, weights, weights_sha256, pretrained_on, image_size


def backbone_embedder(cfg) -> Embedder:
  """A backbone of fsl_jax.models with its weights, as experiments.evaluate --model loads it
  (`pretrained.load_backbone`), built at the first image to embed: a rerun whose images are
  all in the cache loads no model."""
  from fsl_jax import models  # pylint: disable=g-import-not-at-top
  from fsl_jax.models import pretrained  # pylint: disable=g-import-not-at-top
  from fsl_jax.models import torch_weights  # pylint: disable=g-import-not-at-top
  models.MODELS.get(cfg.model)  # an unknown name is refused with the close ones
  name = (cfg.model if cfg.model in pretrained.WEIGHTS.names()
          else pretrained.weights_for_model(cfg.model))
  default = pretrained.WEIGHTS.get(name).size if name else None
  if cfg.weights == pretrained.RANDOM:
    weights, digest = pretrained.RANDOM, None
  else:
    if name is None:
      pretrained.load_backbone(cfg.model, cfg.weights or None)  # refused, naming the fix
    path, _ = pretrained.resolve_path(name, cfg.weights or None)
    weights = os.path.abspath(path)
    # The file load_variables reports the digest of (a folder's weight file).
    digest = torch_weights.sha256_of(pretrained.weight_file(path))[:16]
  size = cfg.image_size or default or DEFAULT_SIZE
  loaded = {}

  def apply(x_BxSxSx3: np.ndarray) -> np.ndarray:
    if not loaded:
      import jax  # pylint: disable=g-import-not-at-top
      from fsl_jax.data.sources import as_float  # pylint: disable=g-import-not-at-top
      model, variables, facts = pretrained.load_backbone(
          cfg.model, cfg.weights or None, size=cfg.image_size or None, seed=cfg.seed)
      if facts["weights_sha256"] != digest or (facts["image_size"] or size) != size:
        raise RuntimeError(f"{cfg.model}: loaded {facts}, expected weights {digest} at {size}.")
      loaded["fn"] = functools.partial(
          jax.jit(lambda v, x: model.apply(v, as_float(x), train=False)), variables)
    return np.asarray(loaded["fn"](x_BxSxSx3), np.float32).reshape(len(x_BxSxSx3), -1)

  def embed(x_BxSxSx3: np.ndarray) -> np.ndarray:
    b = min(cfg.images_per_call, len(x_BxSxSx3))
    out = []
    for lo in range(0, len(x_BxSxSx3), b):
      chunk = x_BxSxSx3[lo:lo + b]
      n = len(chunk)
      if n < b:  # one compiled shape: pad the last call
        chunk = np.concatenate([chunk, np.zeros((b - n,) + chunk.shape[1:], chunk.dtype)])
      out.append(apply(chunk)[:n])
    return np.concatenate(out)

  pretrained_on = pretrained.WEIGHTS.get(name).pretrained_on if digest else None
  return Embedder(embed, size, f"{cfg.model}-{digest or f'random{cfg.seed}'}-{size}", {
      "model": cfg.model, "weights": weights, "weights_sha256": digest,
      "pretrained_on": pretrained_on, "image_size": size})


def dlib_paths() -> dict[str, str]:
  """The model files of the installed face_recognition_models package (never imported: it
  needs pkg_resources, and `import face_recognition` quits the process when that fails)."""
  spec = importlib.util.find_spec("face_recognition_models")
  folders = list(spec.submodule_search_locations or []) if spec else []
  names = {"recognition": "dlib_face_recognition_resnet_model_v1.dat",
           "landmarks": "shape_predictor_5_face_landmarks.dat"}
  for folder in folders:
    paths = {k: os.path.join(folder, "models", v) for k, v in names.items()}
    if all(os.path.isfile(p) for p in paths.values()):
      return paths
  raise ValueError(f"--config.model=dlib needs the face_recognition_models package's model "
                   f"files (not found): {DLIB_PACKAGES}.")


def dlib_embedder(cfg) -> Embedder:
  """The face_recognition library's embedding: dlib's 29-layer ResNet, 128-d, on a 150x150
  chip aligned by the 5-point landmark model, as face_recognition.face_encodings computes it
  (one jitter, padding 0.25).

  The landmarks need a face box: `dlib_face='detect'` takes the largest box of dlib's HOG
  frontal detector (no upsampling), an image with none gets no embedding (it is dropped
  and counted); 'full' takes the whole image as the box (LFW's shared crops are centred
  faces); 'detect_or_full' (default) detects and falls back to the whole image.

  Measured on the shared LFW crops decoded at 150 px: the detector finds no face in 47 of
  the 4,324 images of the people with >= 10 (1.1%; two more images give two boxes). On
  the default split (79 known, K=5, uncentred), 'detect_or_full' gives DIR@FAR1% 0.954,
  known accuracy 0.995, AUROC 0.996; 'full' 0.952, 0.990, 0.994. On 40 of the people,
  'detect' dropped 9 of 791 images and scored DIR 0.985 on the rest against 0.963 for
  both others on all (not comparable: the hard images are gone).
  """
  try:
    import dlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f"--config.model=dlib needs dlib (PyPI dlib-bin): {DLIB_PACKAGES}. Never "
                     "install dlib and dlib-bin together.") from None
  paths = dlib_paths()
  detector = dlib.get_frontal_face_detector()
  landmarks = dlib.shape_predictor(paths["landmarks"])
  net = dlib.face_recognition_model_v1(paths["recognition"])
  mode = cfg.dlib_face

  def embed(x_BxSxSx3: np.ndarray) -> np.ndarray:
    out = np.full((len(x_BxSxSx3), 128), np.nan, np.float32)
    for i, img in enumerate(x_BxSxSx3):
      img = np.ascontiguousarray(img)
      box = None
      if mode != "full":
        boxes = list(detector(img, 0))
        if boxes:
          box = max(boxes, key=lambda r: r.area())
      if box is None and mode != "detect":
        box = dlib.rectangle(0, 0, img.shape[1] - 1, img.shape[0] - 1)
      if box is not None:
        out[i] = np.asarray(net.compute_face_descriptor(img, landmarks(img, box)), np.float32)
    return out

  with open(paths["recognition"], "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:16]
  size = cfg.image_size or DLIB_SIZE
  return Embedder(embed, size, f"dlib-{digest}-{size}-{mode}", {
      "model": "dlib", "weights": paths["recognition"], "weights_sha256": digest,
      "pretrained_on": DLIB_TRAINED_ON, "image_size": size,
      "dlib_face": mode})


def make_embedder(cfg) -> Embedder:
  """The embedder of `cfg`, built once per process for the same settings."""
  return _embedder(cfg.model, cfg.weights, int(cfg.image_size), int(cfg.seed),
                   int(cfg.images_per_call), cfg.dlib_face if cfg.model == "dlib" else "")


@functools.lru_cache(maxsize=2)
def _embedder(model, weights, image_size, seed, images_per_call, dlib_face) -> Embedder:
  cfg = types.SimpleNamespace(model=model, weights=weights, image_size=image_size, seed=seed,
                              images_per_call=images_per_call, dlib_face=dlib_face)
  return dlib_embedder(cfg) if model == "dlib" else backbone_embedder(cfg)


# ------------------------------------------------------------------ embedding cache


def _key(f) -> str:
  return "/".join(f.parts) + "|%d|%d" % tuple(f.stamp)


def embed_cached(files: list, embedder: Embedder, path: str,
                 skip_bad_images: bool = False) -> tuple[np.ndarray, int]:
  """([N, D] embeddings of `files` (fsl_jax.data.folders.ImageFile; NaN rows: unreadable or
  no face), how many were embedded now). Rows already in the .npz at `path` (keyed by path,
  size and mtime) are reused; the new ones are added to it."""
  from fsl_jax.data import cache, folders  # pylint: disable=g-import-not-at-top
  keys = [_key(f) for f in files]
  have: dict[str, np.ndarray] = {}
  if os.path.exists(path):
    try:
      with np.load(path, allow_pickle=False) as z:
        if str(z["tag"]) == embedder.tag:
          have = dict(zip(z["keys"].tolist(), z["embeddings"]))
    except (OSError, ValueError, KeyError, EOFError) as err:
      cache.say("Ignoring the unreadable embedding cache %s (%s); embedding again", path, err)
  missing = [i for i, k in enumerate(keys) if k not in have]
  t0 = time.time()
  for lo in range(0, len(missing), BLOCK):
    block = missing[lo:lo + BLOCK]
    images = np.zeros((len(block), embedder.size, embedder.size, 3), np.uint8)
    # Threads, not forked processes: JAX's threads are running by now.
    kept = folders.decode_files([files[i] for i in block], embedder.size,
                                skip_bad_images=skip_bad_images, out=images, processes=False)
    emb = embedder.embed(images)
    emb[~kept] = np.nan
    have.update({keys[i]: e for i, e in zip(block, emb)})
    done = lo + len(block)
    cache.say("embedded %d/%d images with %s (%.1f images/s)", done, len(missing),
              embedder.facts["model"], done / max(time.time() - t0, 1e-9))
  if missing:
    _save_atomic(path, tag=np.asarray(embedder.tag), keys=np.asarray(list(have), np.str_),
                 embeddings=np.stack(list(have.values())).astype(np.float32))
  return np.stack([have[k] for k in keys]).astype(np.float32), len(missing)


def _save_atomic(path: str, **arrays) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


# ------------------------------------------------------------------ the run


def _person(f, root: str) -> str:
  if len(f.parts) < 2:
    raise DataError(f"{f.where} is directly in {root}, outside any person folder: put each "
                    "person's images in a folder named after them (person/*.jpg).")
  return "/".join(f.parts[:-1])


def centring(cfg) -> bool:
  """Whether embeddings are centred on the enrolled mean (`center`, module docstring)."""
  return cfg.center == "enrolled" or (cfg.center == "auto" and cfg.model != "dlib")


def impostor_scores(emb_SxD: np.ndarray, person_S: np.ndarray, enroll_idx: np.ndarray,
                    cal_idx: np.ndarray, cfg) -> np.ndarray:
  """[len(cal_idx)] best scores of known calibration images in the gallery their person is
  left out of: its centre (when centring) and prototypes from the other people's enrolled
  images, as if that person had never been enrolled.

  Leaving out only the own column (`Gallery.impostor_scores`) would keep the person's
  images in the centre: centred on a mean that includes them, the known people point
  away from each other (C centred class means sum to zero; cosine about -1/(C-1)), so
  the impostor scores would come out low and the threshold too low. On LFW with
  EfficientNet-Lite0 (79 known people) far_measured went from 0.0117 to 0.0112.
  """
  out = np.zeros(len(cal_idx), np.float32)
  for person in np.unique(person_S[cal_idx]):
    others = enroll_idx[person_S[enroll_idx] != person]
    mine = np.flatnonzero(person_S[cal_idx] == person)
    center_D = emb_SxD[others].mean(0) if centring(cfg) else 0.0
    g = openset.Gallery(cfg.gallery.metric, cfg.gallery.mode)
    g.enroll(emb_SxD[others] - center_D, person_S[others])
    out[mine] = g.best(emb_SxD[cal_idx[mine]] - center_D)[1]
  return out


def run(cfg, workdir: str) -> dict:
  """The protocol of the module docstring; returns the result row (also appended to
  WORKDIR/results.jsonl) and writes WORKDIR/gallery.npz and gallery.json."""
  start = time.time()
  check_config(cfg)
  from fsl_jax.data import folders  # pylint: disable=g-import-not-at-top
  from fsl_jax.train import loop  # pylint: disable=g-import-not-at-top
  workdir = loop.check_writable_dir(workdir)
  root = cfg.data.root
  use_strangers = cfg.calibration == "strangers" or cfg.stranger_probes
  with folders.list_images(root) as files:
    person_N = [_person(f, root) for f in files]
    counts: dict[str, int] = {}
    for p in person_N:
      counts[p] = counts.get(p, 0) + 1
    people = split_people(counts, cfg, root)
    if use_strangers and not people.strangers:
      raise DataError(f"{root} has no strangers (people with fewer than min_per_class="
                      f"{cfg.data.min_per_class} images) to "
                      f"{'calibrate on' if cfg.calibration == 'strangers' else 'probe with'}: "
                      "use --config.calibration=known without --config.stranger_probes.")
    taking = set(people.known + people.unknown + (people.strangers if use_strangers else ()))
    sel = [i for i, p in enumerate(person_N) if p in taking]
    embedder = make_embedder(cfg)
    emb_SxD, embedded = embed_cached(
        [files[i] for i in sel], embedder,
        os.path.join(workdir, "embeddings", embedder.tag + ".npz"),
        bool(cfg.data.skip_bad_images))
  person_S = np.asarray([person_N[i] for i in sel], np.str_)
  ok_S = np.all(np.isfinite(emb_SxD), -1)
  images_of = {p: np.flatnonzero((person_S == p) & ok_S) for p in people.known}
  roles = assign_images(people, images_of, cfg)
  unknown_idx = np.flatnonzero(np.isin(person_S, people.unknown) & ok_S)
  stranger_idx = np.flatnonzero(np.isin(person_S, people.strangers) & ok_S)
  enroll_idx = roles["enroll"]

  center_D = (emb_SxD[enroll_idx].mean(0) if centring(cfg)
              else np.zeros(emb_SxD.shape[1], np.float32))
  x_SxD = np.where(ok_S[:, None], emb_SxD - center_D, 0.0).astype(np.float32)
  gallery = openset.Gallery(cfg.gallery.metric, cfg.gallery.mode)
  gallery.enroll(x_SxD[enroll_idx], person_S[enroll_idx])
  if cfg.calibration == "known":
    cal_idx = roles["calibration"]
    impostor = impostor_scores(emb_SxD, person_S, enroll_idx, cal_idx, cfg)
  else:
    cal_idx = stranger_idx
    impostor = gallery.best(x_SxD[cal_idx])[1]
  threshold = openset.calibrate_far(impostor, FAR)
  probes = [roles["known_probes"], unknown_idx] + ([stranger_idx] if cfg.stranger_probes else [])
  probe_idx = np.concatenate(probes)
  m = openset.evaluate(gallery, x_SxD[probe_idx], person_S[probe_idx], FAR, threshold)
  oracle = openset.evaluate(gallery, x_SxD[probe_idx], person_S[probe_idx], FAR)

  gallery.save(os.path.join(workdir, "gallery.npz"))
  center_path = os.path.join(workdir, "gallery_center.npy")
  if centring(cfg):
    np.save(center_path, center_D.astype(np.float32))
  elif os.path.exists(center_path):  # an earlier run's; this gallery is not centred
    os.remove(center_path)
  r6 = lambda v: round(float(v), 6)
  result = {
      "known_people": len(people.known), "unknown_people": len(people.unknown),
      "enroll": int(cfg.enroll), "known_accuracy": r6(m["known_accuracy"]),
      "dir_at_far1": r6(m["dir"]), "auroc": r6(m["auroc"]), "model": cfg.model,
      "threshold": r6(threshold), "far_measured": r6(m["far_actual"]),
      "seconds": round(time.time() - start, 1),
      "tar_at_far1": r6(m["tar"]), "dir_at_far1_oracle": r6(oracle["dir"]),
      "known_probes": m["known"], "unknown_probes": m["unknown"],
      "calibration": cfg.calibration, "calibration_probes": int(len(cal_idx)),
      "stranger_probes": bool(cfg.stranger_probes), "dropped_images": int((~ok_S).sum()),
      "embedded_now": int(embedded), "seed": int(cfg.seed),
      "known_fraction": float(cfg.known_fraction), "min_per_class": int(cfg.data.min_per_class),
      "center": "enrolled" if centring(cfg) else "none", "gallery_mode": cfg.gallery.mode,
      "data_root": root,
      **{k: embedder.facts[k] for k in ("weights", "weights_sha256", "pretrained_on",
                                        "image_size")},
      **({"dlib_face": cfg.dlib_face} if cfg.model == "dlib" else {}),
  }
  with open(os.path.join(workdir, "gallery.json"), "w") as f:
    json.dump({"gallery": "gallery.npz", "threshold": threshold, "far": FAR,
               "center": "gallery_center.npy" if centring(cfg) else None,
               "metric": cfg.gallery.metric, "mode": cfg.gallery.mode,
               "known_people": list(people.known), "embedding": embedder.facts,
               "embeddings_cache": os.path.join("embeddings", embedder.tag + ".npz"),
               "config": cfg.to_dict()}, f, indent=1)
  loop.append_result(workdir, result)
  return result
