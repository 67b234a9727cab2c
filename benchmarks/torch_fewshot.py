r"""PyTorch training steps of ProtoNet, MetaOptNet and MAML on any backbone, for throughput.

`benchmarks/meta_step.py --compare_torch` times these beside our jitted
step, on the same machine in the same process; tests/test_torch_reference.py
checks on copied weights that they compute our learners' losses, logits and
gradients. They are written the way a careful PyTorch user would write them
(eager, no torch.compile), with the same shapes, backbone and learner:

- Backbones: `ResNet12` of benchmarks/torch_resnet12.py (MetaOptNet / FEAT
  variant, BatchNorm in training mode, dropout and DropBlock at the same
  rates as ours) or `Conv4` below (fsl_jax.models.conv4, any input size).
- Episodes: a synthetic split [classes, per_class, C, H, W] held on the
  device, uint8 for natural images (float32 for the 1-channel Omniglot shape),
  as ours; every step draws `meta_batch` fresh episodes (N classes, K+Q
  examples each, torch.randperm / argsort of uniforms) and turns the gathered
  pixels into float32 in [0, 1] inside the step, as fsl_jax.data.sources.as_float.
- Episodes of a meta-batch are looped, not batched: one backbone batch per
  episode (support and query together, so training-mode BatchNorm sees the
  episode, as ours under vmap), the loss divided by `meta_batch` and
  backpropagated per episode, then one Adam step (lr 1e-3, as the benchmark's
  optax.adam).
- ProtoNet: class-mean prototypes, logits = -squared Euclidean distances
  (|q|^2 - 2 q.p + |p|^2, clamped at 0, as fsl_jax.meta.protonet), cross-entropy.
- MetaOptNet: the Crammer-Singer SVM dual of fsl_jax.meta.metaopt (C, ridge r,
  learned `scale`) solved by the same algorithm: `iterations` Mehrotra
  predictor-corrector interior-point steps with the same start, step rule and
  stopping mask, each with the same block-diagonal solves (N Cholesky
  factorisations of [S, S] plus an [S, S] Schur complement), written here in
  torch (torch.linalg.cholesky_ex / cholesky_solve); its gradient is the same
  implicit differentiation of the KKT conditions at the last iterate (a
  torch.autograd.Function whose backward is one more block solve), not
  autograd through the iterations. MetaOptNet's own code used qpth (the same
  kind of solver, dense (S N)^2 KKT solves); qpth is not required here.
- MAML: `torch.func.functional_call` of the module with a dict of fast
  weights and its buffers (BatchNorm running statistics), `inner_steps` SGD
  steps on the support cross-entropy through `torch.autograd.grad`
  (create_graph for second order, detached gradients for first order), the
  query loss at the adapted weights, backward into the meta-weights. All
  parameters adapt (BatchNorm's scale and shift too), as ours. One
  difference that costs nothing measurable: torch's BatchNorm updates its
  running statistics on every training-mode pass (support passes too);
  ours keeps those of the final query pass.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from torch.func import functional_call

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_resnet12  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

ALGOS = ("protonet", "metaopt", "maml", "fomaml")
MODELS = ("conv4", "resnet12")


# ------------------------------------------------------------ backbones

class Conv4(nn.Module):
  """fsl_jax.models.conv4.Conv4: 4 x [conv3x3 + bias, BN, ReLU, max-pool 2], flattened NCHW."""

  def __init__(self, hidden: int = 64, num_blocks: int = 4, in_channels: int = 1,
               num_classes: int | None = None, image_size: int = 28):
    super().__init__()
    self.blocks = nn.Sequential(*[nn.Sequential(
        nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1),
        nn.BatchNorm2d(hidden, momentum=0.1, eps=1e-5), nn.ReLU(), nn.MaxPool2d(2))
        for i in range(num_blocks)])
    self.side = image_size // 2**num_blocks
    dim = hidden * self.side**2
    self.head = None if num_classes is None else nn.Linear(dim, num_classes)

  def forward(self, x_NCHW):
    x = self.blocks(x_NCHW).flatten(1)
    return x if self.head is None else self.head(x)


def backbone(model: str, image_size: int, channels: int, num_classes: int | None = None,
             widths=(64, 160, 320, 640), drop_rate: float = 0.1, block_size: int = 5,
             avg_pool: bool = True, hidden: int = 64) -> nn.Module:
  """The torch counterpart of `fsl_jax.models.get(model, ...)`: conv4 (`hidden` wide), resnet12."""
  if model == "conv4":
    return Conv4(hidden, in_channels=channels, num_classes=num_classes, image_size=image_size)
  if model == "resnet12":
    return torch_resnet12.ResNet12(tuple(widths), drop_rate, avg_pool, block_size,
                                   in_channels=channels, num_classes=num_classes,
                                   image_size=image_size)
  raise ValueError(f"No torch reference for model {model!r}; use one of {', '.join(MODELS)}.")


@torch.no_grad()
def load_from_flax(net: nn.Module, variables) -> nn.Module:
  """Copies flax variables ({'params', 'batch_stats'}) into `net`.

  Conv4 here; a ResNet12 by torch_resnet12.load_from_flax.
  """
  if not isinstance(net, Conv4):
    return torch_resnet12.load_from_flax(net, variables)
  t = lambda a: torch.from_numpy(np.array(a, np.float32))  # noqa: E731
  params, stats = variables["params"], variables.get("batch_stats", {})
  for i, (conv, bn, _, _) in enumerate(net.blocks):
    p, s = params[f"block{i}"], stats.get(f"block{i}", {}).get("BatchNorm_0")
    conv.weight.copy_(t(p["Conv_0"]["kernel"]).permute(3, 2, 0, 1))
    conv.bias.copy_(t(p["Conv_0"]["bias"]))
    bn.weight.copy_(t(p["BatchNorm_0"]["scale"]))
    bn.bias.copy_(t(p["BatchNorm_0"]["bias"]))
    if s is not None:
      bn.running_mean.copy_(t(s["mean"]))
      bn.running_var.copy_(t(s["var"]))
  if net.head is not None:  # flax flattens NHWC: reorder the kernel's rows to NCHW
    kernel = t(params["head"]["kernel"])
    c = net.blocks[0][0].out_channels
    n = kernel.shape[-1]
    kernel = kernel.reshape(net.side, net.side, c, n).permute(2, 0, 1, 3).reshape(-1, n)
    net.head.weight.copy_(kernel.T)
    net.head.bias.copy_(t(params["head"]["bias"]))
  return net


# ------------------------------------------------------------ episodes

def random_split(classes: int, per_class: int, image_size: int, channels: int, uint8: bool,
                 seed: int = 0, device="cpu") -> torch.Tensor:
  """[classes, per_class, C, H, W] random images: uint8, or float32 in [0, 1]."""
  g = torch.Generator().manual_seed(seed)
  shape = (classes, per_class, channels, image_size, image_size)
  x = (torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) if uint8
       else torch.rand(shape, generator=g))
  return x.to(device)


def sample_episode(split, ways: int, shots: int, queries: int, generator=None):
  """(support_x [N*K, C, H, W] float32 in [0, 1], support_y, query_x, query_y) from `split`.

  N distinct classes and K+Q distinct examples of each; labels 0..N-1 grouped by class.
  """
  c, m = split.shape[:2]
  classes_N = torch.randperm(c, generator=generator)[:ways]
  idx_NxS = torch.rand(ways, m, generator=generator).argsort(1)[:, :shots + queries]
  x = split[classes_N[:, None].to(split.device), idx_NxS.to(split.device)]
  x = x.float() / 255 if x.dtype == torch.uint8 else x
  labels = lambda per: torch.arange(ways, device=split.device).repeat_interleave(per)  # noqa: E731
  return (x[:, :shots].flatten(0, 1), labels(shots), x[:, shots:].flatten(0, 1), labels(queries))


def _ce_and_accuracy(logits_QxN, y_Q):
  return F.cross_entropy(logits_QxN, y_Q), (logits_QxN.argmax(-1) == y_Q).float().mean()


def embed_episode(net: nn.Module, support_x, query_x):
  """(support [N*K, D], query [N*Q, D]): one backbone batch, as fsl_jax.meta.embedding."""
  emb = net(torch.cat([support_x, query_x]))
  return emb[:support_x.shape[0]], emb[support_x.shape[0]:]


# ------------------------------------------------------------ ProtoNet

def protonet_logits(support_SxD, support_y_S, query_QxD, ways: int):
  onehot_SxN = F.one_hot(support_y_S, ways).to(support_SxD.dtype)
  protos_NxD = (onehot_SxN.T @ support_SxD) / onehot_SxN.sum(0)[:, None]
  d = ((query_QxD ** 2).sum(-1, keepdim=True) - 2 * query_QxD @ protos_NxD.T
       + (protos_NxD ** 2).sum(-1)[None, :])
  return -d.clamp(min=0)


def protonet_loss(net, episode, ways: int):
  """(loss, accuracy) of one episode, fsl_jax.meta.protonet's outer loss."""
  sx, sy, qx, qy = episode
  s, q = embed_episode(net, sx, qx)
  return _ce_and_accuracy(protonet_logits(s, sy, q, ways), qy)


# ------------------------------------------------------------ MetaOptNet's SVM head

def _factor(gram_SxS, diag_SxN):
  """(inverses of G_n = gram + diag(d_n) [N, S, S], Cholesky of their sum, the Schur complement)."""
  g_NxSxS = gram_SxS + torch.diag_embed(diag_SxN.T)
  eye = torch.eye(gram_SxS.shape[0], dtype=gram_SxS.dtype, device=gram_SxS.device)
  ginv_NxSxS = torch.cholesky_solve(eye.expand_as(g_NxSxS), torch.linalg.cholesky_ex(g_NxSxS)[0])
  ginv_NxSxS = 0.5 * (ginv_NxSxS + ginv_NxSxS.transpose(1, 2))
  return ginv_NxSxS, torch.linalg.cholesky_ex(ginv_NxSxS.sum(0))[0]


def _solve(factors, rhs_SxN, rowsum_S):
  """(u [S, N], w [S]) with G_n u[:, n] + w = rhs[:, n] and sum_n u[:, n] = rowsum."""
  ginv_NxSxS, schur = factors
  grhs_NxS = torch.einsum("nij,jn->ni", ginv_NxSxS, rhs_SxN)
  w_S = torch.cholesky_solve((grhs_NxS.sum(0) - rowsum_S)[:, None], schur)[:, 0]
  return (grhs_NxS - ginv_NxSxS @ w_S).T, w_S


def _max_step(x, dx):
  """Largest t in (0, 1] with x + t dx >= 0 (x > 0)."""
  neg = dx < 0
  ratio = torch.where(neg, -x / torch.where(neg, dx, -torch.ones_like(dx)),
                      torch.full_like(dx, math.inf))
  return ratio.min().clamp(max=1.0)


def interior_point(kernel_SxS, onehot_SxN, c: float, ridge: float, iterations: int):
  """(alpha [S, N], barrier diagonal z / s): fsl_jax.meta.metaopt._interior_point in torch."""
  s_n = onehot_SxN.shape[0]
  gram = kernel_SxS + ridge * torch.eye(s_n, dtype=kernel_SxS.dtype, device=kernel_SxS.device)
  bound = c * onehot_SxN
  a, nu = _solve(_factor(gram, torch.ones_like(onehot_SxN)), onehot_SxN + bound,
                 torch.zeros_like(onehot_SxN[:, 0]))
  slack = bound - a
  dual = -slack
  slack = slack + (-slack.min()).clamp(min=0) + c
  dual = dual + (-dual.min()).clamp(min=0) + c
  finfo = torch.finfo(kernel_SxS.dtype)
  for _ in range(iterations):
    r_dual = gram @ a - onehot_SxN + nu[:, None] + dual
    r_eq, r_box = a.sum(1), a + slack - bound
    mu = (slack * dual).mean()
    factors = _factor(gram, dual / slack)

    def direction(r_comp):
      da, dnu = _solve(factors, -r_dual + (r_comp - dual * r_box) / slack, -r_eq)
      ds = -r_box - da
      return da, dnu, ds, (-r_comp - dual * ds) / slack

    _, _, ds_aff, dz_aff = direction(slack * dual)
    t_aff = torch.minimum(_max_step(slack, ds_aff), _max_step(dual, dz_aff))
    mu_aff = ((slack + t_aff * ds_aff) * (dual + t_aff * dz_aff)).mean()
    sigma = (mu_aff / mu.clamp(min=finfo.tiny)).clamp(0.0, 1.0) ** 3
    da, dnu, ds, dz = direction(slack * dual - sigma * mu + ds_aff * dz_aff)
    t = 0.99 * torch.minimum(_max_step(slack, ds), _max_step(dual, dz))
    done = mu < 4 * finfo.eps ** 2  # a tensor: no host sync, as ours under jit
    a, nu, slack, dual = (torch.where(done, o, o + t * d) for o, d in
                          ((a, da), (nu, dnu), (slack, ds), (dual, dz)))
  return a, dual / slack


class SVMDual(torch.autograd.Function):
  """alpha [S, N] of the Crammer-Singer dual; backward by implicit differentiation in K."""

  @staticmethod
  def forward(ctx, kernel_SxS, onehot_SxN, c, ridge, iterations):  # pylint: disable=W0221
    alpha_SxN, d_SxN = interior_point(kernel_SxS, onehot_SxN, c, ridge, iterations)
    ctx.save_for_backward(kernel_SxS, alpha_SxN, d_SxN)
    ctx.ridge = ridge
    return alpha_SxN

  @staticmethod
  def backward(ctx, g_alpha_SxN):  # pylint: disable=W0221
    kernel_SxS, alpha_SxN, d_SxN = ctx.saved_tensors
    gram = kernel_SxS + ctx.ridge * torch.eye(kernel_SxS.shape[0], dtype=kernel_SxS.dtype,
                                              device=kernel_SxS.device)
    u_SxN, _ = _solve(_factor(gram, d_SxN), g_alpha_SxN, torch.zeros_like(alpha_SxN[:, 0]))
    return -u_SxN @ alpha_SxN.T, None, None, None, None


def metaopt_logits(support_SxD, support_y_S, query_QxD, ways: int, scale, c: float = 0.1,
                   ridge: float = 1.0, iterations: int = 15):
  """[Q, N] `scale * (X_q X^T) alpha`, as fsl_jax.meta.metaopt.metaopt_logits."""
  onehot_SxN = F.one_hot(support_y_S, ways).to(support_SxD.dtype)
  alpha_SxN = SVMDual.apply(support_SxD @ support_SxD.T, onehot_SxN, c, ridge, iterations)
  return scale * ((query_QxD @ support_SxD.T) @ alpha_SxN)


def metaopt_loss(net, scale, episode, ways: int, c=0.1, ridge=1.0, iterations=15):
  sx, sy, qx, qy = episode
  s, q = embed_episode(net, sx, qx)
  return _ce_and_accuracy(metaopt_logits(s, sy, q, ways, scale, c, ridge, iterations), qy)


# ------------------------------------------------------------ MAML

def maml_loss(net, episode, inner_steps: int = 1, inner_lr: float = 0.4,
              first_order: bool = False):
  """(query loss, accuracy) after `inner_steps` SGD steps from `net`'s weights on the support."""
  sx, sy, qx, qy = episode
  fast = dict(net.named_parameters())
  buffers = dict(net.named_buffers())
  run = lambda w, x: functional_call(net, (w, buffers), (x,))  # noqa: E731
  for _ in range(inner_steps):
    loss = F.cross_entropy(run(fast, sx), sy)
    grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
    fast = {k: w - inner_lr * g for (k, w), g in zip(fast.items(), grads)}
  return _ce_and_accuracy(run(fast, qx), qy)


# ------------------------------------------------------------ the timed step

def make_step(algo: str, net: nn.Module, ways: int, shots: int, queries: int, meta_batch: int,
              split, inner_steps: int = 1, inner_lr: float = 0.4, svm_c: float = 0.1,
              svm_ridge: float = 1.0, svm_iterations: int = 15, lr: float = 1e-3, seed: int = 0,
              channels_last: bool = False):
  """(step, sync, device): `step()` samples `meta_batch` episodes from `split` and trains once.

  `net` is the learner's backbone (with a `ways`-way head for maml/fomaml);
  `split` a tensor from `random_split`, on the device to run on. `step()`
  may run asynchronously on a GPU: call `sync()` before reading a clock.
  """
  if algo not in ALGOS:
    raise ValueError(f"No torch reference for algo {algo!r}; use one of {', '.join(ALGOS)}.")
  device = split.device
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  net = net.to(device, memory_format=fmt).train()
  params = list(net.parameters())
  scale = None
  if algo == "metaopt":
    scale = nn.Parameter(torch.tensor(1.0, device=device))  # MetaOptNet's scale init
    params.append(scale)
  opt = torch.optim.Adam(params, lr=lr)
  gen = torch.Generator().manual_seed(seed)

  def loss_fn(episode):
    if algo == "protonet":
      return protonet_loss(net, episode, ways)
    if algo == "metaopt":
      return metaopt_loss(net, scale, episode, ways, svm_c, svm_ridge, svm_iterations)
    return maml_loss(net, episode, inner_steps, inner_lr, first_order=algo == "fomaml")

  def step():
    opt.zero_grad(set_to_none=True)
    for _ in range(meta_batch):
      sx, sy, qx, qy = sample_episode(split, ways, shots, queries, gen)
      episode = (sx.contiguous(memory_format=fmt), sy, qx.contiguous(memory_format=fmt), qy)
      loss, _ = loss_fn(episode)
      (loss / meta_batch).backward()
    opt.step()

  return step, lambda: torch.cuda.synchronize() if device.type == "cuda" else None, device
