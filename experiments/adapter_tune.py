r"""Translation tuning: a base from scratch, or adapters / LoRA / full tuning of one.

    python -m experiments.adapter_tune --config=experiments/configs/adapter_mt_en_sw.py \
        --workdir=DIR [--config.model=DIR_OR_HUB_ID] [--config.method=pfeiffer|houlsby|lora|full]

Reads aligned text files or TSV, trains (rerunning resumes from DIR/checkpoints),
translates the test set with beam search and prints one JSON line
{"method", "bleu", "chrf", "trainable_params", "train_pairs", ...}.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, the adapter / model and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  common.setup()
  from fsl_jax.proj.translation import trainer  # pylint: disable=g-import-not-at-top
  result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(common.friendly(main), flags_parser=common.parse_flags)
