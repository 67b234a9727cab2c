r"""fp32 GEMM throughput on this machine: XLA (jax.jit) vs PyTorch vs NumPy.

    python benchmarks/gemm.py [--reps=5]

The GPT-2 forward pass (benchmarks/gpt2.py) is ~85% matrix multiplies, so
how fast each framework multiplies matrices bounds the forward ratio. Times
the gpt2 (124M) shapes of a batch of 8 x 512 tokens (M = 4096): the fused
q/k/v projection, the MLP up and down projections and the tied LM head, and
prints one JSON line per shape with GFLOP/s for each and the ratio XLA/torch.
"""

import json
import os

from absl import app, flags
import numpy as np

import timing

FLAGS = flags.FLAGS
flags.DEFINE_integer("reps", 5, "Timed calls per measurement (median).")
flags.DEFINE_integer("tokens", 4096, "M: tokens in the batch.")

# (name, K, N): x[M, K] @ w[K, N]
SHAPES = (("c_attn", 768, 2304), ("mlp_c_fc", 768, 3072), ("mlp_c_proj", 3072, 768),
          ("lm_head", 768, 50257))


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  rng = np.random.default_rng(0)
  mm = jax.jit(lambda a, b: a @ b)
  for name, k, n in SHAPES:
    x = rng.standard_normal((FLAGS.tokens, k), np.float32)
    w = rng.standard_normal((k, n), np.float32)
    xj, wj = jax.device_put(x), jax.device_put(w)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    flop = 2.0 * FLAGS.tokens * k * n
    with torch.no_grad():
      secs = {"xla": timing.median_seconds(lambda: mm(xj, wj).block_until_ready(), FLAGS.reps),
              "torch": timing.median_seconds(lambda: xt @ wt, FLAGS.reps),
              "numpy": timing.median_seconds(lambda: x @ w, FLAGS.reps)}
    row = {"benchmark": "gemm", "shape": name, "m": FLAGS.tokens, "k": k, "n": n}
    row.update({f"{lib}_gflops": round(flop / s / 1e9, 1) for lib, s in secs.items()})
    row["ratio_xla_vs_torch"] = round(secs["torch"] / secs["xla"], 3)
    row.update({"jax": jax.__version__, "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                "xla_flags": os.environ.get("XLA_FLAGS", "")})
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  app.run(main)
