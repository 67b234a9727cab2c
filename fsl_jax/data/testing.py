"""A synthetic Omniglot for tests, served through `tfds.testing.mock_data`.

Each class is a fixed random 105x105 binary template (blocky, so it survives
the resize to 28x28) and its examples are copies with a few percent of pixels
flipped, so a model can actually learn it. Records look like TFDS Omniglot
records decoded without TensorFlow: image uint8 {0,1} [105,105,3] with a
white (1) background, label, alphabet, alphabet_char_id.

    with fsl_jax.data.testing.mock_omniglot(train_classes=30, test_classes=20):
      ...  # tfds.data_source('omniglot', ...) now returns the synthetic data

    python -m fsl_jax.data.testing experiments.meta_train --config=... --workdir=...
        # runs a binary under the mock (for end-to-end tests in a subprocess)
"""

from __future__ import annotations

import contextlib
import runpy
import sys
import types

import numpy as np

CLASSES_PER_ALPHABET = 10
# Alphabet names the mock reports, so split schemes that select by alphabet
# work: train classes cycle through background alphabets, two of which are
# the lake scheme's validation alphabets; test classes use evaluation ones.
TRAIN_ALPHABETS = ("Arcadian", "Armenian", "Balinese", "Bengali", "Latin", "Greek")
TEST_ALPHABETS = ("Angelic", "Kannada", "Keble", "Tengwar")


class _Split:
  """A random-access sequence of records, like a TFDS data source."""

  def __init__(self, records):
    self._records = records
    names = types.SimpleNamespace(names=list(TRAIN_ALPHABETS + TEST_ALPHABETS))
    self.dataset_info = types.SimpleNamespace(features={"alphabet": names})

  def __len__(self):
    return len(self._records)

  def __getitem__(self, i):
    return self._records[i]

  def __getitems__(self, idx):
    return [self._records[i] for i in idx]


def make_records(num_classes: int, per_class: int = 20, first_label: int = 0, seed: int = 0,
                 flip: float = 0.06, alphabets: range | None = None) -> list[dict]:
  """Classes share a base pattern and differ in ~30% of 15x15-pixel blocks;
  examples flip `flip` of the blocks and shift by up to 5 pixels, so the task
  is learnable but not solved by an untrained network."""
  rng = np.random.default_rng(seed)
  base = rng.random((7, 7)) < 0.3
  blocks = lambda m: np.kron(m, np.ones((15, 15), bool))  # 7x7 -> 105x105
  alphabets = alphabets or range(len(TRAIN_ALPHABETS))
  records = []
  for c in range(num_classes):
    template = base ^ (rng.random((7, 7)) < 0.3)
    for _ in range(per_class):
      strokes = blocks(template ^ (rng.random((7, 7)) < flip))
      strokes = np.roll(strokes, tuple(rng.integers(-5, 6, 2)), axis=(0, 1))
      image = np.repeat((~strokes).astype(np.uint8)[..., None], 3, axis=-1)  # white = 1
      alphabet = alphabets[(c // CLASSES_PER_ALPHABET) % len(alphabets)]
      records.append({"image": image, "label": np.int64(first_label + c),
                      "alphabet": np.int64(alphabet),
                      "alphabet_char_id": np.int64(c % CLASSES_PER_ALPHABET)})
  return records


@contextlib.contextmanager
def mock_omniglot(train_classes: int = 40, test_classes: int = 20, per_class: int = 20):
  """Serves synthetic 'train' (background) and 'test' (evaluation) splits.

  With the defaults, the lake scheme gives train = 20, val = 20 (Armenian and
  Bengali) and test = 20 classes, 2 test alphabets of 10 characters.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from fsl_jax.data import omniglot  # pylint: disable=g-import-not-at-top
  splits = {
      "train": make_records(train_classes, per_class, 0, seed=1),
      "test": make_records(test_classes, per_class, train_classes, seed=2,
                           alphabets=range(len(TRAIN_ALPHABETS), len(TRAIN_ALPHABETS) + 4)),
  }

  def as_data_source(builder, split, *args, **kwargs):
    del args, kwargs
    if split not in splits:
      raise KeyError(f"mock omniglot has no split {split!r}")
    del builder
    return _Split(splits[split])

  omniglot.clear_cache()
  try:
    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
      yield
  finally:
    omniglot.clear_cache()


def main():
  """`python -m fsl_jax.data.testing MODULE [args]`: run MODULE under the mock."""
  if len(sys.argv) < 2:
    raise SystemExit("usage: python -m fsl_jax.data.testing MODULE [ARGS...]")
  module = sys.argv[1]
  sys.argv = [module] + sys.argv[2:]
  with mock_omniglot():
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
