r"""Forward and forward+backward of a backbone alone, ours (jax.jit) against PyTorch: one JSON line.

    python benchmarks/backbone_forward.py --model=resnet12 --image_size=84 --batch=80

Separates the backbone from the learner: a meta-training step is a few of
these passes plus small heads, so when `benchmarks/meta_step.py
--compare_torch` finds us slower on CPU, this says whether the convolutions
themselves (XLA's CPU convolutions against PyTorch's oneDNN ones) account for
it. Same weights (copied with `benchmarks/torch_resnet12.load_from_flax`),
eval-mode BatchNorm (`--train_bn`: batch statistics, as a training step
uses), no dropout, float32, `--batch` images (80 = a 5-way
1-shot 15-query episode); the loss of the backward pass is the sum of the
features. Alternating rounds; medians.

`--profile`: also one profiled forward+backward of each, the time per kind
of operation added to the JSON line: ours from a `jax.profiler` trace (each
XLA thunk by its HLO instruction, classed from the optimised HLO:
convolution, matmul, reduction, elementwise, data movement...), PyTorch's
from `torch.profiler` (self CPU time per aten op). This is how a gap in the
training step is traced to the operations that make it.
"""

import json
import os

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import profiling
import timing

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet12", "resnet12 or conv4.")
flags.DEFINE_integer("image_size", 84, "")
flags.DEFINE_integer("batch", 80, "Images per pass.")
flags.DEFINE_integer("steps", 3, "Timed passes per round.")
flags.DEFINE_integer("rounds", 3, "")
flags.DEFINE_integer("threads", 0, "torch threads (0: the machine's cores).")
flags.DEFINE_bool("profile", False, "Add the time per kind of operation of one profiled "
                  "forward+backward of each (jax.profiler / torch.profiler).")
flags.DEFINE_bool("train_bn", False, "BatchNorm in training mode (batch statistics), as in a "
                  "meta-training step; default eval mode (running statistics).")


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  import torch_resnet12  # pylint: disable=g-import-not-at-top  # beside this script
  from fsl_jax import models  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(FLAGS.threads or os.cpu_count())
  s = FLAGS.image_size
  x = np.random.default_rng(0).random((FLAGS.batch, s, s, 3), np.float32)
  if FLAGS.model != "resnet12":
    raise app.UsageError("--model: resnet12 (the torch twin with weight copying).")
  ours = models.get("resnet12", drop_rate=0.0)
  variables = ours.init(jax.random.PRNGKey(0), jnp.asarray(x[:2]), train=False)
  net = torch_resnet12.ResNet12(drop_rate=0.0).eval()
  torch_resnet12.load_from_flax(net, variables)
  if FLAGS.train_bn:
    net.train()
  xj, xt = jnp.asarray(x), torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

  if FLAGS.train_bn:  # batch statistics, the updated running ones returned (and dropped)
    apply = lambda v, a: ours.apply(v, a, train=True, mutable=["batch_stats"])[0]
  else:
    apply = lambda v, a: ours.apply(v, a, train=False)
  fwd = jax.jit(apply)
  grad = jax.jit(jax.grad(lambda v, a: apply(v, a).sum()))
  jax_fwd = lambda: jax.block_until_ready(fwd(variables, xj))
  jax_bwd = lambda: jax.block_until_ready(grad(variables, xj))

  def torch_fwd():
    with torch.no_grad():
      net(xt)

  def torch_bwd():
    net.zero_grad(set_to_none=True)
    net(xt).sum().backward()

  diff = float(np.abs(np.asarray(fwd(variables, xj)) - net(xt).detach().numpy()).max())
  rows = {k: [] for k in ("jax_fwd", "torch_fwd", "jax_fwd_bwd", "torch_fwd_bwd")}
  for r in range(FLAGS.rounds):
    order = [("jax_fwd", jax_fwd), ("torch_fwd", torch_fwd), ("jax_fwd_bwd", jax_bwd),
             ("torch_fwd_bwd", torch_bwd)]
    for name, fn in (order if r % 2 == 0 else order[::-1]):
      rows[name].append(timing.mean_ms(fn, FLAGS.steps))
  med = {k: round(float(np.median(v)), 1) for k, v in rows.items()}
  profile = {}
  if FLAGS.profile:
    profile = {"jax_profile_fwd_bwd": profiling.jax_profile(
                   jax_bwd, grad.lower(variables, xj).compile().as_text()),
               "torch_profile_fwd_bwd": profiling.torch_profile(torch_bwd)}
  print(json.dumps({
      "model": FLAGS.model, "image_size": s, "batch": FLAGS.batch, "train_bn": FLAGS.train_bn, **{f"{k}_ms": v
                                                                     for k, v in med.items()},
      "ratio_fwd_jax_over_torch_speed": round(med["torch_fwd"] / med["jax_fwd"], 3),
      "ratio_fwd_bwd_jax_over_torch_speed": round(med["torch_fwd_bwd"] / med["jax_fwd_bwd"], 3),
      "max_abs_diff_features": diff, "torch_threads": torch.get_num_threads(),
      "backend": jax.default_backend(), "cpu_count": os.cpu_count(), "rounds": FLAGS.rounds,
      **profile}))


if __name__ == "__main__":
  app.run(main)
