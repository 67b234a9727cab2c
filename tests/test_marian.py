"""Marian port vs transformers' PyTorch MarianMTModel (random weights, opus-mt shape)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # pylint: disable=wrong-import-position

from fsl_jax.models import marian, seq2seq  # pylint: disable=wrong-import-position
from fsl_jax.models import seq2seq_generate as sg  # pylint: disable=wrong-import-position

V, PAD, EOS = 58101, 58100, 0


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  """opus-mt-en-* shape (d 512, 8 heads, FFN 2048, vocab 58101), 2+2 layers."""
  cfg = transformers.MarianConfig(
      vocab_size=V, decoder_vocab_size=V, d_model=512, encoder_layers=2, decoder_layers=2,
      encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
      decoder_ffn_dim=2048, pad_token_id=PAD, decoder_start_token_id=PAD, eos_token_id=EOS,
      forced_eos_token_id=EOS, scale_embedding=True, max_position_embeddings=512,
      activation_function="swish")
  torch.manual_seed(0)
  model = transformers.MarianMTModel(cfg).eval()
  with torch.no_grad():  # make every mapped tensor matter (HF inits LN to 1/0, bias to 0)
    model.final_logits_bias.normal_()
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.normal_(mean=1.0 if name.endswith("weight") else 0.0, std=0.2)
    model.model.shared.weight.mul_(3.0)  # peakier logits: fewer near-ties in search
  path = tmp_path_factory.mktemp("marian")
  model.save_pretrained(path)
  cfg_j, params = marian.load(str(path))
  return model, cfg_j, params, path


def _batch(seed=0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(1, V - 1, (3, 11))
  mask = np.ones_like(ids)
  ids[:, -1] = EOS
  ids[1, 7:] = PAD
  ids[1, 6] = EOS
  mask[1, 7:] = 0
  return ids, mask


def test_logits_match_pytorch(ckpt):
  model, cfg, params, _ = ckpt
  ids, mask = _batch()
  dec = np.random.RandomState(1).randint(1, V - 1, (3, 8))
  dec[:, 0] = PAD
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                decoder_input_ids=torch.tensor(dec)).logits.numpy()
  ours = np.asarray(jax.jit(seq2seq.forward, static_argnums=0)(cfg, params, ids, mask, dec))
  assert ours.shape == ref.shape == (3, 8, V)
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_cached_decode_matches_teacher_forcing(ckpt):
  _, cfg, params, _ = ckpt
  ids, mask = _batch(2)
  dec = np.random.RandomState(3).randint(1, V - 1, (3, 5))
  full = seq2seq.forward(cfg, params, ids, mask, dec)
  enc_kv = seq2seq.cross_kv(cfg, params, seq2seq.encode(cfg, params, ids, mask))
  cache = seq2seq.init_cache(cfg, 3, 16)
  for t in range(5):
    step, cache = seq2seq.decode(cfg, params, dec[:, t:t + 1], enc_kv, mask, cache, offset=t)
    np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-4, rtol=0)


def _hf_generate(model, ids, mask, **kw):
  with torch.no_grad():
    return model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          do_sample=False, **kw).numpy()


def test_greedy_matches_generate(ckpt):
  model, cfg, params, _ = ckpt
  ids, mask = _batch(4)
  ref = _hf_generate(model, ids, mask, num_beams=1, max_new_tokens=12)
  ours = sg.generate(cfg, params, ids, mask, sg.GenerationConfig(max_new_tokens=12))
  np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("beams,lp,new,early", [(4, 1.0, 10, False), (3, 0.6, 7, False),
                                                 (2, 1.0, 6, True)])
def test_beam_matches_generate(ckpt, beams, lp, new, early):
  model, cfg, params, _ = ckpt
  ids, mask = _batch(5)
  kw = {"bad_words_ids": [[PAD]]} if early else {}  # opus-mt configs ban the pad token
  ref = _hf_generate(model, ids, mask, num_beams=beams, length_penalty=lp, max_new_tokens=new,
                     early_stopping=early, **kw)
  ours = sg.generate(cfg, params, ids, mask, sg.GenerationConfig(
      max_new_tokens=new, num_beams=beams, length_penalty=lp, early_stopping=early,
      bad_token_ids=(PAD,) if early else ()))
  np.testing.assert_array_equal(ours, ref)


def test_wrong_family_is_refused(ckpt):
  from fsl_jax.models import mbart  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="model_type='marian'"):
    mbart.load(str(ckpt[3]))


@pytest.mark.parametrize("beams,lp", [(4, 1.0), (2, 1.0)])
def test_beam_with_early_eos_matches_generate(ckpt, beams, lp):
  """A raised EOS bias makes hypotheses finish at different steps (finished pool, early stop)."""
  model, cfg, params, _ = ckpt
  ids, mask = _batch(6)
  old = model.final_logits_bias[0, EOS].item()
  try:
    with torch.no_grad():
      model.final_logits_bias[0, EOS] = old + EOS_BOOST
    ref = _hf_generate(model, ids, mask, num_beams=beams, length_penalty=lp, max_new_tokens=12)
  finally:
    with torch.no_grad():
      model.final_logits_bias[0, EOS] = old
  boosted = dict(params, final_logits_bias=params["final_logits_bias"].at[EOS].add(EOS_BOOST))
  ours = sg.generate(cfg, boosted, ids, mask,
                     sg.GenerationConfig(max_new_tokens=12, num_beams=beams, length_penalty=lp))
  ends = [list(r).index(EOS) if EOS in r else len(r) for r in ours]
  assert len(set(ends)) > 1, ends  # some hypotheses ended early, others ran on
  np.testing.assert_array_equal(ours, ref)


EOS_BOOST = 12.2  # rows then finish at different lengths (measured on this fixture)
