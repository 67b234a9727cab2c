r"""Lake et al. (2015) 20-way within-alphabet one-shot classification.

    python -m experiments.omniglot_one_shot --workdir=DIR --runs_dir=PATH

Embeds each run's 20 training images and 20 test items with the checkpoint
in DIR, classifies each item by its learner's prediction (for ProtoNet: the
nearest one-shot prototype), and prints {"error_rate": ..., "runs": 20} with
the error rate as a fraction (Lake et al. report 4.5% humans, 13.5% a deep
ConvNet). Preprocessing is that of training (strokes = 1, antialiased resize).
Build runs from the evaluation set with `python -m experiments.make_lake_runs`.
"""

import json

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory written by experiments.meta_train.")
flags.DEFINE_string("runs_dir", None, "Folder holding run01..run20.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.mark_flags_as_required(["workdir", "runs_dir"])


def main(argv):
  del argv
  common.setup()
  from fsl_jax.train import one_shot  # pylint: disable=g-import-not-at-top
  result = one_shot.evaluate_runs(FLAGS.workdir, FLAGS.runs_dir, FLAGS.step)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(common.friendly(main), flags_parser=common.parse_flags)
