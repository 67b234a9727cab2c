"""mBART port vs transformers' PyTorch MBartForConditionalGeneration.

Real mbart-large widths (d 1024, 16 heads, FFN 4096) with 1+1 layers and a
16k vocabulary instead of 250k, to keep the test's memory and time small.
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # pylint: disable=wrong-import-position

from fsl_jax.models import mbart, seq2seq  # pylint: disable=wrong-import-position
from fsl_jax.models import seq2seq_generate as sg  # pylint: disable=wrong-import-position

V, BOS, PAD, EOS = 16000, 0, 1, 2
SW_LANG = V - 3  # stands in for a language-id token such as sw_KE


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  cfg = transformers.MBartConfig(
      vocab_size=V, d_model=1024, encoder_layers=1, decoder_layers=1,
      encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
      decoder_ffn_dim=4096, max_position_embeddings=1024, scale_embedding=True,
      pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=EOS,
      forced_eos_token_id=EOS)
  torch.manual_seed(0)
  model = transformers.MBartForConditionalGeneration(cfg).eval()
  with torch.no_grad():
    model.final_logits_bias.normal_()
    for name, p in model.named_parameters():
      if "layer_norm" in name or "layernorm" in name:
        p.normal_(mean=1.0 if name.endswith("weight") else 0.0, std=0.2)
  path = tmp_path_factory.mktemp("mbart")
  model.save_pretrained(path, max_shard_size="100MB")  # sharded safetensors + index
  assert os.path.exists(path / "model.safetensors.index.json")
  cfg_j, params = mbart.load(str(path))
  return model, cfg_j, params, path


def _batch(seed=0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, V - 10, (2, 9))
  mask = np.ones_like(ids)
  ids[:, -2:] = [EOS, V - 5]  # cc25 layout: tokens </s> src_lang
  ids[1, 5:] = PAD
  ids[1, 3:5] = [EOS, V - 5]
  mask[1, 5:] = 0
  return ids, mask


def test_logits_match_pytorch(ckpt):
  model, cfg, params, _ = ckpt
  ids, mask = _batch()
  labels = np.random.RandomState(1).randint(3, V - 10, (2, 6))
  labels[:, -2:] = [EOS, SW_LANG]
  dec = np.asarray(mbart.shift_tokens_right(labels, PAD))
  assert (dec[:, 0] == SW_LANG).all()
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                labels=torch.tensor(labels)).logits.numpy()  # HF shifts labels itself
  ours = np.asarray(jax.jit(seq2seq.forward, static_argnums=0)(cfg, params, ids, mask, dec))
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_pytorch_bin_loads_the_same(ckpt, tmp_path):
  model, _, params, path = ckpt
  torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
  (tmp_path / "config.json").write_text((path / "config.json").read_text())
  _, params_bin = mbart.load(str(tmp_path))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_bin)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("beams,lp", [(1, 1.0), (4, 1.0), (2, 2.0)])
def test_generate_with_forced_language_matches(ckpt, beams, lp):
  model, cfg, params, _ = ckpt
  ids, mask = _batch(3)
  with torch.no_grad():
    ref = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         num_beams=beams, length_penalty=lp, max_new_tokens=9,
                         forced_bos_token_id=SW_LANG, do_sample=False).numpy()
  ours = sg.generate(cfg, params, ids, mask, sg.GenerationConfig(
      max_new_tokens=9, num_beams=beams, length_penalty=lp, forced_bos_token_id=SW_LANG))
  assert (ours[:, 1] == SW_LANG).all()
  np.testing.assert_array_equal(ours, ref)
