r"""Few-shot text classification on a pretrained sentence encoder.

    python -m experiments.text_fewshot \
        --config=experiments/configs/text_fewshot_clinc.py[:runlocal] --workdir=DIR \
        [--config.method=simpleshot|logreg|nearest_mean|setfit] [--config.shots=1,5] \
        [--config.encoder=minilm|META_TRAIN_WORKDIR|HF_DIR] ...

simpleshot, logreg and nearest_mean classify frozen embeddings; setfit
fine-tunes a copy of the encoder on each support set first (Tunstall et al.
2022; options --config.setfit.iterations=20 etc.; ~3 s per 5-way 1-shot
episode with MiniLM on 2 CPU cores, so pass a smaller --config.episodes).
`--config.encoder` may be the workdir of an `experiments.meta_train` run of
the bert_text backbone (experiments/configs/protonet_text.py): its newest
checkpoint's encoder, e.g. with nearest_mean (ProtoNet's rule).

Episodic (`--config.setting=episodic`): N-way K-shot episodes over the novel
classes of a split, one JSON line per (ways, shots) with the mean accuracy
and its 95% CI. Generalised (`--config.setting=generalized`): K examples per
class of every class, the whole test split classified, out-of-scope rows
rejected at a threshold chosen on the val split (CLINC150's 'oos'). A user's
own files:

    python -m experiments.text_fewshot --config=experiments/configs/text_fewshot_clinc.py \
        --workdir=DIR --config.data.name=csv --config.data.train_file=TRAIN.csv \
        --config.data.test_file=TEST.csv --config.data.text_column=text \
        --config.data.label_column=category --config.method=logreg --config.shots=10 \
        --config.setting=generalized

Each sentence is embedded once per (encoder, max_length) and cached in
WORKDIR/embeddings; every JSON line is also appended to WORKDIR/results.jsonl.
See fsl_jax/proj/text_fewshot/runner.py for the definitions.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for the embedding cache and results.jsonl.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  common.setup()
  from fsl_jax.proj.text_fewshot import runner  # pylint: disable=g-import-not-at-top
  for result in runner.run(FLAGS.config, FLAGS.workdir):
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(common.friendly(main), flags_parser=common.parse_flags)
