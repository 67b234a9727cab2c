"""The pretrained weight registry (fsl_jax.models.pretrained.WEIGHTS) across the backbones:
every entry builds, and a Hugging Face folder loads through it (DINO ViT-S/16 sizes, random
weights) to transformers' features, the input step (resize, ImageNet mean/std) included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax import models
from fsl_jax.models import pretrained


def test_every_weight_file_names_a_registered_backbone():
  names = pretrained.WEIGHTS.names()
  assert {"efficientnet_lite0_imagenet", "mobilenet_v2_imagenet", "mobilenet_v3_small_imagenet",
          "mobilenet_v3_large_imagenet", "resnet18_imagenet", "resnet50_imagenet",
          "dino_vit_s16", "dino_vit_b16", "dinov2_vit_s14", "dinov2_vit_b14",
          "clip_vit_b16_openai"} <= set(names)
  for name in names:
    w = pretrained.WEIGHTS.get(name)
    assert w.model in models.names() and name in models.names()
    assert pretrained.weights_for_model(w.model) == name
    assert len(w.mean) == len(w.std) == 3 and w.source
  # ImageNet's own weights (labelled or DINO's self-supervised) saw Tiny ImageNet's classes.
  assert pretrained.saw_classes(pretrained.WEIGHTS.get("dino_vit_s16").pretrained_on,
                                "tiny_imagenet") is True
  assert pretrained.saw_classes("LVD-142M", "tiny_imagenet") is None


def test_dino_vit_s16_folder_loads_to_transformers_features(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  cfg = transformers.ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                               intermediate_size=1536, image_size=224, patch_size=16,
                               add_pooling_layer=False)
  ref = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
  ref.save_pretrained(tmp_path / "dino")
  model, variables, facts = pretrained.load("dino_vit_s16", str(tmp_path / "dino"))
  assert facts["weights_sha256"] and facts["weights"].endswith("dino")
  x = np.random.default_rng(0).random((1, 64, 64, 3)).astype(np.float32)  # [0, 1], 64x64
  got = np.asarray(model.apply(variables, jnp.asarray(x), train=False))
  # The reference gets what Pretrained feeds the backbone: resized to 224, mean/std.
  pre = np.asarray(model.apply(variables, jnp.asarray(x), method=model.preprocess))
  with torch.no_grad():
    want = ref(pixel_values=torch.from_numpy(pre).permute(0, 3, 1, 2)).last_hidden_state[:, 0]
  assert got.shape == (1, 384)
  np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)
  with pytest.raises(ValueError, match="does not fit|Shape mismatch|missing"):
    pretrained.load("dino_vit_b16", str(tmp_path / "dino"))
