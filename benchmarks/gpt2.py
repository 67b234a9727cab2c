r"""GPT-2 (124M shape) throughput: our Flax port vs transformers' PyTorch model.

    python benchmarks/gpt2.py [--layers=12 --fwd_batch=8 --fwd_len=512 \
        --new_tokens=128 --prompt_len=32 --reps=2]

Builds one random-weight GPT2LMHeadModel in the real gpt2 shape (12 layers,
width 768, 12 heads, vocab 50257), saves it with save_pretrained and loads it
into our port, so both run the same weights in the same process (fp32). Times
(median of `reps` alternating calls after one warm-up each):
  - a forward pass over a batch of fwd_batch x fwd_len tokens (logits out),
  - cached greedy decoding of new_tokens tokens at batch 1 and batch 8,
and prints one JSON line with tokens/s for both, the ratios ours/transformers,
whether greedy outputs are identical, and max_abs_logit_diff on the forward batch.
"""

import json
import os
import platform
import tempfile
import time

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_integer("layers", 12, "Transformer layers (12 = gpt2 124M).")
flags.DEFINE_integer("fwd_batch", 8, "Forward batch size.")
flags.DEFINE_integer("fwd_len", 512, "Forward sequence length.")
flags.DEFINE_integer("new_tokens", 128, "Greedy tokens to generate.")
flags.DEFINE_integer("prompt_len", 32, "Prompt tokens for decoding.")
flags.DEFINE_list("gen_batches", ["1", "8"], "Decoding batch sizes.")
flags.DEFINE_integer("reps", 2, "Timed calls per measurement.")
flags.DEFINE_integer("seed", 0, "")


def _time_pair(ours, theirs, reps):
  """Median seconds of each, after one warm-up each; calls alternate so that
  load from other processes on a shared machine hits both alike."""
  ours()  # warm-up (compilation for JAX)
  theirs()
  t_a, t_b = [], []
  for _ in range(reps):
    for fn, ts in ((ours, t_a), (theirs, t_b)):
      t0 = time.perf_counter()
      fn()
      ts.append(time.perf_counter() - t0)
  return float(np.median(t_a)), float(np.median(t_b))


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from fsl_jax.models import gpt2, gpt2_generate, gpt2_hf  # pylint: disable=g-import-not-at-top

  torch.manual_seed(FLAGS.seed)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=FLAGS.layers)).eval()
  with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d)
    config, params = gpt2_hf.from_pretrained(d)
  eos = config.eos_token_id
  rng = np.random.default_rng(FLAGS.seed)
  result = {"benchmark": "gpt2", "model": f"gpt2 shape, {FLAGS.layers} layers, d768, vocab 50257, "
            "random weights, fp32"}

  # Forward pass.
  ids = rng.integers(0, 50256, (FLAGS.fwd_batch, FLAGS.fwd_len))
  ids_t, ids_j = torch.tensor(ids), jnp.asarray(ids, jnp.int32)
  out = {}

  def fwd_ours():
    out["ours"] = gpt2.lm_logits(config, params, ids_j).block_until_ready()

  def fwd_hf():
    with torch.inference_mode():
      out["hf"] = model(ids_t).logits

  t_ours, t_hf = _time_pair(fwd_ours, fwd_hf, FLAGS.reps)
  n_tok = FLAGS.fwd_batch * FLAGS.fwd_len
  result.update({
      "forward_batch": [FLAGS.fwd_batch, FLAGS.fwd_len],
      "forward_ours_tokens_per_s": round(n_tok / t_ours, 1),
      "forward_transformers_tokens_per_s": round(n_tok / t_hf, 1),
      "forward_ratio": round(t_hf / t_ours, 3),
      "max_abs_logit_diff": float(np.abs(np.asarray(out["ours"]) - out["hf"].numpy()).max())})
  del out

  # Cached greedy decoding.
  identical = True
  for b in [int(x) for x in FLAGS.gen_batches]:
    prompt = rng.integers(0, 50256, (b, FLAGS.prompt_len))
    p_t, mask_t = torch.tensor(prompt), torch.ones((b, FLAGS.prompt_len), dtype=torch.long)
    gen = {}

    def gen_ours():
      gen["ours"] = np.asarray(gpt2_generate.generate(config, params, prompt, None,
                                                      FLAGS.new_tokens, eos_id=eos))

    def gen_hf():
      with torch.inference_mode():
        gen["hf"] = model.generate(p_t, attention_mask=mask_t, max_new_tokens=FLAGS.new_tokens,
                                   do_sample=False, pad_token_id=eos).numpy()[:, FLAGS.prompt_len:]

    t_ours, t_hf = _time_pair(gen_ours, gen_hf, FLAGS.reps)
    n_ours = int(gen["ours"].shape[1])
    n_hf = int(gen["hf"].shape[1])
    identical &= n_ours == n_hf and bool((gen["ours"] == gen["hf"]).all())
    result.update({
        f"greedy_b{b}_new_tokens": [n_ours, n_hf],
        f"greedy_b{b}_ours_tokens_per_s": round(b * n_ours / t_ours, 1),
        f"greedy_b{b}_transformers_tokens_per_s": round(b * n_hf / t_hf, 1),
        f"greedy_b{b}_ratio": round((b * n_ours / t_ours) / (b * n_hf / t_hf), 3)})
  result.update({
      "greedy_identical_outputs": identical, "jax": jax.__version__, "torch": torch.__version__,
      "torch_threads": torch.get_num_threads(), "devices": str(jax.devices()),
      "cpu_count": os.cpu_count(), "machine": platform.machine()})
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main)
