r"""Few-shot dialogue response generation with a frozen GPT-2.

    python -m experiments.prompt_tune --config=experiments/configs/prompt_tune_dialogue.py \
        --workdir=DIR [--config.model=gpt2|/local/dir] [--config.method=prompt|prefix|lora]

Trains a soft prompt, prefix or LoRA (plus the <customer>/<system> token
embeddings) on SGD or JSONL exchanges, checkpoints every N steps (rerunning
the same command resumes), generates replies for held-out contexts, scores
them with sacreBLEU and prints one JSON line
{"method", "bleu", "trainable_params", "examples", ...}.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, tuned weights and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  common.setup()
  from fsl_jax.proj.dialogue import trainer  # pylint: disable=g-import-not-at-top
  result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(common.friendly(main), flags_parser=common.parse_flags)
