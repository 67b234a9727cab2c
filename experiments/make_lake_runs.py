r"""Builds Lake et al.-format one-shot runs from Omniglot evaluation characters.

    python -m experiments.make_lake_runs --out=DIR [--runs=20] [--seed=0]

Writes DIR/runNN/{training/classNN.png, test/itemNN.png, class_labels.txt},
105x105 1-bit PNGs with a white background, 20 characters of one alphabet per
run, each drawn by two different people (training vs test). Reads the TFDS
Omniglot 'test' split (the evaluation alphabets) from TFDS_DATA_DIR.
"""

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Output folder.")
flags.DEFINE_integer("runs", 20, "Number of runs.")
flags.DEFINE_integer("seed", 0, "Seed for alphabets, characters and drawers.")
flags.DEFINE_integer("ways", 20, "Characters per run (Lake et al.: 20).")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: $TFDS_DATA_DIR).")
flags.mark_flags_as_required(["out"])


def main(argv):
  del argv
  common.setup()
  from fsl_jax.data import lake_runs, omniglot  # pylint: disable=g-import-not-at-top
  data = omniglot.read_tfds_split("omniglot", "test", FLAGS.data_dir)
  images, groups = lake_runs.characters_by_alphabet(data)
  lake_runs.write_runs(FLAGS.out, images, groups, FLAGS.runs, FLAGS.ways, FLAGS.seed)
  print(f"wrote {FLAGS.runs} runs to {FLAGS.out}")


if __name__ == "__main__":
  app.run(common.friendly(main), flags_parser=common.parse_flags)
