"""Vision Transformers (ViT, DINO, DINOv2, CLIP's image tower) reading Hugging Face checkpoints.

One `ViT` module covers the three transformers layouts, which differ only in
flags (transformers 5.24, models/{vit,dinov2,clip}/modeling_*.py):

| | ViTModel (ViT, DINO v1) | Dinov2Model | CLIPVisionModel |
|---|---|---|---|
| LayerNorm eps | 1e-12 | 1e-6 | 1e-5 |
| MLP activation | gelu (erf) | gelu (erf) | quick_gelu, x * sigmoid(1.702 x) |
| patch conv bias | yes | yes | no |
| LayerScale (`layer_scaleN.lambda1`) | no | yes, on both branches | no |
| norm before the encoder | no | no | `pre_layrnorm` |
| final norm | `layernorm`, every token | `layernorm`, every token | `post_layernorm`, pooled only |
| features (pool='cls') | `last_hidden_state[:, 0]` | the same (= pooler_output) | `pooler_output` |

Every block is pre-norm: x + attn(norm1(x)) (* lambda1), then x + mlp(norm2(x))
(* lambda2); attention is softmax(q k^T / sqrt(head_dim)) v in float32, the
MLP hidden_size -> mlp_dim -> hidden_size. The class token is prepended to
the patch embeddings (a conv of kernel = stride = patch_size, rows and columns
past the last whole patch dropped), then the learned position table is added.

Position embeddings are learned for `image_size // patch_size` patches a side
(+1 for the class token). Another input size gets the table resized as
transformers does it (`interpolate_pos_encoding`): the patch grid bicubically
resampled as `torch.nn.functional.interpolate(size=(H // p, W // p),
mode='bicubic', align_corners=False)`, i.e. Keys' cubic with a = -0.75, source
coordinate (i + 0.5) * in / out - 0.5, edge samples clamped (`bicubic_matrix`);
the class token's row is kept. ViTModel and CLIPVisionModel only do this when
called with `interpolate_pos_encoding=True` (they refuse other sizes without
it); Dinov2Model always does, and its checkpoints carry a table for 518x518
(37x37 patches + 1), so DINOv2 at 224 always resizes it (to 16x16). This is
the installed transformers' rule; facebookresearch/dinov2 and older
transformers releases resized by a scale factor with a 0.1 offset instead
(slightly different tables at other sizes; not compared here).

    net = models.get("dinov2_s14")                     # random weights, 22,056,192 parameters
    net, variables = vit.load_hf("facebook/dinov2-small")   # a save_pretrained dir or a hub id
    feats_BxD = net.apply(variables, x_BxHxWx3, train=False)
    tokens_BxTxD = net.apply(variables, x_BxHxWx3, train=False, tokens=True)

Inputs are NHWC floats already normalised the way the checkpoint was trained
(`MEAN`, `STD` by kind, on the 0..255 scale as fsl_jax.models.pretrained uses):
ImageNet's mean/std for DINO v1 (as trained; the hub's preprocessor_config of
facebook/dino-vits16 says 0.5/0.5) and DINOv2, CLIP's own for CLIP, and
`HALF` (x - 0.5) / 0.5 for google/vit-* checkpoints.

Checkpoint names: files (and transformers < 5) say
encoder.layer.N.attention.attention.query, ...; transformers 5 renames ViT
and DINOv2 weights when it loads them (layers.N.attention.q_proj, ...) and
back when it saves. `variables_from_hf` reads both.

`pool`: 'cls' (the default, transformers' features), 'mean' (mean of the patch
tokens), 'cls_mean' (both concatenated, [B, 2D]: what DINOv2's linear probes
and Dinov2ForImageClassification read). CLIP's post_layernorm is applied to
whichever vector is pooled. `num_classes` adds a 'head' Dense (logits; the
features are then sown as ('intermediates', 'features')); `projection_dim`
adds CLIP's bias-free `visual_projection` (CLIPModel.get_image_features).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import models
from fsl_jax.models import hf_loading
from fsl_jax.models import layers
from fsl_jax.models import torch_weights as tw

# Normalisation on the 0..255 scale (pretrained.Pretrained's convention): x = (pixel - MEAN) / STD.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CLIP_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
CLIP_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)
HALF = (127.5, 127.5, 127.5)  # google/vit-*: (x - 0.5) / 0.5

KINDS = ("vit", "dinov2", "clip")

# The flags each checkpoint family fixes (the rest are sizes, read from config.json).
KIND_FLAGS: dict[str, dict[str, Any]] = {
    "vit": dict(layer_scale=False, pre_norm=False, final_norm="tokens", patch_bias=True),
    "dinov2": dict(layer_scale=True, pre_norm=False, final_norm="tokens", patch_bias=True),
    "clip": dict(layer_scale=False, pre_norm=True, final_norm="pooled", patch_bias=False,
                 qkv_bias=True),
}

_ACTIVATIONS = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
    "relu": nn.relu,
}


def bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
  """[n_out, n_in] weights of PyTorch's 1-D bicubic resize (align_corners=False, size=n_out).

  aten/src/ATen/native/UpSample.h: source x = (i + 0.5) * n_in / n_out - 0.5,
  taps floor(x) - 1 .. floor(x) + 2 clamped to [0, n_in - 1], weights Keys'
  cubic convolution with a = -0.75. Resizing to the same size is the identity.
  """
  m = np.zeros((n_out, n_in), np.float64)
  scale = n_in / n_out
  cc1 = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1        # |x| <= 1
  cc2 = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  for i in range(n_out):
    src = scale * (i + 0.5) - 0.5
    i0 = math.floor(src)
    t = src - i0
    for k, w in zip(range(i0 - 1, i0 + 3), (cc2(t + 1), cc1(t), cc1(1 - t), cc2(2 - t))):
      m[i, min(max(k, 0), n_in - 1)] += w
  return m


def resize_positions(pos_TxD, grid: int, new_hw: tuple[int, int]) -> jax.Array:
  """The position table [1 + grid^2, D] for a new_h x new_w patch grid (class row kept)."""
  if tuple(new_hw) == (grid, grid):
    return pos_TxD
  d = pos_TxD.shape[-1]
  patches_GxGxD = pos_TxD[1:].reshape(grid, grid, d)
  mh = jnp.asarray(bicubic_matrix(grid, new_hw[0]), jnp.float32)
  mw = jnp.asarray(bicubic_matrix(grid, new_hw[1]), jnp.float32)
  hp = jax.lax.Precision.HIGHEST
  resized = jnp.einsum("yi,ijd->yjd", mh, patches_GxGxD.astype(jnp.float32), precision=hp)
  resized = jnp.einsum("xj,yjd->yxd", mw, resized, precision=hp)
  return jnp.concatenate([pos_TxD[:1], resized.reshape(-1, d).astype(pos_TxD.dtype)], axis=0)


class Attention(nn.Module):
  """Multi-head self-attention: query/key/value/out Dense layers, fp32 softmax."""
  heads: int
  qkv_bias: bool = True
  dtype: Any = jnp.float32
  attention_impl: str = "auto"  # layers.attention: per-example on CPU, einsum elsewhere

  @nn.compact
  def __call__(self, x_BxTxD):
    b, t, d = x_BxTxD.shape
    hd = d // self.heads
    dense = lambda name, bias: nn.Dense(d, use_bias=bias, dtype=self.dtype, name=name)
    split = lambda y: y.reshape(b, t, self.heads, hd)
    q = split(dense("query", self.qkv_bias)(x_BxTxD))
    k = split(dense("key", self.qkv_bias)(x_BxTxD))
    v = split(dense("value", self.qkv_bias)(x_BxTxD))
    out_BxTxD = layers.attention(q, k, v, self.attention_impl).reshape(b, t, d)
    return dense("out", True)(out_BxTxD)


class Block(nn.Module):
  """x + attn(norm1(x)) [* layer_scale1], then x + mlp(norm2(x)) [* layer_scale2]."""
  heads: int
  mlp_dim: int
  eps: float
  activation: str = "gelu"
  layer_scale: bool = False
  qkv_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD):
    d = x_BxTxD.shape[-1]
    norm = lambda name: nn.LayerNorm(self.eps, dtype=self.dtype, use_fast_variance=False,
                                     name=name)
    scale = lambda y, name: (y * self.param(name, nn.initializers.ones, (d,)).astype(y.dtype)
                             if self.layer_scale else y)
    y = Attention(self.heads, self.qkv_bias, self.dtype, name="attn")(norm("norm1")(x_BxTxD))
    x_BxTxD = x_BxTxD + scale(y, "layer_scale1")
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(norm("norm2")(x_BxTxD))
    y = nn.Dense(d, dtype=self.dtype, name="fc2")(_ACTIVATIONS[self.activation](y))
    return x_BxTxD + scale(y, "layer_scale2")


class ViT(nn.Module):
  """Features [B, D] (or [B, 2D] for pool='cls_mean'); logits with `num_classes`.

  `__call__(x_BxHxWxC, train=True, tokens=False)`; `tokens=True` gives
  transformers' `last_hidden_state` [B, 1 + (H // p) * (W // p), D] instead
  (final-normed for ViT/DINOv2; CLIP's encoder output, not normed).
  """
  patch_size: int = 16
  image_size: int = 224          # pretraining side: position grid image_size // patch_size
  hidden: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  eps: float = 1e-12
  activation: str = "gelu"       # 'gelu' (erf), 'quick_gelu' (CLIP), 'gelu_new', 'relu'
  layer_scale: bool = False      # DINOv2's lambda1 on both residual branches
  pre_norm: bool = False         # CLIP's pre_layrnorm on the embeddings
  final_norm: str = "tokens"     # 'tokens' (ViT/DINOv2 layernorm) or 'pooled' (CLIP post_layernorm)
  patch_bias: bool = True
  qkv_bias: bool = True
  pool: str = "cls"              # 'cls', 'mean' (patch tokens) or 'cls_mean' (concatenated)
  num_classes: int | None = None
  projection_dim: int | None = None   # CLIP's visual_projection (bias-free), after the pooled norm
  dropout: float = 0.0           # before the head
  dtype: Any = jnp.float32

  dropout_fields = ("dropout",)

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  def _check(self):
    if self.hidden % self.heads:
      raise ValueError(f"hidden={self.hidden} is not a multiple of heads={self.heads}.")
    if self.final_norm not in ("tokens", "pooled"):
      raise ValueError(f"final_norm={self.final_norm!r}; use 'tokens' or 'pooled'.")
    if self.pool not in ("cls", "mean", "cls_mean"):
      raise ValueError(f"pool={self.pool!r}; use 'cls', 'mean' or 'cls_mean'.")
    if self.activation not in _ACTIVATIONS:
      raise ValueError(f"activation={self.activation!r}; known: {', '.join(_ACTIVATIONS)}.")

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = True, tokens: bool = False):
    self._check()
    p, d = self.patch_size, self.hidden
    b, h, w, _ = x_BxHxWxC.shape
    if h < p or w < p:
      raise ValueError(f"Input {h}x{w} is smaller than one {p}x{p} patch.")
    x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", use_bias=self.patch_bias,
                dtype=self.dtype, name="patch_embed")(x_BxHxWxC.astype(self.dtype))
    gh, gw = x.shape[1], x.shape[2]
    cls_D = self.param("cls_token", nn.initializers.normal(0.02), (d,))
    pos_TxD = self.param("pos_embed", nn.initializers.normal(0.02), (self.grid ** 2 + 1, d))
    x = jnp.concatenate([jnp.broadcast_to(cls_D.astype(x.dtype), (b, 1, d)),
                         x.reshape(b, gh * gw, d)], axis=1)
    x = x + resize_positions(pos_TxD, self.grid, (gh, gw)).astype(x.dtype)
    norm = lambda name: nn.LayerNorm(self.eps, dtype=self.dtype, use_fast_variance=False,
                                     name=name)
    if self.pre_norm:
      x = norm("pre_norm")(x)
    for i in range(self.depth):
      x = Block(self.heads, self.mlp_dim, self.eps, self.activation, self.layer_scale,
                self.qkv_bias, self.dtype, name=f"layer{i}")(x)
    final = norm("norm")
    if self.final_norm == "tokens":
      x = final(x)
    if tokens:
      return x
    pooled = {"cls": [x[:, 0]], "mean": [x[:, 1:].mean(axis=1)],
              "cls_mean": [x[:, 0], x[:, 1:].mean(axis=1)]}[self.pool]
    if self.final_norm == "pooled":
      pooled = [final(v) for v in pooled]
    feats = jnp.concatenate(pooled, axis=-1)
    if self.projection_dim is not None:
      feats = nn.Dense(self.projection_dim, use_bias=False, dtype=self.dtype,
                       name="projection")(feats)
    if self.num_classes is None:
      return feats
    self.sow("intermediates", "features", feats)
    if self.dropout:
      layers.check_dropout_rng(self, train, (self.dropout,))
    feats = nn.Dropout(self.dropout)(feats, deterministic=not train)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(feats)


# ------------------------------------------------------------------ named sizes

PRESETS: dict[str, dict[str, Any]] = {
    # ViTModel: google/vit-*-patch16-224(-in21k); DINO v1's facebook/dino-vits16 / dino-vitb16.
    "vit_s16": dict(patch_size=16, image_size=224, hidden=384, depth=12, heads=6, mlp_dim=1536,
                    eps=1e-12, **KIND_FLAGS["vit"]),
    "vit_b16": dict(patch_size=16, image_size=224, hidden=768, depth=12, heads=12, mlp_dim=3072,
                    eps=1e-12, **KIND_FLAGS["vit"]),
    # Dinov2Model: facebook/dinov2-small / -base, position table for 518x518 (37x37 + 1).
    "dinov2_s14": dict(patch_size=14, image_size=518, hidden=384, depth=12, heads=6,
                       mlp_dim=1536, eps=1e-6, **KIND_FLAGS["dinov2"]),
    "dinov2_b14": dict(patch_size=14, image_size=518, hidden=768, depth=12, heads=12,
                       mlp_dim=3072, eps=1e-6, **KIND_FLAGS["dinov2"]),
    # CLIPVisionModel: openai/clip-vit-base-patch16 / -patch32 image towers.
    "clip_vit_b16": dict(patch_size=16, image_size=224, hidden=768, depth=12, heads=12,
                         mlp_dim=3072, eps=1e-5, activation="quick_gelu", **KIND_FLAGS["clip"]),
    "clip_vit_b32": dict(patch_size=32, image_size=224, hidden=768, depth=12, heads=12,
                         mlp_dim=3072, eps=1e-5, activation="quick_gelu", **KIND_FLAGS["clip"]),
}

# The input normalisation each family's checkpoints were trained with (0..255 scale).
MEAN = {"vit": IMAGENET_MEAN, "dinov2": IMAGENET_MEAN, "clip": CLIP_MEAN}
STD = {"vit": IMAGENET_STD, "dinov2": IMAGENET_STD, "clip": CLIP_STD}

for _name, _preset in PRESETS.items():
  models.register(_name, functools.partial(ViT, **_preset))


def _flags(model: ViT) -> dict:
  return {f: getattr(model, f) for f in ("layer_scale", "pre_norm", "final_norm", "patch_bias")}


# ------------------------------------------------------------------ Hugging Face checkpoints

_PREFIXES = {"vit": ("vit.",), "dinov2": ("dinov2.",), "clip": ("vision_model.",)}

# transformers >= 5 renames ViT/DINOv2 weights when it loads them (conversion_mapping.py)
# and renames them back when it saves: a live model's state_dict() has the new names,
# files the old ones. Both are read; the entries use the files' names.
_ATTN_LIVE_TO_FILE = tuple(
    (rf"\.attention\.{live}\.", f".attention.{file}.") for live, file in
    (("q_proj", "attention.query"), ("k_proj", "attention.key"), ("v_proj", "attention.value"),
     ("o_proj", "output.dense")))
_LIVE_TO_FILE = {
    "vit": ((r"^layers\.(\d+)\.", r"encoder.layer.\1."), *_ATTN_LIVE_TO_FILE,
            (r"\.mlp\.fc1\.", ".intermediate.dense."), (r"\.mlp\.fc2\.", ".output.dense.")),
    "dinov2": _ATTN_LIVE_TO_FILE,
    "clip": (),
}


def _file_name(key: str, kind: str) -> str:
  for pattern, repl in _LIVE_TO_FILE[kind]:
    key = re.sub(pattern, repl, key)
  return key


def _ignorable(key: str, kind: str, model: ViT) -> bool:
  """Checkpoint tensors this module never uses (poolers, mask tokens, CLIP's text side)."""
  if kind == "clip":
    return (key.startswith("text_model.") or key in ("text_projection.weight", "logit_scale",
                                                     "embeddings.position_ids")
            or (key == "visual_projection.weight" and model.projection_dim is None))
  if key.startswith("classifier.") and model.num_classes is None:
    return True
  return key == "embeddings.mask_token" or (kind == "vit" and key.startswith("pooler."))


def _drop_leading(n: int) -> tw.Layout:
  """A torch parameter with n leading ones ([1, 1, D], [1, T, D]) -> ours without them."""
  return tw.Layout(f"drop{n}", lambda a: a.reshape(a.shape[n:]), lambda s: (1,) * n + tuple(s))


def hf_entries(model: ViT, kind: str) -> list[tw.Entry]:
  """File key (prefix stripped) -> this module's variable, for `kind`'s layout."""
  P = lambda *path: ("params", *path)
  dense = lambda key, path, bias=True: (
      [tw.Entry(f"{key}.weight", P(*path, "kernel"), tw.LINEAR)]
      + ([tw.Entry(f"{key}.bias", P(*path, "bias"))] if bias else []))
  ln = lambda key, path: [tw.Entry(f"{key}.weight", P(*path, "scale")),
                          tw.Entry(f"{key}.bias", P(*path, "bias"))]
  e: list[tw.Entry] = []
  if kind == "clip":
    e += [tw.Entry("embeddings.class_embedding", P("cls_token")),
          tw.Entry("embeddings.position_embedding.weight", P("pos_embed")),
          tw.Entry("embeddings.patch_embedding.weight", P("patch_embed", "kernel"), tw.CONV),
          *ln("pre_layrnorm", ("pre_norm",)), *ln("post_layernorm", ("norm",))]
  else:
    e += [tw.Entry("embeddings.cls_token", P("cls_token"), _drop_leading(2)),
          tw.Entry("embeddings.position_embeddings", P("pos_embed"), _drop_leading(1)),
          tw.Entry("embeddings.patch_embeddings.projection.weight", P("patch_embed", "kernel"),
                   tw.CONV),
          tw.Entry("embeddings.patch_embeddings.projection.bias", P("patch_embed", "bias")),
          *ln("layernorm", ("norm",))]
  for i in range(model.depth):
    blk = f"layer{i}"
    if kind == "clip":
      k = f"encoder.layers.{i}"
      attn = {n: f"{k}.self_attn.{t}" for n, t in
              (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"), ("out", "out_proj"))}
      names = dict(norm1=f"{k}.layer_norm1", norm2=f"{k}.layer_norm2", fc1=f"{k}.mlp.fc1",
                   fc2=f"{k}.mlp.fc2")
    else:
      k = f"encoder.layer.{i}"
      attn = {n: f"{k}.attention.attention.{n}" for n in ("query", "key", "value")}
      attn["out"] = f"{k}.attention.output.dense"
      if kind == "vit":
        names = dict(norm1=f"{k}.layernorm_before", norm2=f"{k}.layernorm_after",
                     fc1=f"{k}.intermediate.dense", fc2=f"{k}.output.dense")
      else:
        names = dict(norm1=f"{k}.norm1", norm2=f"{k}.norm2", fc1=f"{k}.mlp.fc1",
                     fc2=f"{k}.mlp.fc2")
        e += [tw.Entry(f"{k}.layer_scale1.lambda1", P(blk, "layer_scale1")),
              tw.Entry(f"{k}.layer_scale2.lambda1", P(blk, "layer_scale2"))]
    for n in ("query", "key", "value"):
      e += dense(attn[n], (blk, "attn", n), model.qkv_bias)
    e += dense(attn["out"], (blk, "attn", "out"))
    e += ln(names["norm1"], (blk, "norm1")) + ln(names["norm2"], (blk, "norm2"))
    e += dense(names["fc1"], (blk, "fc1")) + dense(names["fc2"], (blk, "fc2"))
  if model.num_classes is not None:
    e += dense("classifier", ("head",))
  if model.projection_dim is not None:
    e += dense("visual_projection", ("projection",), bias=False)
  return e


def variables_from_hf(state_dict: Mapping[str, np.ndarray], model: ViT, kind: str) -> dict:
  """{'params': ...} of `model` from a transformers state_dict of `kind`.

  `kind`: 'vit' (ViTModel, ViTForImageClassification: DINO v1 too), 'dinov2'
  (Dinov2Model, Dinov2ForImageClassification) or 'clip' (CLIPVisionModel(WithProjection),
  CLIPModel). Keys may carry the model prefix ('vit.', 'dinov2.', 'vision_model.')
  or not, and may be a file's names or a live transformers-5 model's
  (`state_dict()`). Unused parts are skipped: ViT's pooler, mask tokens,
  CLIP's text tower and logit scale, a 'classifier' head (or CLIP's
  visual_projection) unless the model has `num_classes` (`projection_dim`).
  Any other leftover, missing key or shape mismatch is refused by name.
  """
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}; use one of {', '.join(KINDS)}.")
  want = {f: v for f, v in KIND_FLAGS[kind].items() if f != "qkv_bias"}
  if any(getattr(model, f) != v for f, v in want.items()):
    raise ValueError(f"A {kind!r} checkpoint needs a ViT with {want}; this one has "
                     f"{_flags(model)} (build it with vit.PRESETS or load_hf).")
  state = hf_loading.strip_prefix(dict(state_dict), _PREFIXES[kind])
  state = {_file_name(k, kind): np.asarray(v) for k, v in state.items()}
  if kind == "dinov2" and any(".mlp.weights_in." in k or ".mlp.gate_proj." in k for k in state):
    raise NotImplementedError("This DINOv2 checkpoint has a SwiGLU MLP (use_swiglu_ffn, "
                              "dinov2-giant); only the plain MLP (S, B, L) is supported.")
  shapes = tw.model_shapes(model, (1, model.image_size, model.image_size, 3))
  shapes = {"params": shapes["params"]}
  ignore = [k for k in state if _ignorable(k, kind, model)]
  what = (f"ViT ({kind}, hidden={model.hidden}, depth={model.depth}, patch={model.patch_size}, "
          f"image_size={model.image_size}, num_classes={model.num_classes})")
  return tw.variables_from_state_dict(state, hf_entries(model, kind), shapes, ignore=ignore,
                                      what=what)


def config_from_hf(hf: dict) -> tuple[str, dict]:
  """(kind, ViT fields) from a transformers config.json dict (vit / dinov2 / clip)."""
  model_type = hf.get("model_type")
  if model_type == "clip":
    vision = dict(hf.get("vision_config") or {})
    return "clip", _clip_fields(vision)
  if model_type == "clip_vision_model":
    return "clip", _clip_fields(hf)
  if model_type == "vit":
    d = hf.get("hidden_size", 768)
    return "vit", dict(
        patch_size=hf.get("patch_size", 16), image_size=hf.get("image_size", 224), hidden=d,
        depth=hf.get("num_hidden_layers", 12), heads=hf.get("num_attention_heads", 12),
        mlp_dim=hf.get("intermediate_size", 3072), eps=hf.get("layer_norm_eps", 1e-12),
        activation=hf.get("hidden_act", "gelu"), qkv_bias=hf.get("qkv_bias", True),
        **KIND_FLAGS["vit"])
  if model_type == "dinov2":
    if hf.get("use_swiglu_ffn", False):
      raise NotImplementedError("DINOv2 with use_swiglu_ffn=True (giant) is not supported.")
    d = hf.get("hidden_size", 768)
    return "dinov2", dict(
        patch_size=hf.get("patch_size", 14), image_size=hf.get("image_size", 224), hidden=d,
        depth=hf.get("num_hidden_layers", 12), heads=hf.get("num_attention_heads", 12),
        mlp_dim=int(d * hf.get("mlp_ratio", 4)), eps=hf.get("layer_norm_eps", 1e-6),
        activation=hf.get("hidden_act", "gelu"), qkv_bias=hf.get("qkv_bias", True),
        **KIND_FLAGS["dinov2"])
  raise ValueError(f"config.json has model_type={model_type!r}; vit.load_hf reads 'vit' "
                   f"(ViT, DINO), 'dinov2', 'clip' and 'clip_vision_model'.")


def _clip_fields(v: dict) -> dict:
  return dict(patch_size=v.get("patch_size", 32), image_size=v.get("image_size", 224),
              hidden=v.get("hidden_size", 768), depth=v.get("num_hidden_layers", 12),
              heads=v.get("num_attention_heads", 12), mlp_dim=v.get("intermediate_size", 3072),
              eps=v.get("layer_norm_eps", 1e-5), activation=v.get("hidden_act", "quick_gelu"),
              **KIND_FLAGS["clip"])


def load_hf(path_or_id: str, projection: bool = False, **overrides) -> tuple[ViT, dict]:
  """(model, variables) of a save_pretrained directory or a hub id (online).

  The model is built from config.json (model_type 'vit', 'dinov2', 'clip' or
  'clip_vision_model'); `overrides` set other fields (pool, num_classes, dtype).
  `projection=True` keeps CLIP's visual_projection (its width read from the file).
  """
  directory = hf_loading.resolve(path_or_id)
  kind, fields = config_from_hf(hf_loading.load_config(directory))
  state = hf_loading.load_state_dict(directory)
  if projection:
    if kind != "clip":
      raise ValueError(f"projection=True is CLIP's visual_projection; {path_or_id!r} is {kind!r}.")
    weight = state.get("visual_projection.weight")
    if weight is None:
      raise ValueError(f"{path_or_id!r} has no 'visual_projection.weight' (a CLIPVisionModel "
                       f"without projection); load it with projection=False.")
    fields["projection_dim"] = int(weight.shape[0])
  model = ViT(**{**fields, **overrides})
  return model, variables_from_hf(state, model, kind)


def normalize(images_BxHxWx3, kind: str) -> jax.Array:
  """0-255 RGB images -> the input `kind`'s checkpoints were trained on (MEAN, STD)."""
  x = jnp.asarray(images_BxHxWx3, jnp.float32)
  return (x - jnp.asarray(MEAN[kind])) / jnp.asarray(STD[kind])
