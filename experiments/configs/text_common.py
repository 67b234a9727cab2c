"""The body every `experiments.text_fewshot` config shares; not an experiment itself.

`base(name, path)` holds every key the runner reads (fsl_jax/proj/text_fewshot/runner.py
KEYS; a key it does not read is refused). `text_fewshot_clinc.py`, `text_fewshot_huffpost.py`
and `text_fewshot_fewrel.py` call it and change their data set's keys. Shared variants
(comma-separated after ':'): `runlocal` (the random-weight tiny encoder, 20 episodes:
seconds, for smoke runs), `logreg` / `nearest_mean` / `setfit` (the method; setfit
fine-tunes the encoder on each support set: ~3 s a 5-way 1-shot episode with MiniLM on
2 CPU cores, so lower --config.episodes).
"""

import ml_collections

from experiments.configs import natural

VARIANTS = ("runlocal", "logreg", "nearest_mean", "setfit")


def base(name: str, path: str, max_length: int = 64) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict()
  c.data.name = name                # clinc150 | huffpost | reuters | hwu64 | liu54 | fewrel | csv
  c.data.path = path                # the data set's file or folder (csv: one labelled file)
  c.data.train_file = ""            # csv: K examples per class are drawn from it (generalized)
  c.data.val_file = ""              # csv: chooses the out-of-scope threshold (oos_label)
  c.data.test_file = ""             # csv: classified (generalized) or episodes drawn from it
  c.data.text_column = "text"       # csv columns
  c.data.label_column = "label"
  c.data.max_length = max_length    # tokens per text ([CLS] and [SEP] included)
  c.data.variant = "full"           # clinc150: data_{full,small,imbalanced,oos_plus}.json
  c.data.class_split = ""           # bao | seeded | none; '' the data set's default
  c.data.class_sizes = ""           # seeded: e.g. 'train=6,val=2,test=8'
  c.data.class_seed = 0             # seeded: the permutation's seed

  c.encoder = "minilm"              # minilm | random_tiny | a HF BERT checkpoint dir | a meta_train
                                    # workdir of bert_text (e.g. protonet_text.py)
  c.batch_size = 64                 # texts per encoder call
  c.method = "simpleshot"           # simpleshot | logreg | nearest_mean | setfit
  c.setting = "episodic"            # episodic | generalized
  c.split = "test"                  # the split evaluated
  c.ways = (5,)                     # episodic: one JSON line per (ways, shots)
  c.shots = (1, 5)
  c.queries = 15                    # episodic: queries per class
  c.episodes = 1000
  c.seed = 0                        # episodes (fold_in(PRNGKey(seed), i)) and support draws
  c.oos_label = ""                  # generalized: the out-of-scope label of the test/val rows
  # method=setfit (fsl_jax/proj/text_fewshot/adapt.py; adapt.SETFIT_DEFAULTS): Tunstall et
  # al.'s defaults: R pair iterations, batch, passes, AdamW rate, warm-up fraction, decay, clip.
  c.setfit = ml_collections.ConfigDict({"iterations": 20, "batch_size": 16, "epochs": 1,
                                        "lr": 2e-5, "warmup": 0.1, "weight_decay": 0.01,
                                        "grad_clip": 1.0})
  return c


def apply_variants(c: ml_collections.ConfigDict, arg: str | None,
                   extra: tuple[str, ...] = ()) -> set[str]:
  """Applies the shared variants in `arg`; returns all its words (checked against
  VARIANTS + extra)."""
  words = natural.variants(arg, VARIANTS + extra)
  if "runlocal" in words:
    c.encoder = "random_tiny"
    c.episodes = 20
    c.data.max_length = min(c.data.max_length, 32)
  for method in ("logreg", "nearest_mean", "setfit"):
    if method in words:
      c.method = method
  return words
