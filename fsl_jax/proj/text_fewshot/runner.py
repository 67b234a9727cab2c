"""`experiments.text_fewshot`: few-shot text classification on a pretrained sentence encoder.

`run(config, workdir)` yields one result dict per setting (the binary prints
each as a JSON line; each is also appended to WORKDIR/results.jsonl first).
Every text is embedded once per (encoder, max_length) and cached under
WORKDIR/embeddings (`encoders.EmbeddingCache`), so a rerun, another method
or another shot count costs no encoder pass.

setting='episodic': for each (ways, shots) in config.ways x config.shots,
`episodes` N-way K-shot Q-query episodes over the classes of `config.split`
(the out-of-scope class, if any, left out). Episode i is drawn by
`fsl_jax.data.episodes.episode_indices` from fold_in(PRNGKey(seed), i) --
the classes and examples the image evaluator (`fsl_jax.train.evaluation`)
and `fsl_jax.data.text.text_episode` draw from the same key and counts.
accuracy is the mean over episodes of the query accuracy, ci95 =
1.96 * std / sqrt(episodes) (as the image evaluator).

setting='generalized': all C classes at once. With a 'train' split of the
same classes (CLINC150, a user's train file) the support set is K examples
per class drawn from it (seeded by `seed`; a class with fewer gives all it
has, and `min_class_shots` says so); otherwise (classes split by class, or
one file) each class of `config.split` gives K seeded examples as support
and its other examples as queries. One fit, then every query is classified;
ci95 is the normal approximation 1.96 * sqrt(acc (1 - acc) / n) over the n
test queries (it ignores the variance of the support draw).

Out-of-scope (when `oos_label` names a class of the test split, e.g.
CLINC150's 'oos'): that class is not enrolled; a query is accepted as its
best class when the method's open-set score (`methods.Method.score`) is >=
a threshold, else called out-of-scope. The threshold is chosen on the 'val'
split alone (its in-scope and oos rows, scored by the same fitted
classifier): the value maximising in-scope accuracy (correct AND accepted,
Larson et al. 2019's in-scope accuracy) + oos recall, the lowest such value
on ties. On the test split: in_scope_accuracy (same definition),
oos_recall / oos_precision / oos_f1 (out-of-scope as the positive class),
auroc (in-scope vs oos by the score, threshold-free), closed_set_accuracy
(in-scope, no threshold) via `fsl_jax.openset.open_set_metrics`; accuracy
is over all test queries with 'out-of-scope' as one more answer.

Methods that adapt the encoder (`methods.Method.frozen` False: 'setfit',
options under `config.setfit`, `adapt.SetFitAdapter`) embed nothing in
advance: an episode fine-tunes a fresh copy of the encoder on its support
set, then embeds its support and queries with it (the same episodes as the
frozen methods); a generalised setting fine-tunes once on its whole support
set and embeds the val and test rows with the result. Its result adds the
options it ran with (e.g. "setfit": {"iterations": 20, ...}); `seconds`
then includes the fine-tuning.

Timing: `seconds` is a setting's wall time, including the embedding of the
texts it needed first (none when cached); `embed_seconds` and
`sentences_embedded` total the run's embedding so far.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import openset
from fsl_jax.data import text as text_lib
from fsl_jax.data.episodes import EpisodeSpec, check_spec, episode_indices
from fsl_jax.data.sources import DataError
from fsl_jax.proj.text_fewshot import data as data_lib
from fsl_jax.proj.text_fewshot import adapt, encoders, methods
from fsl_jax.train import evaluation, loop, metrics as metrics_lib

SETTINGS = ("episodic", "generalized")
# Every key a config may hold (experiments/configs/text_common.py writes them all).
KEYS = ("data.name", "data.path", "data.train_file", "data.val_file", "data.test_file",
        "data.text_column", "data.label_column", "data.max_length", "data.variant",
        "data.class_split", "data.class_sizes", "data.class_seed",
        "encoder", "batch_size", "method", "setting", "split", "ways", "shots", "queries",
        "episodes", "seed", "oos_label") + tuple(f"setfit.{k}" for k in adapt.SETFIT_DEFAULTS)
EPISODES_PER_CALL = 250  # vmapped episodes per jitted call over the embeddings
QUERIES_PER_CALL = 4096  # generalised queries scored per call


# ------------------------------------------------------------------ config

def _flat_keys(config, prefix: str = "") -> list[str]:
  out = []
  for k in config.keys():
    v = config[k]
    out += _flat_keys(v, f"{prefix}{k}.") if hasattr(v, "keys") else [f"{prefix}{k}"]
  return out


def _ints(value, name: str, low: int) -> tuple[int, ...]:
  values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
  if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
    raise loop.ConfigError(f"{name}={value!r}: use an integer >= {low} or a list of them, e.g. "
                           f"--config.{name}=5 or --config.{name}=1,5.")
  return values


def check_config(config) -> None:
  """Refuses unknown or missing keys and values that cannot work, before any work."""
  have = set(_flat_keys(config))
  unknown, missing = sorted(have - set(KEYS)), sorted(set(KEYS) - have)
  if unknown:
    raise loop.ConfigError(f"Unknown config keys {unknown}: experiments.text_fewshot reads "
                           f"{', '.join(KEYS)}.")
  if missing:
    raise loop.ConfigError(f"The config lacks {missing}: start from "
                           "experiments/configs/text_common.py's base().")
  if config.setting not in SETTINGS:
    raise loop.ConfigError(f"setting={config.setting!r}: use one of {', '.join(SETTINGS)}.")
  data_lib.DATASETS.get(config.data.name)
  methods.get(config.method)
  try:
    adapt.check_options(dict(config.setfit))
  except ValueError as e:
    raise loop.ConfigError(str(e)) from None
  _ints(config.ways, "ways", 2)
  _ints(config.shots, "shots", 1)
  for key in ("queries", "episodes", "batch_size", "data.max_length"):
    value = loop.get_key(config, key)
    low = 2 if key == "data.max_length" else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise loop.ConfigError(f"{key}={value!r}: use one integer >= {low}.")


# ------------------------------------------------------------------ embeddings

class Embedder:
  """Cached embeddings of a run; loads the encoder only on the first cache miss."""

  def __init__(self, config, workdir: str):
    self.name = config.encoder
    self.cache = encoders.EmbeddingCache(workdir, encoders.describe_encoder(config.encoder),
                                         config.data.max_length, config.batch_size)
    self._encoder = None
    self.seconds = 0.0

  def encoder(self) -> encoders.Encoder:
    if self._encoder is None:
      self._encoder = encoders.load_encoder(self.name)
    return self._encoder

  def flat(self, texts: list[str]) -> np.ndarray:
    start = time.time()
    emb = self.cache.get(texts, self.encoder)
    self.seconds += time.time() - start
    return emb

  def classes(self, source: text_lib.TextClasses) -> np.ndarray:
    """[C, M, D] embeddings of a split, zeros in the padding slots."""
    flat = self.flat([t for texts in source.texts for t in texts])
    counts = source.counts
    out = np.zeros((source.num_classes, int(counts.max()), flat.shape[1]), np.float32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for c, (s, n) in enumerate(zip(starts, counts)):
      out[c, :n] = flat[s:s + n]
    return out

  @property
  def display_name(self) -> str:
    if self.name == encoders.MINILM:
      return "all-MiniLM-L6-v2"
    return self.name


# ------------------------------------------------------------------ episodic

@functools.lru_cache(maxsize=32)
def _accuracy_program(method_name: str, spec: EpisodeSpec, chunk: int):
  """jit(fn(base_key, start, emb [C, M, D], counts [C]) -> [chunk] accuracies), built
  once per (method, spec, chunk) in a process."""
  method = methods.get(method_name)
  n, k, q = spec.ways, spec.shots, spec.queries
  support_y = jnp.repeat(jnp.arange(n, dtype=jnp.int32), k)
  query_y = jnp.repeat(jnp.arange(n, dtype=jnp.int32), q)

  def accuracies(base, start, emb_CxMxD, counts_C):
    max_m, d = emb_CxMxD.shape[1], emb_CxMxD.shape[2]

    def acc(i):
      classes_N, idx_NxS = episode_indices(jax.random.fold_in(base, i), counts_C, max_m, spec)
      x_NxSxD = emb_CxMxD[classes_N[:, None], idx_NxS]
      logits = method.logits(x_NxSxD[:, :k].reshape(n * k, d), support_y,
                             x_NxSxD[:, k:].reshape(n * q, d), n)
      return jnp.mean(jnp.argmax(logits, -1) == query_y)

    return jax.vmap(acc)(start + jnp.arange(chunk))

  return jax.jit(accuracies)


def episode_accuracies(method_name: str, emb_CxMxD, counts_C, spec: EpisodeSpec,
                       episodes: int, seed: int) -> np.ndarray:
  """[episodes] query accuracies of episodes i = 0..E-1 drawn from fold_in(PRNGKey(seed), i)."""
  chunk = min(EPISODES_PER_CALL, episodes)
  program = _accuracy_program(method_name, spec, chunk)
  base = jax.random.PRNGKey(seed)
  emb, counts = jnp.asarray(emb_CxMxD), jnp.asarray(counts_C)
  accs = [np.asarray(program(base, jnp.asarray(s, jnp.int32), emb, counts))
          for s in range(0, episodes, chunk)]
  return np.concatenate(accs)[:episodes].astype(np.float64)


def adapted_episode_accuracies(config, source: text_lib.TextClasses, embedder: Embedder,
                               spec: EpisodeSpec, log_every: int = 10) -> np.ndarray:
  """[episodes] query accuracies of an encoder-adapting method (SetFit), episode by episode:
  the episodes `episode_accuracies` draws, each from a fresh copy of the encoder."""
  method = methods.get(config.method)
  adapter = adapt.SetFitAdapter(embedder.encoder(), config.data.max_length, dict(config.setfit))
  n, k, q = spec.ways, spec.shots, spec.queries
  counts = jnp.asarray(source.counts)
  draw = jax.jit(lambda key: episode_indices(key, counts, int(source.counts.max()), spec))
  support_y = np.repeat(np.arange(n, dtype=np.int32), k)
  query_y = np.repeat(np.arange(n), q)
  logits_fn = jax.jit(method.logits, static_argnums=3)
  base, accs, start = jax.random.PRNGKey(config.seed), [], time.time()
  for i in range(config.episodes):
    key = jax.random.fold_in(base, i)
    classes_N, idx_NxS = jax.device_get(draw(key))
    texts = [[source.texts[c][j] for j in row] for c, row in zip(classes_N, idx_NxS)]
    s_texts = [t for row in texts for t in row[:k]]
    q_texts = [t for row in texts for t in row[k:]]
    tuned, _ = adapter.finetuned(s_texts, support_y, jax.random.fold_in(key, 1))
    emb = encoders.embed_texts(tuned, s_texts + q_texts, adapter.max_length, config.batch_size)
    logits = logits_fn(jnp.asarray(emb[:n * k]), jnp.asarray(support_y),
                       jnp.asarray(emb[n * k:]), n)
    accs.append(float(np.mean(np.argmax(np.asarray(logits), -1) == query_y)))
    if (i + 1) % log_every == 0 or i + 1 == config.episodes:
      rate = (i + 1) / (time.time() - start)
      metrics_lib.log("%s %d-way %d-shot: episode %d/%d, accuracy so far %.4f, %.2f s/episode, "
                      "ETA %.0f s", config.method, n, k, i + 1, config.episodes, np.mean(accs),
                      1 / rate, (config.episodes - i - 1) / rate)
  return np.asarray(accs, np.float64)


def _adapt_options(config) -> dict:
  """{'setfit': its options} for an adapting method (a result states them), else {}."""
  if methods.get(config.method).frozen:
    return {}
  return {config.method: adapt.check_options(dict(config.setfit))}


class AdaptedEmbedder:
  """An `Embedder` of an encoder adapted to one support set: embeds, caches nothing."""

  def __init__(self, encoder: encoders.Encoder, config, display_name: str):
    self.encoder, self.config, self.display_name = encoder, config, display_name
    self.seconds = 0.0

  def flat(self, texts: list[str]) -> np.ndarray:
    start = time.time()
    emb = encoders.embed_texts(self.encoder, texts, self.config.data.max_length,
                               self.config.batch_size)
    self.seconds += time.time() - start
    return emb


def _without(source: text_lib.TextClasses, label: str) -> text_lib.TextClasses:
  if label and label in source.class_names:
    return source.subset([c for c in source.class_names if c != label])
  return source


def episodic(config, splits: data_lib.Splits, embedder: Embedder) -> Iterator[dict]:
  source = _without(splits.get(config.split), config.oos_label)
  specs = [EpisodeSpec(w, s, config.queries) for w in _ints(config.ways, "ways", 2)
           for s in _ints(config.shots, "shots", 1)]
  for spec in specs:  # every setting checked before the first embedding
    check_spec(source, spec, False, config.split)
  emb_CxMxD = None
  for spec in specs:
    start = time.time()
    if not methods.get(config.method).frozen:
      accs = adapted_episode_accuracies(config, source, embedder, spec)
    else:
      if emb_CxMxD is None:
        emb_CxMxD = embedder.classes(source)
      accs = episode_accuracies(config.method, emb_CxMxD, source.counts, spec, config.episodes,
                                config.seed)
    yield {"setting": "episodic", "dataset": config.data.name, "split": config.split,
           "method": config.method, "ways": spec.ways, "shots": spec.shots,
           "queries": spec.queries, "episodes": len(accs),
           "accuracy": round(float(accs.mean()), 6),
           "ci95": evaluation.ci95(accs),
           "classes": source.num_classes, "encoder": embedder.display_name,
           "max_length": config.data.max_length, "seed": config.seed,
           "class_split": splits.class_split or None,
           "seconds": round(time.time() - start, 2), **_adapt_options(config)}


# ------------------------------------------------------------------ generalized

def draw_support(source: text_lib.TextClasses, shots: int, seed: int, need_rest: bool
                 ) -> tuple[list[list[int]], list[list[int]]]:
  """Per class: (K seeded example indices, the other indices), classes in order.

  The draw: numpy default_rng(seed), one permutation per class in class
  order, its first K. With `need_rest` a class must keep at least one
  example beyond its K (it is split into support and queries).
  """
  rng = np.random.default_rng(seed)
  support, rest = [], []
  for name, count in zip(source.class_names, source.counts.tolist()):
    if need_rest and count <= shots:
      raise DataError(f"Class {name!r} has {count} examples: K={shots} support examples leave "
                      "no query; lower --config.shots or give a test file (data.test_file).")
    perm = rng.permutation(count)
    support.append(sorted(perm[:shots].tolist()))
    rest.append(sorted(perm[shots:].tolist()))
  return support, rest


def _rows(source: text_lib.TextClasses, index: list[list[int]], names: list[str]
          ) -> tuple[list[str], list[str]]:
  """(texts, labels) of the listed examples of each class of `names`."""
  texts, labels = [], []
  for name, idx in zip(names, index):
    texts += [source[name][i] for i in idx]
    labels += [name] * len(idx)
  return texts, labels


def _flatten(source: text_lib.TextClasses) -> tuple[list[str], list[str]]:
  return _rows(source, [list(range(n)) for n in source.counts.tolist()], source.class_names)


def fit_and_score(method: methods.Method, support_SxD, support_y_S, ways: int, query_QxD
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(logits [Q, N], open-set scores [Q, N]) of the queries; one fit, queries in chunks."""
  state = jax.jit(method.fit, static_argnums=2)(jnp.asarray(support_SxD),
                                               jnp.asarray(support_y_S), ways)
  predict = jax.jit(lambda s, q: (lambda lg: (lg, method.scores(lg)))(method.predict(s, q)))
  logits, scores = [], []
  for start in range(0, len(query_QxD), QUERIES_PER_CALL):
    lg, sc = predict(state, jnp.asarray(query_QxD[start:start + QUERIES_PER_CALL]))
    logits.append(np.asarray(lg))
    scores.append(np.asarray(sc))
  return np.concatenate(logits), np.concatenate(scores)


def balanced_threshold(best_Q, correct_Q, known_Q) -> dict:
  """The threshold maximising in-scope accuracy (known, correct and best >= t, over the
  known) + out-of-scope recall (unknown with best < t, over the unknown); the lowest
  maximiser among the candidates (every best score, and +inf: reject all)."""
  best = np.asarray(best_Q, np.float64)
  known, correct = np.asarray(known_Q, bool), np.asarray(correct_Q, bool)
  if not known.any() or known.all():
    raise DataError(f"Choosing the out-of-scope threshold needs in-scope and out-of-scope rows "
                    f"in the val split; it has {int(known.sum())} and {int((~known).sum())}.")
  cands = np.unique(np.concatenate([best, [np.inf]]))
  hits = np.sort(best[known & correct])
  unknown = np.sort(best[~known])
  in_scope = (len(hits) - np.searchsorted(hits, cands, "left")) / known.sum()
  recall = np.searchsorted(unknown, cands, "left") / (~known).sum()
  i = int(np.argmax(in_scope + recall))
  return {"threshold": float(cands[i]), "in_scope_accuracy": float(in_scope[i]),
          "oos_recall": float(recall[i])}


def _ci95(acc: float, n: int) -> float:
  return round(1.96 * math.sqrt(max(acc * (1 - acc), 0.0) / n), 6)


def generalized(config, splits: data_lib.Splits, embedder: Embedder) -> Iterator[dict]:
  method = methods.get(config.method)
  oos = config.oos_label
  test = splits.get(config.split)
  from_train = splits.by == "examples" and "train" in splits.splits and config.split != "train"
  for shots in _ints(config.shots, "shots", 1):
    start = time.time()
    if from_train:
      train = _without(splits.splits["train"], oos)
      names = train.class_names
      support_idx, _ = draw_support(train, shots, config.seed, need_rest=False)
      s_texts, s_labels = _rows(train, support_idx, names)
      q_texts, q_labels = _flatten(test)
      min_shots = min(len(i) for i in support_idx)
    else:
      inner = _without(test, oos)
      names = inner.class_names
      support_idx, rest_idx = draw_support(inner, shots, config.seed, need_rest=True)
      s_texts, s_labels = _rows(inner, support_idx, names)
      q_texts, q_labels = _rows(inner, rest_idx, names)
      if oos and oos in test.class_names:
        q_texts += test[oos]
        q_labels += [oos] * len(test[oos])
      min_shots = shots
    strays = sorted(set(q_labels) - set(names) - {oos})
    if strays:
      raise DataError(f"{config.split} rows have labels the support classes lack: "
                      f"{strays[:8]}{' ...' if len(strays) > 8 else ''}; give the train file "
                      "examples of them, drop those rows, or name the out-of-scope label "
                      "with --config.oos_label.")
    index = {n: i for i, n in enumerate(names)}
    support_y = np.asarray([index[l] for l in s_labels], np.int32)
    used = embedder
    if not method.frozen:  # one fine-tuning on the whole support set, then its embeddings
      adapter = adapt.SetFitAdapter(embedder.encoder(), config.data.max_length,
                                    dict(config.setfit))
      metrics_lib.log("%s: fine-tuning on %d support texts of %d classes", config.method,
                      len(s_texts), len(names))
      tuned, _ = adapter.finetuned(s_texts, support_y, jax.random.PRNGKey(config.seed))
      used = AdaptedEmbedder(tuned, config, f"{embedder.display_name}+{config.method}")
    s_emb, q_emb = used.flat(s_texts), used.flat(q_texts)
    logits, scores = fit_and_score(method, s_emb, support_y, len(names), q_emb)
    pred = np.asarray(names)[np.argmax(logits, -1)]
    labels = np.asarray(q_labels)
    known = labels != oos if oos else np.ones(len(labels), bool)
    result = {"setting": "generalized", "dataset": config.data.name, "split": config.split,
              "method": config.method, "ways": len(names), "shots": shots}
    if known.all():
      acc = float(np.mean(pred == labels))
      result.update(accuracy=round(acc, 6), ci95=_ci95(acc, len(labels)))
    else:
      result.update(_out_of_scope(config, splits, used, method, names, s_emb, support_y,
                                  scores, labels))
    result.update({"test_examples": len(labels), "support_examples": len(s_texts),
                   "min_class_shots": min_shots, "encoder": embedder.display_name,
                   "max_length": config.data.max_length, "seed": config.seed,
                   "class_split": splits.class_split or None,
                   "seconds": round(time.time() - start, 2), **_adapt_options(config)})
    yield result


def _out_of_scope(config, splits, embedder, method, names, s_emb, support_y, scores,
                  labels) -> dict:
  """Threshold on 'val' (balanced_threshold), then the test split's open-set metrics."""
  oos = config.oos_label
  if "val" not in splits.splits or config.split == "val":
    raise DataError(f"The {config.split} split has out-of-scope rows ({oos!r}); choosing their "
                    "threshold needs a val split with in-scope and out-of-scope rows "
                    "(data.val_file), or drop them with --config.oos_label=''.")
  v_texts, v_labels = _flatten(splits.splits["val"])
  v_labels = np.asarray(v_labels)
  _, v_scores = fit_and_score(method, s_emb, support_y, len(names), embedder.flat(v_texts))
  v_known = v_labels != oos
  v_pred = np.asarray(names)[np.argmax(v_scores, -1)]
  chosen = balanced_threshold(v_scores.max(-1), v_pred == v_labels, v_known)
  m = openset.open_set_metrics(scores, names, labels, threshold=chosen["threshold"])
  best = scores.max(-1)
  pred = np.where(best >= chosen["threshold"], np.asarray(names)[np.argmax(scores, -1)], oos)
  acc = float(np.mean(pred == labels))
  return {"accuracy": round(acc, 6), "ci95": _ci95(acc, len(labels)),
          "in_scope_accuracy": round(m["dir"], 6),
          "in_scope_ci95": _ci95(m["dir"], m["known"]),
          "oos_recall": round(m["unknown_recall"], 6),
          "oos_precision": round(m["unknown_precision"], 6),
          "oos_f1": round(m["unknown_f1"], 6), "auroc": round(m["auroc"], 6),
          "closed_set_accuracy": round(m["known_accuracy"], 6),
          "in_scope": m["known"], "out_of_scope": m["unknown"],
          "threshold": chosen["threshold"], "score": method.score,
          "threshold_rule": "val: max in-scope accuracy + oos recall",
          "val_in_scope_accuracy": round(chosen["in_scope_accuracy"], 6),
          "val_oos_recall": round(chosen["oos_recall"], 6)}


# ------------------------------------------------------------------ entry point

def run(config, workdir: str) -> Iterator[dict]:
  """Evaluates the config's settings; yields (and appends to results.jsonl) each result."""
  check_config(config)
  workdir = loop.check_writable_dir(workdir)
  splits = data_lib.load(config.data, config.oos_label)
  embedder = Embedder(config, workdir)
  body = episodic if config.setting == "episodic" else generalized
  for result in body(config, splits, embedder):
    result["sentences_embedded"] = embedder.cache.embedded
    result["embed_seconds"] = round(embedder.seconds, 2)
    loop.append_result(workdir, result)
    yield result
