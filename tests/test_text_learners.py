"""Text through the meta-learning core: the `bert_text` backbone, text "images", SetFit.

A small random BERT (2 layers, width 32) on generated text: classes of
random filler words with a few class words hidden among them
(`text_episodes.generated_text_classes`), tokenised by the whitespace-hash
tokenizer, so nothing here needs a file, the network or the MiniLM package.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from fsl_jax import meta, models
from fsl_jax.data import episodes, text as text_lib, text_episodes as te
from fsl_jax.meta import setfit
from fsl_jax.models import bert, bert_hf, text_backbone as tb
from fsl_jax.train import builders, optim

SIZES = dict(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
             max_position_embeddings=32)


def tiny(**kw):
  return models.get("bert_text", preset="bert-tiny", **{**SIZES, **kw})


def generated(num_classes=10, seed=0, per_class=20, length=16):
  src = te.generated_text_classes(num_classes, per_class, seed=seed)
  tok = src.tokenize(te.words_tokenizer(1000), length, batched=True, pad_to_max_length=True)
  return tok, te.as_class_images(tok)


def test_backbone_is_berts_encoder_on_packed_ids():
  m = tiny()
  params = bert.init_params(m.config, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 1000, (4, 12))
  mask = np.ones_like(ids)
  mask[1, 7:] = mask[3, 3:] = 0
  ids[mask == 0] = 0
  x = tb.pack(ids, mask)
  assert x.shape == (4, 2, 12, 1) and x.dtype == jnp.int32
  got_ids, got_mask = tb.unpack(x)
  np.testing.assert_array_equal(got_ids, ids)
  np.testing.assert_array_equal(got_mask, mask > 0)
  for kw in ({}, {"pooling": "cls", "normalize": True}):
    model = tiny(**kw)
    out = jax.jit(lambda p, x, model=model: model.apply({"params": p}, x, train=False))(params, x)
    ref = bert.encode(model.config, params, ids, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-6, rtol=0)
  with pytest.raises(ValueError, match="takes no option"):  # the registry checks options
    models.get("bert_text", layers=2)


def test_text_images_give_text_episodes():
  tok, src = generated()
  assert src.images.shape == (10, 20, 2, 16, 1) and src.images.dtype == np.int32
  ids, mask = te.unpack_class_images(src)
  np.testing.assert_array_equal(ids, tok.ids)
  spec = episodes.EpisodeSpec(5, 2, 3)
  key = jax.random.PRNGKey(3)
  ep = episodes.EpisodeSampler(src, spec).sample(key)
  ref = text_lib.text_episode(key, jnp.asarray(tok.ids), jnp.asarray(tok.mask),
                              jnp.asarray(tok.counts), spec)
  s_ids, s_mask = tb.unpack(ep["support_x"])
  q_ids, _ = tb.unpack(ep["query_x"])
  np.testing.assert_array_equal(s_ids, ref["support_ids"])
  np.testing.assert_array_equal(s_mask, ref["support_mask"] > 0)
  np.testing.assert_array_equal(q_ids, ref["query_ids"])
  np.testing.assert_array_equal(ep["query_y"], ref["query_y"])
  # The registry's `text` dataset reads the same generated split from a config.
  cfg = ml_collections.ConfigDict({
      "name": "text", "source": "generated", "class_split": "seeded",
      "class_sizes": "train=6,test=4", "tokenizer": "words", "vocab_size": 1000,
      "max_length": 16, "generated_classes": 10, "generated_per_class": 20})
  from fsl_jax.data import registry  # pylint: disable=g-import-not-at-top
  train, test = registry.load_split(cfg, "train"), registry.load_split(cfg, "test")
  assert train.num_classes == 6 and test.num_classes == 4
  assert not set(train.class_names) & set(test.class_names)
  with pytest.raises(Exception, match="does not exist"):
    registry.load_split(cfg, "val")


def test_top_layers_train_alone():
  _, src = generated()
  spec = episodes.EpisodeSpec(5, 2, 4)
  ep = episodes.EpisodeSampler(src, spec).sample(jax.random.PRNGKey(0))
  learner = meta.get("protonet", model=tiny(trainable_layers=1))
  params = learner.init(jax.random.PRNGKey(0), ep)["params"]
  # The gradient stops below the top layer: the embeddings and layer_0 get exact zeros
  # (no backward pass through them; Adam leaves them unchanged).
  grads = jax.jit(jax.grad(lambda p: learner.outer_loss({"params": p}, ep, None, False)[0]))(
      params)
  zero = {k: all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(v))
          for k, v in grads.items()}
  assert zero == {"embeddings": True, "layer_0": True, "layer_1": False}, zero
  # optimizer.groups that freeze the same params (for adamw's decoupled decay): 'g0' = frozen.
  groups = tb.freeze_groups(2, 1)
  assert groups == "(^|/)(embeddings|layer_0)/=0"
  labels = optim.group_labels(optim.parse_groups(groups), {"backbone": params})
  assert {k: set(jax.tree.leaves(v)) for k, v in labels["backbone"].items()} == {
      "embeddings": {"g0"}, "layer_0": {"g0"}, "layer_1": {"rest"}}


def test_setfit_pairs_and_batches():
  labels = jnp.asarray([0, 0, 1, 1, 1, 2], jnp.int32)
  first, second, target = setfit.pair_indices(jax.random.PRNGKey(0), labels, 4)
  assert first.shape == second.shape == target.shape == (2 * 4 * 6,)
  np.testing.assert_array_equal(np.bincount(np.asarray(first)), [8] * 6)  # 2 pairs x 4 rounds
  same = np.asarray(labels[first] == labels[second])
  np.testing.assert_array_equal(same, np.asarray(target) == 1)
  np.testing.assert_array_equal(np.asarray(target[:4]), [1, 0, 1, 0])
  again = setfit.pair_indices(jax.random.PRNGKey(0), labels, 4)[1]
  np.testing.assert_array_equal(second, again)
  assert not np.array_equal(second, setfit.pair_indices(jax.random.PRNGKey(1), labels, 4)[1])
  idx, w = setfit.batches(jax.random.PRNGKey(0), 48, 16, 2)
  assert idx.shape == (6, 16)
  idx, w = setfit.batches(jax.random.PRNGKey(0), 50, 16, 2)  # 4 batches a pass, the last of 2
  assert idx.shape == (8, 16) and float(w.sum()) == 100
  for e in range(2):
    rows, keep = np.asarray(idx[4 * e:4 * e + 4]), np.asarray(w[4 * e:4 * e + 4]) > 0
    np.testing.assert_array_equal(np.sort(rows[keep]), np.arange(50))
  shapes = jax.eval_shape(tiny().init, jax.random.PRNGKey(0), jnp.zeros((1, 2, 4, 1), jnp.int32))
  assert setfit.frozen_params(tiny(lora_rank=2)) == ["embeddings", "layer_0", "layer_1"]
  mask = setfit.decay_mask(shapes["params"], setfit.frozen_params(tiny(trainable_layers=1)))
  assert not any(jax.tree.leaves(mask["embeddings"])) and not any(jax.tree.leaves(mask["layer_0"]))
  assert mask["layer_1"]["query"] == {"kernel": True, "bias": False}
  assert not any(jax.tree.leaves(mask["layer_1"]["output_LayerNorm"]))
  sched = setfit.warmup_linear(1.0, 20, 0.1)  # 2 warm-up steps, then linear to 0 at 20
  np.testing.assert_allclose([sched(s) for s in (0, 1, 2, 11, 20)], [0, 0.5, 1, 0.5, 0],
                             atol=1e-6)


def test_setfit_beats_the_frozen_encoder():
  _, src = generated()
  m = tiny()
  variables = {"params": bert.init_params(m.config, jax.random.PRNGKey(0))}
  learner = setfit.SetFit(model=m, lr=1e-3)
  frozen = meta.get("logreg", model=m)
  sampler = episodes.EpisodeSampler(src, episodes.EpisodeSpec(5, 5, 10))

  @jax.jit
  def accuracies(key):
    ep = sampler.sample(key)
    acc = lambda logits: jnp.mean(jnp.argmax(logits, -1) == ep["query_y"])
    return acc(frozen.predict(variables, ep)), acc(learner.predict(variables, ep, key))

  accs = np.asarray([accuracies(jax.random.PRNGKey(i)) for i in range(4)])
  assert accs[:, 1].mean() > accs[:, 0].mean() + 0.1, accs


def _write_checkpoint(directory, model, params):
  """A save_pretrained-style folder (config.json + model.safetensors) of `params`."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  c = model.config
  directory.mkdir()
  (directory / "config.json").write_text(json.dumps({
      "model_type": "bert", "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
      "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
      "intermediate_size": c.intermediate_size,
      "max_position_embeddings": c.max_position_embeddings}))
  state = {}
  for name, path, _, transpose in bert_hf._entries(c):  # pylint: disable=protected-access
    leaf = params
    for p in path:
      leaf = leaf[p]
    state[name] = np.ascontiguousarray(np.asarray(leaf).T if transpose else np.asarray(leaf))
  save_file(state, str(directory / "model.safetensors"))


def test_pretrained_init_and_meta_train_binary(tmp_path):
  m = tiny()
  saved = bert.init_params(m.config, jax.random.PRNGKey(7))
  ckpt = tmp_path / "ckpt"
  _write_checkpoint(ckpt, m, saved)
  same = lambda a, b: jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b))
  _, src = generated()
  ep = builders.dummy_episode(src.image_shape, episodes.EpisodeSpec(5, 1, 1))
  for name, kw in (("protonet", {}), ("maml", {"ways": 5})):
    learner = meta.get(name, model=m, **kw)
    variables = jax.jit(learner.init)(jax.random.PRNGKey(0), ep)
    loaded, facts = tb.load_init_weights(learner, variables, str(ckpt))
    assert facts["weights"] == str(ckpt) and len(facts["weights_sha256"]) == 16
    if name == "maml":
      assert same(loaded["params"]["net"]["head"], variables["params"]["net"]["head"])
      assert same({k: v for k, v in loaded["params"]["net"].items() if k != "head"}, saved)
    else:
      assert same(learner.backbone_variables(loaded)["params"], saved)
  with pytest.raises(ValueError, match="does not match config"):
    tb.load_init_weights(meta.get("protonet", model=tiny(num_layers=1)),
                         variables, str(ckpt))
  # The binary's run (experiments.meta_train): ProtoNet meta-training on generated text from
  # that checkpoint, 30 steps (the loss falls), validation, evaluation.
  from experiments.configs import protonet_text  # pylint: disable=g-import-not-at-top
  from fsl_jax.train import meta_trainer, restore  # pylint: disable=g-import-not-at-top
  config = protonet_text.get_config("runlocal")
  config.init_weights, config.checkpoint_every = str(ckpt), 30
  wd = tmp_path / "run"
  res = meta_trainer.train_and_evaluate(config, str(wd))
  assert res["ways"] == 5 and res["shots"] == 1 and res["episodes"] == 10
  assert 0 <= res["accuracy"] <= 1
  assert restore.load_meta(str(wd))["init_weights"]["weights"] == str(ckpt)
  logged = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert sum("val_accuracy" in r for r in logged) == 2
  losses = [r["loss"] for r in logged if "loss" in r]
  assert len(losses) == 3 and losses[0] > 1.25 * losses[-1], losses
  # The trained encoder as experiments.text_fewshot's `encoder` (a run directory): the same
  # embeddings as the learner's backbone on the same tokens, and a cache identity that only
  # the checkpoints change.
  from fsl_jax.proj.text_fewshot import encoders  # pylint: disable=g-import-not-at-top
  ident = encoders.describe_encoder(str(wd))
  enc = encoders.load_encoder(str(wd))
  texts = ["alpha beta gamma delta", "epsilon", "alpha alpha zeta eta theta iota kappa"]
  emb = encoders.embed_texts(enc, texts, max_length=16)
  ids = te.words_tokenizer(1000)(texts)
  ids_BxL, mask_BxL = np.zeros((3, 16), np.int32), np.zeros((3, 16), np.int32)
  for b, row in enumerate(ids):
    ids_BxL[b, :len(row)], mask_BxL[b, :len(row)] = row, 1
  _, learner, variables, _ = restore.load_for_eval(str(wd))
  ref = learner.model.apply(learner.backbone_variables(variables), tb.pack(ids_BxL, mask_BxL),
                            train=False)
  np.testing.assert_allclose(emb, np.asarray(ref), atol=1e-5)
  with open(wd / "results.jsonl", "a") as f:
    f.write("{}\n")
  assert encoders.describe_encoder(str(wd)) == ident
  image_run = tmp_path / "image_run"
  image_run.joinpath("checkpoints").mkdir(parents=True)
  image_run.joinpath("config.json").write_text(json.dumps({"model": "conv4"}))
  with pytest.raises(ValueError, match="bert_text"):
    encoders.load_encoder(str(image_run))


def test_lora_trains_only_its_factors(tmp_path):
  """LoRA on the encoder: the base at init, gradients only into the factors, and ProtoNet
  meta-training (protonet_text.py:runlocal,lora) from a checkpoint leaves every encoder
  param exactly as loaded."""
  m, plain = tiny(lora_rank=4), tiny()
  _, src = generated()
  x = src.images[:3, 0]
  v = m.init(jax.random.PRNGKey(0), x, train=False)
  assert sorted(v["params"]) == ["embeddings", "layer_0", "layer_1", "lora"]
  assert jax.tree.map(jnp.shape, v["params"]["lora"]["layer_0"]) == {
      "query": {"a": (32, 4), "b": (4, 32)}, "value": {"a": (32, 4), "b": (4, 32)}}
  base = {k: p for k, p in v["params"].items() if k != "lora"}
  np.testing.assert_array_equal(m.apply(v, x, train=False), plain.apply({"params": base}, x,
                                                                        train=False))
  weights = jnp.arange(32.0)
  grads = jax.grad(lambda p: jnp.sum(m.apply({"params": p}, x, train=False) ** 2 * weights))(
      v["params"])
  norm = lambda t: float(sum(jnp.sum(jnp.abs(l)) for l in jax.tree.leaves(t)))
  assert norm(grads["lora"]) > 0
  assert all(norm(grads[k]) == 0 for k in base)
  moved = {**v["params"], "lora": jax.tree.map(lambda a: a + 0.1, v["params"]["lora"])}
  assert not np.allclose(m.apply({"params": moved}, x, train=False),
                         m.apply(v, x, train=False))
  with pytest.raises(ValueError, match="lora_targets"):
    tiny(lora_rank=4, lora_targets="qkv")
  with pytest.raises(ValueError, match="trainable_layers=-1"):
    tiny(lora_rank=4, trainable_layers=1)

  saved = bert.init_params(plain.config, jax.random.PRNGKey(7))
  ckpt = tmp_path / "ckpt"
  _write_checkpoint(ckpt, plain, saved)
  from experiments.configs import protonet_text  # pylint: disable=g-import-not-at-top
  from fsl_jax.train import meta_trainer, restore  # pylint: disable=g-import-not-at-top
  config = protonet_text.get_config("runlocal,lora")
  assert config.model_kwargs.lora_rank == 4 and config.optimizer.groups == tb.LORA_GROUPS
  config.init_weights, config.checkpoint_every, config.val_every = str(ckpt), 30, 0
  wd = tmp_path / "run"
  meta_trainer.train_and_evaluate(config, str(wd))
  _, learner, variables, step = restore.load_for_eval(str(wd))
  params = learner.backbone_variables(variables)["params"]
  assert step == 30
  same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), saved,
                      {k: p for k, p in params.items() if k != "lora"})
  assert jax.tree.all(same)
  assert norm(params["lora"]["layer_1"]["value"]["b"]) > 0


def test_lora_factors_fit_an_episode():
  """The factors alone can fit: Adam on one episode's ProtoNet loss, encoder frozen."""
  m = tiny(lora_rank=4)
  _, src = generated()
  ep = episodes.EpisodeSampler(src, episodes.EpisodeSpec(5, 2, 4)).sample(jax.random.PRNGKey(3))
  learner = meta.get("protonet", model=m)
  v = jax.jit(learner.init)(jax.random.PRNGKey(0), ep)
  loss_fn = lambda p: learner.outer_loss({**v, "params": p}, ep, jax.random.PRNGKey(1))[0]
  tx = optax.adam(1e-2)

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  p, s = v["params"], tx.init(v["params"])
  losses = []
  for _ in range(25):
    p, s, loss = step(p, s)
    losses.append(float(loss))
  # Measured: 1.52 -> 0.30 over 25 steps; the base params never move.
  assert losses[-1] < 0.5 * losses[0], losses
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                                   {k: x for k, x in p.items() if k != "lora"},
                                   {k: x for k, x in v["params"].items() if k != "lora"}))
