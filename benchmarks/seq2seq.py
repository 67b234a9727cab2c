r"""Beam-search translation throughput: our JAX Marian port vs transformers' PyTorch model.

    python benchmarks/seq2seq.py [--batch=16 --beams=4 --src_len=24 --max_new_tokens=32 --reps=3]

Builds one random-weight MarianMTModel in the opus-mt-en-* shape (6+6 layers,
d_model 512, 8 heads, FFN 2048, vocab 58101), saves it with save_pretrained and
loads it into our port, so both decode the same weights in the same process.
Times `generate` (batch 16, 4 beams, same max_new_tokens) after one warm-up
call each, and prints one JSON line: sentences/s for both, the ratio
ours/transformers, whether the outputs are token-identical, and the
max_abs_logit_diff of a teacher-forced batch.
"""

import json
import os
import platform
import tempfile

from absl import app, flags
import numpy as np

import timing

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 16, "Sentences per generate call.")
flags.DEFINE_integer("beams", 4, "num_beams.")
flags.DEFINE_integer("src_len", 24, "Source tokens per sentence (incl. EOS).")
flags.DEFINE_integer("max_new_tokens", 32, "Decoded tokens per sentence.")
flags.DEFINE_integer("reps", 3, "Timed generate calls per implementation.")
flags.DEFINE_integer("layers", 6, "Encoder and decoder layers.")
flags.DEFINE_integer("vocab", 58101, "Vocabulary size.")
flags.DEFINE_integer("seed", 0, "")


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from fsl_jax.models import marian, seq2seq  # pylint: disable=g-import-not-at-top
  from fsl_jax.models import seq2seq_generate as sg  # pylint: disable=g-import-not-at-top

  v, pad, eos = FLAGS.vocab, FLAGS.vocab - 1, 0
  hf_cfg = transformers.MarianConfig(
      vocab_size=v, decoder_vocab_size=v, d_model=512, encoder_layers=FLAGS.layers,
      decoder_layers=FLAGS.layers, encoder_attention_heads=8, decoder_attention_heads=8,
      encoder_ffn_dim=2048, decoder_ffn_dim=2048, pad_token_id=pad, decoder_start_token_id=pad,
      eos_token_id=eos, forced_eos_token_id=eos, scale_embedding=True,
      max_position_embeddings=512, activation_function="swish")
  torch.manual_seed(FLAGS.seed)
  model = transformers.MarianMTModel(hf_cfg).eval()
  with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d)
    cfg, params = marian.load(d)

  rng = np.random.default_rng(FLAGS.seed)
  ids = rng.integers(1, v - 1, (FLAGS.batch, FLAGS.src_len)).astype(np.int64)
  ids[:, -1] = eos
  mask = np.ones_like(ids)
  for i in range(1, FLAGS.batch, 3):  # some padded rows, as in a real batch
    cut = FLAGS.src_len - 1 - (i % 7)
    ids[i, cut:] = pad
    ids[i, cut - 1] = eos
    mask[i, cut:] = 0
  ids_t, mask_t = torch.tensor(ids), torch.tensor(mask)
  gen = sg.GenerationConfig(max_new_tokens=FLAGS.max_new_tokens, num_beams=FLAGS.beams)

  outs = {}

  def ours():
    outs["ours"] = sg.generate(cfg, params, ids, mask, gen)

  def theirs():
    with torch.inference_mode():
      outs["hf"] = model.generate(input_ids=ids_t, attention_mask=mask_t, num_beams=FLAGS.beams,
                                  max_new_tokens=FLAGS.max_new_tokens, do_sample=False).numpy()

  t_ours = timing.median_seconds(ours, FLAGS.reps)
  t_hf = timing.median_seconds(theirs, FLAGS.reps)

  dec = rng.integers(1, v - 1, (FLAGS.batch, 16))
  dec[:, 0] = pad
  with torch.inference_mode():
    ref = model(input_ids=ids_t, attention_mask=mask_t, decoder_input_ids=torch.tensor(dec)).logits.numpy()
  got = np.asarray(jax.jit(seq2seq.forward, static_argnums=0)(cfg, params, ids, mask, dec))
  same = outs["ours"].shape == outs["hf"].shape and bool((outs["ours"] == outs["hf"]).all())
  result = {
      "benchmark": "seq2seq_beam_search", "model": f"marian opus-mt shape, {FLAGS.layers}+{FLAGS.layers} "
      f"layers, d512, vocab {v}, random weights", "batch": FLAGS.batch, "num_beams": FLAGS.beams,
      "src_len": FLAGS.src_len, "max_new_tokens": FLAGS.max_new_tokens,
      "generated_len": int(outs["ours"].shape[1]),
      "ours_sentences_per_s": round(FLAGS.batch / t_ours, 3),
      "transformers_sentences_per_s": round(FLAGS.batch / t_hf, 3),
      "ratio": round(t_hf / t_ours, 3), "identical_outputs": same,
      "max_abs_logit_diff": float(np.abs(got - ref).max()),
      "jax": jax.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
      "devices": str(jax.devices()), "cpu_count": os.cpu_count(), "machine": platform.machine(),
  }
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main)
