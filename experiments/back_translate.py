r"""Back-translation: synthetic sources for target-side monolingual text.

    python -m experiments.back_translate --model=REVERSE_MODEL_DIR --input=mono.sw \
        --output=pairs.tsv [--num_beams=4 --batch_size=32 --max_new_tokens=128 --limit=0]

REVERSE_MODEL_DIR translates target -> source (e.g. a sw->en Marian model, a
Hugging Face directory or hub id). Each input line t becomes the TSV line
`translation(t)<TAB>t`, i.e. a (synthetic source, real target) pair that
`experiments.adapter_tune` mixes with real pairs (`--config.bt_pairs=pairs.tsv`,
`--config.bt_ratio`, `--config.bt_tag`). Batched beam search, with a progress
bar on stderr; prints one JSON line with counts and sentences/s.
"""

import json
import time

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Reverse (target->source) model: HF directory or hub id.")
flags.DEFINE_string("input", None, "Monolingual target-language text, one sentence per line.")
flags.DEFINE_string("output", None, "TSV to write: synthetic_source<TAB>target.")
flags.DEFINE_integer("num_beams", 4, "Beam size (1 = greedy).")
flags.DEFINE_integer("batch_size", 32, "Sentences per batch.")
flags.DEFINE_integer("max_new_tokens", 128, "Longest synthetic source, in tokens.")
flags.DEFINE_integer("max_len", 128, "Input truncation, in tokens.")
flags.DEFINE_integer("limit", 0, "Translate only the first N lines (0 = all).")
flags.DEFINE_string("src_lang", "", "mBART only: language code of the input (e.g. sw_KE).")
flags.DEFINE_string("tgt_lang", "", "mBART only: language code to generate (e.g. en_XX).")
flags.mark_flags_as_required(["model", "input", "output"])


def main(argv):
  del argv
  common.setup()
  from fsl_jax.proj.translation import back_translation  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  n = back_translation.run(FLAGS.model, FLAGS.input, FLAGS.output, num_beams=FLAGS.num_beams,
                           batch_size=FLAGS.batch_size, max_new_tokens=FLAGS.max_new_tokens,
                           max_len=FLAGS.max_len, limit=FLAGS.limit, src_lang=FLAGS.src_lang,
                           tgt_lang=FLAGS.tgt_lang)
  dt = time.time() - t0
  print(json.dumps({"pairs": n, "output": FLAGS.output, "seconds": round(dt, 1),
                    "sentences_per_s": round(n / max(dt, 1e-9), 2)}), flush=True)


if __name__ == "__main__":
  app.run(common.friendly(main), flags_parser=common.parse_flags)
