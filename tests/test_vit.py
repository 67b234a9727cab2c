"""ViT / DINOv2 / CLIP image towers vs transformers' PyTorch models (random weights, tiny sizes).

Each reference is a transformers model (ViTModel, Dinov2Model, CLIPVisionModel,
and the classification / CLIPModel wrappers) with its weights perturbed away
from the init (so LayerScale, LayerNorm and biases are not 1s and 0s), written
with save_pretrained (safetensors) and read back with `vit.load_hf`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fsl_jax import models  # pylint: disable=wrong-import-position
from fsl_jax.models import vit  # pylint: disable=wrong-import-position

TOL = 1e-4
TINY = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8)


def _perturb(model):
  torch.manual_seed(1)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model.eval()


def _tiny(kind):
  torch.manual_seed(0)
  if kind == "vit":
    return transformers.ViTModel(transformers.ViTConfig(intermediate_size=96, **TINY))
  if kind == "dinov2":
    return transformers.Dinov2Model(transformers.Dinov2Config(mlp_ratio=2, **TINY))
  return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(intermediate_size=96, **TINY))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  out = {}
  for kind in vit.KINDS:
    ref = _perturb(_tiny(kind))
    path = tmp_path_factory.mktemp(kind) / "ckpt"
    ref.save_pretrained(path)
    model, variables = vit.load_hf(str(path))
    out[kind] = dict(ref=ref, path=str(path), model=model, variables=variables)
  return out


def _images(h, w, seed=0, b=2):
  return np.random.default_rng(seed).normal(size=(b, 3, h, w)).astype(np.float32)


def _reference(kind, ref, x_BxCxHxW):
  kw = {} if kind == "dinov2" else {"interpolate_pos_encoding": True}
  with torch.no_grad():
    out = ref(torch.tensor(x_BxCxHxW), **kw)
  feats = out.pooler_output if kind == "clip" else out.last_hidden_state[:, 0]
  return feats.numpy(), out.last_hidden_state.numpy()


def _ours(c, x_BxCxHxW, **kw):
  x = jnp.asarray(x_BxCxHxW.transpose(0, 2, 3, 1))
  return np.asarray(c["model"].apply(c["variables"], x, train=False, **kw))


@pytest.mark.parametrize("kind", vit.KINDS)
@pytest.mark.parametrize("hw", [(32, 32), (40, 56), (24, 16)])
def test_features_and_tokens_match_transformers(ckpts, kind, hw):
  """(32, 32): the pretraining size; (40, 56) and (24, 16): positions resized up and down."""
  c = ckpts[kind]
  x = _images(*hw)
  feats, tokens = _reference(kind, c["ref"], x)
  ours_tokens = _ours(c, x, tokens=True)
  assert ours_tokens.shape == tokens.shape == (2, 1 + (hw[0] // 8) * (hw[1] // 8), 48)
  err_f = np.abs(_ours(c, x) - feats).max()
  err_t = np.abs(ours_tokens - tokens).max()
  print(f"{kind} {hw}: features {err_f:.2e}, tokens {err_t:.2e}")
  assert err_f < TOL and err_t < TOL, (err_f, err_t)


def test_load_hf_builds_each_family_from_config_json(ckpts):
  m = {k: ckpts[k]["model"] for k in vit.KINDS}
  assert (m["vit"].eps, m["vit"].activation, m["vit"].layer_scale) == (1e-12, "gelu", False)
  assert (m["dinov2"].eps, m["dinov2"].mlp_dim, m["dinov2"].layer_scale) == (1e-6, 96, True)
  assert (m["clip"].eps, m["clip"].activation, m["clip"].pre_norm, m["clip"].final_norm,
          m["clip"].patch_bias) == (1e-5, "quick_gelu", True, "pooled", False)
  for kind in vit.KINDS:
    assert (m[kind].hidden, m[kind].depth, m[kind].heads, m[kind].grid) == (48, 2, 4, 4)


@pytest.mark.parametrize("kind", vit.KINDS)
def test_live_state_dict_names_and_prefixes_load_the_same(ckpts, kind):
  """transformers 5 renames ViT/DINOv2 weights in memory (layers.N.attention.q_proj ...)."""
  c = ckpts[kind]
  live = {k: v.numpy() for k, v in c["ref"].state_dict().items()}
  prefix = {"vit": "vit.", "dinov2": "dinov2.", "clip": "vision_model."}[kind]
  prefixed = {prefix + k: v for k, v in live.items()}
  for state in (live, prefixed):
    got = vit.variables_from_hf(state, c["model"], kind)
    jax.tree.map(np.testing.assert_array_equal, got, c["variables"])


def test_clip_model_checkpoint_projection_matches_get_image_features(tmp_path):
  torch.manual_seed(0)
  text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
              vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1)
  ref = _perturb(transformers.CLIPModel(transformers.CLIPConfig(
      vision_config=dict(intermediate_size=96, **TINY), text_config=text, projection_dim=24)))
  ref.save_pretrained(tmp_path)
  x = _images(32, 32, seed=3)
  with torch.no_grad():
    out = ref.get_image_features(pixel_values=torch.tensor(x))
  want = (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()
  model, variables = vit.load_hf(str(tmp_path), projection=True)
  assert model.projection_dim == 24 and want.shape == (2, 24)
  got = np.asarray(model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False))
  assert np.abs(got - want).max() < TOL
  plain, _ = vit.load_hf(str(tmp_path))  # the text tower and projection are skipped
  assert plain.projection_dim is None


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_classifier_checkpoints_give_the_same_logits(tmp_path, kind):
  """ViTForImageClassification reads the CLS token; Dinov2ForImageClassification [CLS, mean]."""
  torch.manual_seed(0)
  if kind == "vit":
    cfg = transformers.ViTConfig(intermediate_size=96, num_labels=5, **TINY)
    ref, pool = transformers.ViTForImageClassification(cfg), "cls"
  else:
    cfg = transformers.Dinov2Config(mlp_ratio=2, num_labels=5, **TINY)
    ref, pool = transformers.Dinov2ForImageClassification(cfg), "cls_mean"
  _perturb(ref).save_pretrained(tmp_path)
  x = _images(32, 32, seed=4)
  with torch.no_grad():
    want = ref(torch.tensor(x)).logits.numpy()
  model, variables = vit.load_hf(str(tmp_path), num_classes=5, pool=pool)
  got = np.asarray(model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False))
  assert np.abs(got - want).max() < TOL
  features_only, _ = vit.load_hf(str(tmp_path))  # the head is skipped without num_classes
  assert features_only.num_classes is None


def test_mismatched_checkpoints_are_refused_by_name(ckpts):
  c = ckpts["vit"]
  state = {k: v.numpy() for k, v in c["ref"].state_dict().items()}
  narrow = c["model"].clone(mlp_dim=64)
  with pytest.raises(ValueError, match=r"encoder\.layer\.0\.intermediate\.dense\.weight.*"
                                       r"\(96, 48\).*\(64, 48\)"):
    vit.variables_from_hf(state, narrow, "vit")
  short = {k: v for k, v in state.items() if "layernorm_after.bias" not in k}
  with pytest.raises(ValueError, match=r"missing.*encoder\.layer\.0\.layernorm_after\.bias"):
    vit.variables_from_hf(short, c["model"], "vit")
  with pytest.raises(ValueError, match=r"unexpected.*encoder\.layer\.1\."):
    vit.variables_from_hf(state, c["model"].clone(depth=1), "vit")
  with pytest.raises(ValueError, match="'dinov2' checkpoint needs"):
    vit.variables_from_hf(state, c["model"], "dinov2")
  with pytest.raises(ValueError, match="model_type='bert'"):
    vit.config_from_hf({"model_type": "bert"})


def test_bicubic_matrix_is_torch_interpolate():
  f = torch.nn.functional
  grid = np.random.default_rng(0).normal(size=(37, 37)).astype(np.float32)
  for size in ((16, 16), (37, 37), (5, 40), (2, 3)):
    want = f.interpolate(torch.tensor(grid)[None, None], size=size, mode="bicubic",
                         align_corners=False)[0, 0].numpy()
    got = vit.bicubic_matrix(37, size[0]) @ grid @ vit.bicubic_matrix(37, size[1]).T
    np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_array_equal(vit.bicubic_matrix(7, 7), np.eye(7))


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _torch_count(model_cls, config, **kw) -> int:
  with torch.device("meta"):
    return sum(p.numel() for p in model_cls(config, **kw).parameters())


def test_registered_sizes_have_transformers_parameter_counts():
  t = transformers
  refs = {
      "vit_s16": (t.ViTModel, t.ViTConfig(hidden_size=384, num_attention_heads=6,
                                          intermediate_size=1536), 21_665_664),
      "vit_b16": (t.ViTModel, t.ViTConfig(), 85_798_656),
      # Dinov2Model also holds a mask token (one [1, D] row, unused at inference, not ported).
      "dinov2_s14": (t.Dinov2Model, t.Dinov2Config(hidden_size=384, num_attention_heads=6,
                                                   image_size=518), 22_056_192),
      "dinov2_b14": (t.Dinov2Model, t.Dinov2Config(image_size=518), 86_579_712),
      "clip_vit_b16": (t.CLIPVisionModel, t.CLIPVisionConfig(patch_size=16), 85_799_424),
      "clip_vit_b32": (t.CLIPVisionModel, t.CLIPVisionConfig(), 87_456_000),
  }
  for name, (cls, cfg, ours_expected) in refs.items():
    net = models.get(name)
    shapes = jax.eval_shape(lambda n=net: n.init(jax.random.PRNGKey(0),
                                                 jnp.zeros((1, 224, 224, 3)), train=False))
    ours = _count(shapes)
    kw = {"add_pooling_layer": False} if cls is t.ViTModel else {}
    mask_token = cfg.hidden_size if cls is t.Dinov2Model else 0
    assert ours == _torch_count(cls, cfg, **kw) - mask_token == ours_expected, name


def test_pooling_options_and_head():
  net = vit.ViT(patch_size=8, image_size=32, hidden=32, depth=1, heads=2, mlp_dim=64)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 32, 32, 3)), jnp.float32)
  variables = net.init(jax.random.PRNGKey(0), x, train=False)
  tokens = net.apply(variables, x, train=False, tokens=True)
  cls = net.apply(variables, x, train=False)
  mean = net.clone(pool="mean").apply(variables, x, train=False)
  both = net.clone(pool="cls_mean").apply(variables, x, train=False)
  np.testing.assert_allclose(cls, tokens[:, 0], atol=1e-6)
  np.testing.assert_allclose(mean, tokens[:, 1:].mean(1), atol=1e-6)
  np.testing.assert_allclose(both, np.concatenate([cls, mean], -1), atol=1e-6)
  head = net.clone(num_classes=5, dropout=0.1)
  hv = head.init(jax.random.PRNGKey(0), x, train=False)
  logits, state = head.apply(hv, x, train=False, mutable=["intermediates"])
  assert logits.shape == (3, 5) and state["intermediates"]["features"][0].shape == (3, 32)
  with pytest.raises(ValueError, match="rngs=\\{'dropout'"):
    head.apply(hv, x, train=True)
  with pytest.raises(ValueError, match="pool='max'"):
    net.clone(pool="max").apply(variables, x, train=False)
