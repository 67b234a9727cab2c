r"""PyTorch (`torch.func`) reference of second-order MAML on Conv4: one JSON line.

    python benchmarks/torch_reference.py --ways=5 --shots=1 --queries=15 \
        --meta_batch=32 --inner_steps=5 --steps=3

Used to compare the training throughput of our JAX MAML with a PyTorch
implementation on the same machine, and (via `maml_outer_grad`) to check our
outer gradients on identical weights.  Importable as a module
(`from benchmarks import torch_reference`, or by path) and runnable as a script.

Model (matches `fsl_jax.models.conv4.Conv4(num_classes=ways)` for 28x28x1):
4 blocks of [conv 3x3, 64 channels, padding 1 (SAME), with bias; BatchNorm with
the current batch statistics (training mode, affine, eps 1e-5, no running
stats; see `batch_norm` for why it is written out rather than `F.batch_norm`);
ReLU; max-pool 2x2 stride 2 (floor: 28->14->7->3->1)], flatten (64 features),
Linear(64, ways).

Parameters are a flat dict of tensors, names and layouts (torch conventions):

    'block{i}.conv.weight'  [64, C_in, 3, 3]  (O, I, kH, kW); C_in = 1 for i = 0, else 64
    'block{i}.conv.bias'    [64]
    'block{i}.bn.weight'    [64]              BatchNorm scale
    'block{i}.bn.bias'      [64]              BatchNorm shift
    'head.weight'           [ways, 64]        (out, in): logits = x @ W.T + b
    'head.bias'             [ways]

for i in 0..3.  The flax counterparts (`variables['params']`) are
`block{i}/Conv_0/kernel` [3, 3, I, O] (= torch weight transposed by (2, 3, 1, 0)),
`block{i}/Conv_0/bias`, `block{i}/BatchNorm_0/scale`, `block{i}/BatchNorm_0/bias`,
`head/kernel` [64, ways] (= torch weight transposed) and `head/bias`;
`params_from_flax` and `grads_to_flax` convert.  Since the spatial size is 1x1
after the last pool, the flatten order (NCHW here, NHWC in flax) agrees.

Images are NCHW [N, 1, 28, 28] here (flax uses NHWC [N, 28, 28, 1]; the
functions below that take numpy images accept either and transpose NHWC).

MAML step: for each of `meta_batch` tasks, `inner_steps` steps of plain SGD
(lr `inner_lr`) on the support cross-entropy, adapting all parameters from the
meta-parameters; second order unless `first_order` (which detaches the inner
gradients).  Outer loss: mean over tasks of the query cross-entropy at the
adapted parameters; the per-task adaptation is `torch.func.vmap`ped over the
task dimension, the outer gradient is `torch.func.grad` of the meta-loss, and
Adam (lr 1e-3) updates the meta-parameters.  Eager PyTorch (no torch.compile).

`benchmarks/torch_fewshot.py` has the references of the other learners
(ProtoNet, MetaOptNet) and MAML on any `nn.Module` backbone (ResNet-12).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

NUM_BLOCKS = 4
HIDDEN = 64
BN_EPS = 1e-5


def param_names(num_blocks: int = NUM_BLOCKS) -> list[str]:
  names = []
  for i in range(num_blocks):
    names += [f"block{i}.conv.weight", f"block{i}.conv.bias",
              f"block{i}.bn.weight", f"block{i}.bn.bias"]
  return names + ["head.weight", "head.bias"]


def init_params(ways: int = 5, seed: int = 0, in_channels: int = 1, hidden: int = HIDDEN,
                num_blocks: int = NUM_BLOCKS, device="cpu",
                dtype=torch.float32) -> dict[str, torch.Tensor]:
  """Lecun-normal conv/linear weights (std 1/sqrt(fan_in)), zero biases, BN scale 1."""
  g = torch.Generator().manual_seed(seed)
  p = {}
  c = in_channels
  for i in range(num_blocks):
    w = torch.randn(hidden, c, 3, 3, generator=g, dtype=dtype) / math.sqrt(9 * c)
    p[f"block{i}.conv.weight"] = w
    p[f"block{i}.conv.bias"] = torch.zeros(hidden, dtype=dtype)
    p[f"block{i}.bn.weight"] = torch.ones(hidden, dtype=dtype)
    p[f"block{i}.bn.bias"] = torch.zeros(hidden, dtype=dtype)
    c = hidden
  p["head.weight"] = torch.randn(ways, hidden, generator=g, dtype=dtype) / math.sqrt(hidden)
  p["head.bias"] = torch.zeros(ways, dtype=dtype)
  return {k: v.to(device) for k, v in p.items()}


def batch_norm(x_NxCxHxW, weight, bias, eps: float = BN_EPS):
  """Training-mode BatchNorm with batch statistics (biased variance), no running stats.

  The same function as `F.batch_norm(x, None, None, weight, bias, training=True,
  eps=eps)` (agrees to ~1e-15 in float64), written out because in torch 2.13 the
  vmap batching rule of the native batch-norm backward is wrong (known upstream:
  pytorch/functorch#534): `grad(vmap(task_loss))` with `F.batch_norm` and a
  second-order inner loop gave outer gradients off by up to ~2e-2 from the
  per-task loop (e.g. nonzero conv-bias gradients, which BN makes exactly 0).
  With this version vmap and the loop agree to ~1e-15.
  """
  mean = x_NxCxHxW.mean((0, 2, 3), keepdim=True)
  xc = x_NxCxHxW - mean
  var = (xc * xc).mean((0, 2, 3), keepdim=True)
  return xc * torch.rsqrt(var + eps) * weight[:, None, None] + bias[:, None, None]


def forward(params: Mapping[str, torch.Tensor], x_NxCxHxW: torch.Tensor) -> torch.Tensor:
  """Conv4 + linear head, purely functional; returns logits [N, ways]."""
  x = x_NxCxHxW
  i = 0
  while f"block{i}.conv.weight" in params:
    x = F.conv2d(x, params[f"block{i}.conv.weight"], params[f"block{i}.conv.bias"], padding=1)
    x = batch_norm(x, params[f"block{i}.bn.weight"], params[f"block{i}.bn.bias"])
    x = F.relu(x)
    x = F.max_pool2d(x, 2, 2)
    i += 1
  x = x.flatten(1)
  return F.linear(x, params["head.weight"], params["head.bias"])


def _ce(params, x, y):
  return F.cross_entropy(forward(params, x), y)


def adapt(params, support_x, support_y, inner_steps: int, inner_lr: float,
          first_order: bool = False):
  """`inner_steps` SGD steps on the support cross-entropy; returns fast weights."""
  fast = dict(params)
  inner_grad = grad(_ce)
  for _ in range(inner_steps):
    g = inner_grad(fast, support_x, support_y)
    if first_order:
      g = {k: v.detach() for k, v in g.items()}
    fast = {k: fast[k] - inner_lr * g[k] for k in fast}
  return fast


def task_loss(params, support_x, support_y, query_x, query_y, inner_steps, inner_lr,
              first_order=False):
  fast = adapt(params, support_x, support_y, inner_steps, inner_lr, first_order)
  return _ce(fast, query_x, query_y)


def meta_loss(params, support_x, support_y, query_x, query_y, inner_steps, inner_lr,
              first_order=False):
  """Mean query loss over tasks; inputs have a leading task axis [B, ...]."""
  per_task = vmap(task_loss, in_dims=(None, 0, 0, 0, 0, None, None, None))(
      params, support_x, support_y, query_x, query_y, inner_steps, inner_lr, first_order)
  return per_task.mean()


def _tensor(x) -> torch.Tensor:
  """Tensor from a tensor or array-like (numpy/JAX arrays copied: they may be read-only)."""
  return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))


def _images(x, dtype, device):
  x = _tensor(x)
  if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):  # NHWC -> NCHW
    x = x.permute(0, 3, 1, 2)
  return x.to(device=device, dtype=dtype).contiguous()


def _labels(y, device):
  y = _tensor(y)
  return y.to(device=device, dtype=torch.long)


def maml_outer_grad(params, task, inner_steps: int = 1, inner_lr: float = 0.4,
                    first_order: bool = False, dtype=torch.float32) -> dict[str, np.ndarray]:
  """Outer (meta-)gradient of one task's query loss, for checking against JAX.

  Args:
    params: dict name -> array/tensor in the torch layout of the module
      docstring (use `params_from_flax` for flax params).
    task: (support_x, support_y, query_x, query_y) or a dict with those keys;
      images [N, 1, 28, 28] (NCHW) or [N, 28, 28, 1] (NHWC, transposed here),
      integer labels [N].
    inner_steps, inner_lr, first_order: as in the MAML step.
    dtype: computation dtype (torch.float64 for tight comparisons).

  Returns:
    dict name -> numpy array, same names and layouts as `params`
    (`grads_to_flax` gives the flax layout).
  """
  if isinstance(task, Mapping):
    task = (task["support_x"], task["support_y"], task["query_x"], task["query_y"])
  sx, sy, qx, qy = task
  p = {k: _tensor(v).detach().to(dtype=dtype) for k, v in params.items()}
  sx, qx = _images(sx, dtype, "cpu"), _images(qx, dtype, "cpu")
  sy, qy = _labels(sy, "cpu"), _labels(qy, "cpu")
  g = grad(task_loss)(p, sx, sy, qx, qy, inner_steps, inner_lr, first_order)
  return {k: v.detach().cpu().numpy() for k, v in g.items()}


def params_from_flax(flax_params) -> dict[str, np.ndarray]:
  """flax Conv4(num_classes=...) `variables['params']` -> torch-layout numpy dict."""
  out = {}
  i = 0
  while f"block{i}" in flax_params:
    b = flax_params[f"block{i}"]
    out[f"block{i}.conv.weight"] = np.transpose(np.asarray(b["Conv_0"]["kernel"]), (3, 2, 0, 1))
    out[f"block{i}.conv.bias"] = np.asarray(b["Conv_0"]["bias"])
    out[f"block{i}.bn.weight"] = np.asarray(b["BatchNorm_0"]["scale"])
    out[f"block{i}.bn.bias"] = np.asarray(b["BatchNorm_0"]["bias"])
    i += 1
  out["head.weight"] = np.asarray(flax_params["head"]["kernel"]).T
  out["head.bias"] = np.asarray(flax_params["head"]["bias"])
  return out


def grads_to_flax(torch_grads: Mapping[str, np.ndarray]) -> dict:
  """Torch-layout dict (e.g. from `maml_outer_grad`) -> nested flax-layout dict."""
  out = {}
  i = 0
  while f"block{i}.conv.weight" in torch_grads:
    out[f"block{i}"] = {
        "Conv_0": {"kernel": np.transpose(np.asarray(torch_grads[f"block{i}.conv.weight"]),
                                          (2, 3, 1, 0)),
                   "bias": np.asarray(torch_grads[f"block{i}.conv.bias"])},
        "BatchNorm_0": {"scale": np.asarray(torch_grads[f"block{i}.bn.weight"]),
                        "bias": np.asarray(torch_grads[f"block{i}.bn.bias"])},
    }
    i += 1
  out["head"] = {"kernel": np.asarray(torch_grads["head.weight"]).T,
                 "bias": np.asarray(torch_grads["head.bias"])}
  return out


def _sync(device):
  if device.type == "cuda":
    torch.cuda.synchronize()


def make_step(ways=5, shots=1, queries=15, meta_batch=32, inner_steps=5, inner_lr=0.4,
              first_order=False, threads=0, seed=0, chunk=0):
  """(step, sync, device): one MAML meta-training step on fixed random tasks.

  `step()` runs it (asynchronously on a GPU: call `sync()` before reading a
  clock), so a caller can interleave it with another implementation's steps.
  With `chunk` > 0 (a divisor of `meta_batch`) the outer gradient is taken
  over `chunk` vmapped tasks at a time and averaged, as our trainer's
  gradient chunks (`fsl_jax.meta.base.task_chunk`) do; torch.func on CPU
  gains from it too.
  """
  if chunk and meta_batch % chunk:
    raise ValueError(f"chunk={chunk} must divide meta_batch={meta_batch}.")
  chunk = chunk or meta_batch
  if threads > 0:
    torch.set_num_threads(threads)
  torch.manual_seed(seed)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  meta = {k: torch.nn.Parameter(v) for k, v in init_params(ways, seed, device=device).items()}
  opt = torch.optim.Adam(meta.values(), lr=1e-3)

  g = torch.Generator().manual_seed(seed + 1)
  sx = torch.randn(meta_batch, ways * shots, 1, 28, 28, generator=g).to(device)
  qx = torch.randn(meta_batch, ways * queries, 1, 28, 28, generator=g).to(device)
  sy = torch.arange(ways).repeat_interleave(shots).expand(meta_batch, -1).contiguous().to(device)
  qy = torch.arange(ways).repeat_interleave(queries).expand(meta_batch, -1).contiguous().to(device)
  outer_grad = grad(meta_loss)

  def step():
    p = {k: v.detach() for k, v in meta.items()}
    total = None
    for i in range(0, meta_batch, chunk):
      c = slice(i, i + chunk)
      gr = outer_grad(p, sx[c], sy[c], qx[c], qy[c], inner_steps, inner_lr, first_order)
      total = gr if total is None else {k: total[k] + gr[k] for k in gr}
    for k, v in meta.items():
      v.grad = total[k] / (meta_batch // chunk)
    opt.step()

  return step, lambda: _sync(device), device


def describe(device) -> dict:
  return {"torch_version": torch.__version__, "threads": torch.get_num_threads(),
          "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def run(ways=5, shots=1, queries=15, meta_batch=32, inner_steps=5, steps=5, inner_lr=0.4,
        first_order=False, threads=0, warmup=1, seed=0, chunk=0) -> dict:
  """Times `steps` MAML meta-training steps after `warmup` untimed ones."""
  step, sync, device = make_step(ways, shots, queries, meta_batch, inner_steps, inner_lr,
                                 first_order, threads, seed, chunk)
  sync()
  t0 = time.perf_counter()
  for _ in range(warmup):
    step()
  sync()
  warmup_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    step()
  sync()
  dt = time.perf_counter() - t0
  return {
      "impl": "torch.func",
      "tasks_per_s": meta_batch * steps / dt,
      "step_ms": 1000 * dt / steps,
      "warmup_s": warmup_s,
      **describe(device),
      "ways": ways, "shots": shots, "queries": queries, "meta_batch": meta_batch,
      "inner_steps": inner_steps, "steps": steps, "inner_lr": inner_lr,
      "first_order": first_order, "warmup": warmup, "seed": seed, "chunk": chunk,
  }


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--ways", type=int, default=5)
  ap.add_argument("--shots", type=int, default=1)
  ap.add_argument("--queries", type=int, default=15)
  ap.add_argument("--meta_batch", type=int, default=32)
  ap.add_argument("--inner_steps", type=int, default=5)
  ap.add_argument("--steps", type=int, default=5, help="Timed steps after warm-up.")
  ap.add_argument("--inner_lr", type=float, default=0.4)
  ap.add_argument("--first_order", action="store_true")
  ap.add_argument("--threads", type=int, default=0, help="0: torch's default.")
  ap.add_argument("--warmup", type=int, default=1, help="Untimed warm-up steps.")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--chunk", type=int, default=0,
                  help="Tasks per outer-gradient chunk, averaged (0: the whole meta-batch).")
  a = ap.parse_args(argv)
  print(json.dumps(run(a.ways, a.shots, a.queries, a.meta_batch, a.inner_steps, a.steps,
                       a.inner_lr, a.first_order, a.threads, a.warmup, a.seed, a.chunk)))


if __name__ == "__main__":
  main()
