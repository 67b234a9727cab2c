r"""Episodic meta-training and evaluation.

    python -m experiments.meta_train \
        --config=experiments/configs/protonet_omniglot.py[:runlocal] \
        --workdir=/tmp/protonet [--config.train.shots=5 ...]

Writes WORKDIR/metrics.jsonl, TensorBoard events and orbax checkpoints;
rerunning the same command resumes. Ends by printing one JSON line with the
test accuracy and its 95% confidence interval.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  common.setup()
  from fsl_jax.train import meta_trainer  # pylint: disable=g-import-not-at-top
  result = meta_trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(common.friendly(main), flags_parser=common.parse_flags)
