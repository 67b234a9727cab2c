"""Open-set recognition on embeddings: enroll a few examples, recognise or say unknown.

Any backbone (an image CNN, a sentence encoder) turns examples into
embeddings [N, D]; a `Gallery` holds the enrolled ones with their labels and
scores queries against each known class:

    g = Gallery()                       # cosine to prototypes
    g.enroll(support_NxD, names)        # K examples of each known class
    t = calibrate_far(g.best(impostor_QxD)[1], far=0.01)
    g.predict(query_QxD, t)             # a label, or UNKNOWN

Scoring. `mode='prototype'`: a class's score is the similarity to its
prototype, the mean of its L2-normalised embeddings, re-normalised (the
L2-normalised class mean of SimpleShot's L2N, Wang et al. 2019; ProtoNet's
raw mean with `normalize=False`). `mode='nearest'`: the similarity to its most
similar enrolled example. `metric='cosine'` (default) or 'sq_euclidean'
(minus the squared distance; on normalised vectors it is 2 * cosine - 2).
Enrolling or removing examples needs no retraining: prototypes are
recomputed from the stored embeddings. Scoring is numpy (float32 matmuls):
a gallery's few thousand rows need no accelerator, and eager jax.numpy
compiled a program per new query-batch shape (2.2 s of CPU for 14 shapes
against numpy's 0.02 s, measured on this module's first version).

Decisions. A query is accepted as its best-scoring class when that best
score is >= the threshold, and is UNKNOWN otherwise. Two calibrations:
  * `calibrate_far(impostor_best_scores, far)`: from probes of classes NOT
    enrolled (real unknowns, or known held-out probes scored without their
    own class, `impostor_best_scores`): the lowest threshold accepting at
    most `far` of them. It controls false accepts directly.
  * `calibrate_frr(genuine_best_scores, frr)`: from held-out probes of the
    enrolled classes only, when no unknown data exists: the highest threshold
    rejecting at most `frr` of them. It controls false rejects; the false
    accept rate it gives is whatever unknowns happen to score.

`open_set_metrics` evaluates a score matrix on known and unknown probes.
Labels are kept as strings (so they round-trip through `save`/`load`); the
file is one .npz with a format name and version.
"""

from __future__ import annotations

import math
import os
import tempfile
import zipfile

import numpy as np

UNKNOWN = "<unknown>"  # the label `predict` gives a rejected query; never an enrollable label
FORMAT = "fsl_jax.openset.Gallery"
VERSION = 1
METRICS = ("cosine", "sq_euclidean")
MODES = ("prototype", "nearest")


def _l2n(x_NxD: np.ndarray) -> np.ndarray:
  norm_Nx1 = np.linalg.norm(x_NxD, axis=-1, keepdims=True)
  return x_NxD / np.maximum(norm_Nx1, 1e-12)


def _embeddings(x, what: str, dim: int | None = None) -> np.ndarray:
  """x as float32 [N, D]; errors name the fix."""
  x = np.asarray(x)
  if x.ndim == 1 and dim is not None and x.shape[0] == dim:
    x = x[None]
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"{what} has shape {x.shape}: pass a non-empty [N, D] array of embeddings.")
  if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
    raise ValueError(f"{what} has dtype {x.dtype}: pass real-valued embeddings.")
  if dim is not None and x.shape[1] != dim:
    raise ValueError(f"{what} are {x.shape[1]}-d; the gallery holds {dim}-d embeddings: embed "
                     "with the backbone that built the gallery (or start a new Gallery).")
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{what} hold NaN or inf: check the backbone's output before enrolling "
                     "or scoring.")
  return x


def _scores_fn(q_QxD, g_NxD, starts_C, metric: str, nearest: bool) -> np.ndarray:
  """[Q, C] class scores: against the C prototypes (g = prototypes), or, when `nearest`,
  the per-class max over the N examples (g's rows grouped by class, class c's from
  starts_C[c])."""
  if metric == "cosine":
    s_QxN = q_QxD @ g_NxD.T
  else:
    d = (np.sum(q_QxD ** 2, -1, keepdims=True) - 2.0 * q_QxD @ g_NxD.T
         + np.sum(g_NxD ** 2, -1)[None, :])
    s_QxN = -np.maximum(d, 0.0)
  return np.maximum.reduceat(s_QxN, starts_C, axis=1) if nearest else s_QxN


class Gallery:
  """Enrolled embeddings and labels of the known classes; scores queries against them.

  Columns of `scores` follow `classes` (in order of first enrollment). Each
  enrolled example gets an integer id (returned by `enroll`, kept by
  `save`/`load`) for `remove_examples`.
  """

  def __init__(self, metric: str = "cosine", mode: str = "prototype", normalize: bool = True):
    if metric not in METRICS:
      raise ValueError(f"Gallery metric={metric!r}: use one of {METRICS}.")
    if mode not in MODES:
      raise ValueError(f"Gallery mode={mode!r}: use one of {MODES} ('prototype': the class "
                       "mean; 'nearest': the most similar enrolled example).")
    self.metric, self.mode, self.normalize = metric, mode, bool(normalize)
    self.embeddings_NxD = np.zeros((0, 0), np.float32)
    self.labels_N = np.zeros((0,), np.str_)
    self.ids_N = np.zeros((0,), np.int64)
    self.next_id = 0
    self._cache = None

  # ------------------------------------------------------------- bookkeeping

  @property
  def dim(self) -> int | None:
    return self.embeddings_NxD.shape[1] if len(self.labels_N) else None

  @property
  def classes(self) -> tuple[str, ...]:
    """The known classes (the columns of `scores`), ordered by their first example still
    enrolled (the order of enrollment until examples are removed)."""
    _, first = np.unique(self.labels_N, return_index=True)
    return tuple(str(self.labels_N[i]) for i in sorted(first))

  def __len__(self) -> int:
    return len(self.labels_N)

  def enroll(self, embeddings_NxD, labels_N) -> np.ndarray:
    """Adds N examples (new classes, or more examples of known ones); returns their ids."""
    labels = np.asarray(labels_N)
    if labels.ndim == 0:
      labels = labels[None]
    x = _embeddings(embeddings_NxD, "enroll's embeddings", self.dim)
    if labels.ndim != 1 or len(labels) != len(x):
      raise ValueError(f"enroll: {len(x)} embeddings but labels of shape {labels.shape}: pass "
                       "one label per embedding row.")
    labels = np.asarray([str(label) for label in labels.tolist()], np.str_)
    if np.any(labels == UNKNOWN) or np.any(labels == ""):
      raise ValueError(f"enroll: {UNKNOWN!r} and '' are reserved (the unknown marker): rename "
                       "that class.")
    ids = np.arange(self.next_id, self.next_id + len(x), dtype=np.int64)
    base = self.embeddings_NxD if len(self) else np.zeros((0, x.shape[1]), np.float32)
    self.embeddings_NxD = np.concatenate([base, x])
    self.labels_N = np.concatenate([self.labels_N.astype(np.str_), labels])
    self.ids_N = np.concatenate([self.ids_N, ids])
    self.next_id += len(x)
    self._cache = None
    return ids

  def _keep(self, keep_N: np.ndarray) -> None:
    self.embeddings_NxD = self.embeddings_NxD[keep_N]
    self.labels_N, self.ids_N = self.labels_N[keep_N], self.ids_N[keep_N]
    self._cache = None

  def remove(self, label) -> int:
    """Removes every example of class `label`; returns how many."""
    hit = self.labels_N == str(label)
    if not hit.any():
      raise ValueError(f"remove: no class {str(label)!r} is enrolled; enrolled: "
                       f"{list(self.classes)}.")
    self._keep(~hit)
    return int(hit.sum())

  def remove_examples(self, ids) -> None:
    """Removes single examples by the ids `enroll` returned (a class with none left is gone)."""
    ids = np.atleast_1d(np.asarray(ids, np.int64))
    missing = np.setdiff1d(ids, self.ids_N)
    if len(missing):
      raise ValueError(f"remove_examples: ids {missing.tolist()} are not enrolled: pass ids "
                       "that enroll returned and that were not removed yet.")
    self._keep(~np.isin(self.ids_N, ids))

  # ------------------------------------------------------------- scoring

  def _prepared(self):
    """(gallery rows [C, D] or [N, D] grouped by class, class starts [C], classes), cached
    until the next change."""
    if self._cache is None:
      if not len(self):
        raise ValueError("The gallery is empty: enroll(embeddings, labels) at least one class "
                         "before scoring.")
      classes = self.classes
      index = {c: i for i, c in enumerate(classes)}
      seg_N = np.asarray([index[str(label)] for label in self.labels_N], np.int64)
      order_N = np.argsort(seg_N, kind="stable")
      counts_C = np.bincount(seg_N, minlength=len(classes))
      starts_C = np.concatenate([[0], np.cumsum(counts_C)[:-1]])
      x = self.embeddings_NxD.astype(np.float64)
      if self.normalize or self.metric == "cosine":
        x = _l2n(x)
      if self.mode == "prototype":
        sums_CxD = np.zeros((len(classes), x.shape[1]))
        np.add.at(sums_CxD, seg_N, x)
        x = sums_CxD / counts_C[:, None]
        if self.normalize or self.metric == "cosine":
          x = _l2n(x)
      else:
        x = x[order_N]
      self._cache = (x.astype(np.float32), starts_C, classes)
    return self._cache

  def scores(self, queries_QxD) -> np.ndarray:
    """[Q, C] float32 similarity of each query to each class of `classes` (higher: more
    similar)."""
    g, starts_C, _ = self._prepared()
    q = _embeddings(queries_QxD, "queries", self.dim)
    if self.normalize or self.metric == "cosine":
      q = _l2n(q.astype(np.float64)).astype(np.float32)
    return _scores_fn(q, g, starts_C, self.metric, self.mode == "nearest")

  def best(self, queries_QxD) -> tuple[np.ndarray, np.ndarray]:
    """(best class labels [Q] (str), best scores [Q]) with no threshold (closed set)."""
    s_QxC = self.scores(queries_QxD)
    top_Q = np.argmax(s_QxC, -1)
    return np.asarray(self._prepared()[2])[top_Q], s_QxC[np.arange(len(top_Q)), top_Q]

  def predict(self, queries_QxD, threshold: float) -> np.ndarray:
    """[Q] labels (str): the best class when its score is >= threshold, else UNKNOWN."""
    labels_Q, best_Q = self.best(queries_QxD)
    return decide(labels_Q, best_Q, threshold)

  def impostor_scores(self, queries_QxD, labels_Q) -> np.ndarray:
    """[Q] best score of each known held-out query among the OTHER classes: the score it
    would get were its class not enrolled (pseudo-unknown probes for `calibrate_far`)."""
    s_QxC = self.scores(queries_QxD)
    labels = np.asarray([str(label) for label in np.atleast_1d(labels_Q).tolist()])
    index = {c: i for i, c in enumerate(self.classes)}
    if len(labels) != len(s_QxC) or any(label not in index for label in labels):
      raise ValueError("impostor_scores: pass one enrolled class label per query "
                       f"(enrolled: {list(index)}).")
    if len(index) < 2:
      raise ValueError("impostor_scores needs at least 2 enrolled classes: a query's own "
                       "class is left out.")
    s_QxC = s_QxC.copy()
    s_QxC[np.arange(len(labels)), [index[label] for label in labels]] = -np.inf
    return s_QxC.max(-1)

  # ------------------------------------------------------------- files

  def save(self, path: str) -> None:
    """Writes one .npz (atomically: a temporary file in the same folder, then os.replace)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".gallery-", suffix=".tmp", dir=folder)
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez(f, format=np.asarray(FORMAT), version=np.asarray(VERSION, np.int64),
                 metric=np.asarray(self.metric), mode=np.asarray(self.mode),
                 normalize=np.asarray(self.normalize), next_id=np.asarray(self.next_id),
                 embeddings=self.embeddings_NxD, labels=self.labels_N.astype(np.str_),
                 ids=self.ids_N)
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise

  @classmethod
  def load(cls, path: str) -> "Gallery":
    """The Gallery `save` wrote; another format, version or a damaged file is refused."""
    if not os.path.exists(path):
      raise FileNotFoundError(f"No gallery file at {path}: write one with Gallery.save(path).")
    fix = "re-enroll the examples and save the gallery again with Gallery.save"
    try:
      with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
      raise ValueError(f"{path} is not a readable gallery file ({type(e).__name__}: {e}): "
                       f"{fix}.") from e
    if "format" not in data or str(data["format"]) != FORMAT:
      raise ValueError(f"{path} is not a {FORMAT} file (format "
                       f"{str(data.get('format', 'missing'))!r}): {fix}.")
    version = int(data["version"]) if "version" in data else None
    if version != VERSION:
      raise ValueError(f"{path} has gallery format version {version}; this fsl_jax reads "
                       f"version {VERSION}: load it with the fsl_jax that wrote it, or {fix}.")
    need = ("metric", "mode", "normalize", "next_id", "embeddings", "labels", "ids")
    missing = [k for k in need if k not in data]
    if missing:
      raise ValueError(f"{path} lacks {missing}: the file is damaged; {fix}.")
    emb, labels, ids = data["embeddings"], data["labels"], data["ids"]
    n = len(labels)
    if (emb.ndim != 2 or len(emb) != n or ids.shape != (n,) or labels.ndim != 1
        or (n and len(np.unique(ids)) != n) or (n and int(data["next_id"]) <= ids.max())):
      raise ValueError(f"{path} has mismatched arrays (embeddings {emb.shape}, labels "
                       f"{labels.shape}, ids {ids.shape}): the file is damaged; {fix}.")
    g = cls(str(data["metric"]), str(data["mode"]), bool(data["normalize"]))
    if n:
      g.enroll(emb, labels)
    g.ids_N, g.next_id = ids.astype(np.int64), int(data["next_id"])
    return g


# ------------------------------------------------------------- decisions


def decide(labels_Q, best_Q, threshold: float) -> np.ndarray:
  """[Q] labels: labels_Q where best_Q >= threshold, else UNKNOWN (compared in float64)."""
  try:
    threshold = float(threshold)
  except (TypeError, ValueError):
    threshold = math.nan
  if math.isnan(threshold):
    raise ValueError("threshold is not a number: pass one, e.g. from calibrate_far.")
  keep = np.asarray(best_Q, np.float64) >= float(threshold)
  return np.where(keep, np.asarray(labels_Q, np.str_), UNKNOWN)


def _rate(value: float, name: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
      0.0 < float(value) < 1.0):
    raise ValueError(f"{name}={value!r}: pass a rate in (0, 1), e.g. 0.01 for 1%.")
  return float(value)


def _scores_1d(scores, what: str) -> np.ndarray:
  s = np.asarray(scores)
  if s.ndim != 1 or len(s) == 0 or s.dtype.kind not in "fiu":
    raise ValueError(f"{what} has shape {s.shape}: pass a non-empty 1-d array of best scores.")
  if np.any(np.isnan(s)):
    raise ValueError(f"{what} hold NaN: drop those probes (or fix the embeddings).")
  return s if np.issubdtype(s.dtype, np.floating) else s.astype(np.float64)


def _count(rate: float, n: int) -> int:
  """floor(rate * n), immune to 0.29 * 100 = 28.999..."""
  return int(math.floor(rate * n + 1e-9))


def calibrate_far(impostor_best_scores, far: float = 0.01) -> float:
  """The lowest threshold at which at most `far` of the impostor probes are accepted.

  Impostor probes are of classes not enrolled (real unknowns, or
  `Gallery.impostor_scores` of known held-out probes). With the n scores
  sorted in decreasing order s_1 >= ... >= s_n and k = floor(far * n), the
  threshold is the next float above s_{k+1}: exactly the scores > s_{k+1}
  (at most k; fewer when s_{k+1} ties with higher ones) are accepted, and any
  lower threshold accepts more. k = 0 accepts none.
  """
  far = _rate(far, "far")
  s = _scores_1d(impostor_best_scores, "impostor_best_scores")
  k = _count(far, len(s))
  kth = np.sort(s)[::-1][k]
  return float(np.nextafter(kth, np.asarray(np.inf, s.dtype)))


def calibrate_frr(genuine_best_scores, frr: float = 0.05) -> float:
  """The highest threshold at which at most `frr` of held-out known probes are rejected.

  For a gallery with no unknown data: genuine best scores are
  `Gallery.best(...)[1]` of held-out probes of the enrolled classes. With the
  n scores sorted increasingly s_1 <= ... <= s_n and k = floor(frr * n), the
  threshold is s_{k+1} (the frr-quantile, lower end): scores below it are
  rejected, at most k of them. It bounds false rejects of known probes, NOT
  false accepts of unknowns; use calibrate_far when impostor scores exist.
  """
  frr = _rate(frr, "frr")
  s = _scores_1d(genuine_best_scores, "genuine_best_scores")
  return float(np.sort(s)[_count(frr, len(s))])


# ------------------------------------------------------------- metrics


def midranks(x_N) -> np.ndarray:
  """1-based ranks of x, ties given the mean of the ranks they span."""
  x = np.asarray(x_N)
  order = np.argsort(x, kind="stable")
  xs = x[order]
  starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
  ends = np.r_[starts[1:], len(xs)]                     # group [start, end)
  mean_rank = (starts + ends + 1) / 2.0                 # mean of start+1 .. end
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.repeat(mean_rank, ends - starts)
  return ranks


def auroc(positive_scores, negative_scores) -> float:
  """P(pos > neg) + P(pos = neg) / 2 over all pairs, via the rank-sum (Mann-Whitney U)."""
  p = _scores_1d(positive_scores, "positive_scores").astype(np.float64)
  n = _scores_1d(negative_scores, "negative_scores").astype(np.float64)
  r = midranks(np.concatenate([p, n]))
  u = r[:len(p)].sum() - len(p) * (len(p) + 1) / 2.0
  return float(u / (len(p) * len(n)))


def open_set_metrics(scores_QxC, classes, labels_Q, far: float = 0.01,
                     threshold: float | None = None) -> dict:
  """Open-set recognition metrics of Q probes scored against the C known `classes`.

  A probe is known when its label is one of `classes`, unknown otherwise.
  Each probe's best score is its max over C, its closed-set prediction the
  argmax class, and at threshold t it is accepted when best >= t. Keys:

    threshold: t, given, or else `calibrate_far` of the unknown probes' best
      scores at `far` (at most `far` of them accepted).
    far: the rate asked; far_actual: fraction of unknown probes accepted at t
      (the false alarm rate P_FA(t) of the FRVT 2002 watch-list task,
      Phillips, Grother, Micheals et al., NISTIR 6965, 2003).
    known_accuracy: closed-set accuracy, fraction of known probes whose argmax
      is their class (no threshold).
    dir: detection and identification rate at t (rank 1), fraction of known
      probes both accepted and correctly identified: P_DI(t, 1) of the FRVT
      2002 watch-list task (same report; also Grother, Micheals & Phillips,
      "FRVT 2002 performance metrics", AVBPA 2003). At a threshold calibrated
      on unknowns it is DIR at FAR, e.g. as BLUFR reports it on LFW (Liao et
      al., IJCB 2014). It also equals accuracy on known probes with rejection
      counted wrong (CLINC150's in-scope accuracy with a threshold, Larson et
      al. 2019).
    tar: fraction of known probes accepted at t, right class or not (the
      detection rate, TAR at FAR); tar >= dir.
    unknown_recall / unknown_precision / unknown_f1: UNKNOWN as the positive
      class: recall = rejected unknowns / unknowns (= 1 - far_actual;
      CLINC150's out-of-scope recall), precision = rejected unknowns /
      rejected probes (0 when none is rejected, sklearn's zero_division=0),
      F1 their harmonic mean (0 when both are 0).
    auroc: area under the ROC curve of separating known (positive) from
      unknown probes by the best score, threshold-free; computed as the
      Mann-Whitney U statistic over n_known * n_unknown pairs, ties counted
      1/2 (Hanley & McNeil, Radiology 1982); the max-score baseline of
      Hendrycks & Gimpel (ICLR 2017).
    known / unknown: the probe counts.
  """
  s = np.asarray(scores_QxC)
  classes = [str(c) for c in classes]
  labels = np.asarray([str(label) for label in np.atleast_1d(labels_Q).tolist()], np.str_)
  if s.ndim != 2 or s.shape[1] != len(classes) or s.shape[0] != len(labels):
    raise ValueError(f"open_set_metrics: scores {s.shape}, {len(classes)} classes, "
                     f"{len(labels)} labels: pass [Q, C] scores whose columns are `classes` "
                     "and one label per row.")
  known = np.isin(labels, classes)
  if not known.any() or known.all():
    raise ValueError(f"open_set_metrics: {int(known.sum())} known and {int((~known).sum())} "
                     "unknown probes: pass both (a probe is unknown when its label is not one "
                     "of `classes`).")
  top = np.argmax(s, -1)
  best = s[np.arange(len(top)), top].astype(np.float64)
  if threshold is None:
    threshold = calibrate_far(s[~known].max(-1), far)
  else:
    far = _rate(far, "far")
  accepted = best >= float(threshold)
  correct = np.asarray(classes)[top] == labels
  rejected_unknown = float(np.sum(~accepted & ~known))
  recall = rejected_unknown / float(np.sum(~known))
  n_rejected = float(np.sum(~accepted))
  precision = rejected_unknown / n_rejected if n_rejected else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {
      "threshold": float(threshold), "far": far,
      "far_actual": float(np.mean(accepted[~known])),
      "known_accuracy": float(np.mean(correct[known])),
      "dir": float(np.mean((correct & accepted)[known])),
      "tar": float(np.mean(accepted[known])),
      "unknown_recall": recall, "unknown_precision": precision, "unknown_f1": f1,
      "auroc": auroc(best[known], best[~known]),
      "known": int(known.sum()), "unknown": int((~known).sum()),
  }


def evaluate(gallery: Gallery, queries_QxD, labels_Q, far: float = 0.01,
             threshold: float | None = None) -> dict:
  """`open_set_metrics` of the gallery's scores of the queries (see there)."""
  return open_set_metrics(gallery.scores(queries_QxD), gallery.classes, labels_Q, far, threshold)
