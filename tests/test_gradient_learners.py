"""MAML family: exact meta-gradients, the variants' defining properties, batching."""

import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fsl_jax import meta, models
from fsl_jax.data.episodes import EpisodeSpec
from fsl_jax.meta import losses, maml
from fsl_jax.train import builders, meta_step, meta_trainer, restore

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _episode(ways=3, shots=1, queries=2, size=28, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return {"support_x": jnp.asarray(rng.normal(size=(ways * shots, size, size, 1)).astype(dtype)),
          "support_y": jnp.repeat(jnp.arange(ways), shots),
          "query_x": jnp.asarray(rng.normal(size=(ways * queries, size, size, 1)).astype(dtype)),
          "query_y": jnp.repeat(jnp.arange(ways), queries), "classes": jnp.arange(ways)}


def _learner(name="maml", hidden=4, impl="im2col", num_blocks=2, **kw):
  # im2col: the MAML family's convolutions on CPU (impl='auto'), so the math
  # below is checked on the path that trains. Two conv blocks, not four: the
  # same layers and inner loop at half the compile time (second-order
  # programs dominate this file's time).
  kw = {"ways": 3, "inner_steps": 2, "inner_lr": 0.3, **kw}
  return meta.get(name, model=models.get("conv4", hidden=hidden, impl=impl,
                                         num_blocks=num_blocks), **kw)


def _outer_grad(learner, variables, ep, **kw):
  def f(p):
    return learner.outer_loss({**variables, "params": p}, ep, None, True, **kw)[0]
  return jax.value_and_grad(f)(variables["params"])


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_second_order_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    ep = _episode(size=16, dtype=np.float64)
    learner = _learner()
    variables = learner.init(jax.random.PRNGKey(0), ep)
    variables = jax.tree.map(lambda x: x.astype(jnp.float64), variables)
    loss_fn = jax.jit(lambda p: learner.outer_loss({**variables, "params": p}, ep, None, True)[0])
    _, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["params"])
    rng = np.random.default_rng(1)
    for _ in range(3):
      v = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), variables["params"])
      eps = 1e-5
      plus = loss_fn(jax.tree.map(lambda p, d: p + eps * d, variables["params"], v))
      minus = loss_fn(jax.tree.map(lambda p, d: p - eps * d, variables["params"], v))
      fd = (plus - minus) / (2 * eps)
      analytic = float(_flat(grads) @ _flat(v))
      np.testing.assert_allclose(analytic, float(fd), rtol=1e-6, atol=1e-8)


def test_gradient_matches_torch_func_reference():
  pytest.importorskip("torch")
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import torch
  import torch_reference
  with jax.enable_x64(True):
    ep = _episode(ways=3, queries=2, dtype=np.float64)
    for name, first_order in (("maml", False), ("fomaml", True)):
      # Four blocks: 28 px pool to 1x1, where torch's NCHW flatten before
      # the head equals ours (NHWC).
      learner = _learner(name, hidden=8, num_blocks=4)
      variables = learner.init(jax.random.PRNGKey(3), ep)
      variables = jax.tree.map(lambda x: x.astype(jnp.float64), variables)
      _, grads = _outer_grad(learner, variables, ep)
      task = {k: np.asarray(v) for k, v in ep.items() if k != "classes"}
      ref = torch_reference.maml_outer_grad(
          torch_reference.params_from_flax(variables["params"]["net"]), task, inner_steps=2,
          inner_lr=0.3, first_order=first_order, dtype=torch.float64)
      ref = torch_reference.grads_to_flax(ref)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10),
                   jax.tree.map(np.asarray, grads["net"]), ref)


def test_jitted_second_order_gradient_is_the_same_for_every_conv_impl():
  # Regression: the max-pool VJP once found each window's maximum by
  # comparing x with the pooled y again; under jit XLA computed the im2col
  # convolution's x twice with different rounding, the test failed for some
  # windows and one-step MAML's gradient was wrong (eager was right).
  ep = _episode(size=16)
  grads = {}
  for impl in ("im2col", "cpu", "xla"):
    learner = _learner(impl=impl, inner_steps=1)
    variables = learner.init(jax.random.PRNGKey(0), ep)
    grads[impl] = _flat(jax.jit(lambda v: _outer_grad(learner, v, ep)[1])(variables))
  for impl in ("cpu", "xla"):
    np.testing.assert_allclose(grads["im2col"], grads[impl], rtol=1e-4, atol=1e-5)


def test_first_order_drops_exactly_the_second_order_term():
  # One inner step: MAML's gradient is (I - a H) g' and FOMAML's is g', where
  # g' is the query gradient at the adapted weights and H the support Hessian.
  with jax.enable_x64(True):
    ep = _episode(size=16, dtype=np.float64)
    kw = {"inner_steps": 1, "inner_lr": 0.3}
    so, fo = _learner("maml", **kw), _learner("fomaml", **kw)
    variables = jax.tree.map(lambda x: x.astype(jnp.float64),
                             so.init(jax.random.PRNGKey(0), ep))
    _, g_so = jax.jit(lambda v: _outer_grad(so, v, ep))(variables)
    _, g_fo = jax.jit(lambda v: _outer_grad(fo, v, ep))(variables)
    state = {"batch_stats": variables["batch_stats"]}

    def support_grad(net):
      return jax.grad(lambda n: losses.ce_and_accuracy(
          so._apply(n, state, ep["support_x"], True, 0)[0], ep["support_y"])[0])(net)

    # Hessian-vector product by reverse over reverse (the max-pool VJP is
    # custom, so it has no forward mode).
    v = g_fo["net"]
    hvp = jax.jit(jax.grad(lambda n: sum(jnp.vdot(a, b) for a, b in zip(
        jax.tree.leaves(support_grad(n)), jax.tree.leaves(v)))))(variables["params"]["net"])
    expected = jax.tree.map(lambda g, h: g - 0.3 * h, g_fo["net"], hvp)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-11),
                 g_so["net"], expected)
    assert np.abs(_flat(g_so) - _flat(g_fo)).max() > 1e-4  # the term is not negligible


def test_anil_adapts_only_the_head():
  ep = _episode()
  learner = _learner("anil")
  variables = learner.init(jax.random.PRNGKey(0), ep)
  fast, _ = learner.adapt(variables, ep["support_x"], ep["support_y"], 3)
  net = variables["params"]["net"]
  for k in net:
    same = all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), net[k],
                                            fast[k])))
    assert same == (k != "head"), k
  _, grads = _outer_grad(learner, variables, ep)
  assert np.abs(_flat(grads["net"]["block0"])).max() > 0  # the body still meta-learns


def test_zero_head_adapts_every_task_from_a_zero_head():
  ep = _episode()
  learner = _learner("fomaml", zero_head=True)
  variables = learner.init(jax.random.PRNGKey(0), ep)
  state = {"batch_stats": variables["batch_stats"]}
  start, _ = learner.adapt(variables, ep["support_x"], ep["support_y"], 0, train=True)
  logits = learner._apply(start, state, ep["query_x"], True, 0)[0]
  np.testing.assert_array_equal(np.asarray(logits), 0.0)  # uniform before adapting
  fast, _ = learner.adapt(variables, ep["support_x"], ep["support_y"], 1, train=True)
  assert np.abs(_flat(fast["head"])).max() > 0  # the first step writes the head

  # The stored head is never used: zero outer gradient, and another head
  # gives the same loss. Without the option it matters.
  loss, grads = _outer_grad(learner, variables, ep)
  np.testing.assert_array_equal(_flat(grads["net"]["head"]), 0.0)
  assert np.abs(_flat(grads["net"]["block0"])).max() > 0
  net = variables["params"]["net"]
  rng = np.random.default_rng(0)
  head = jax.tree.map(lambda h: h + rng.normal(size=h.shape).astype(np.float32), net["head"])
  other = {**variables["params"], "net": {**net, "head": head}}
  np.testing.assert_allclose(_outer_grad(learner, {**variables, "params": other}, ep)[0], loss)
  plain = _learner("fomaml")
  assert abs(float(_outer_grad(plain, {**variables, "params": other}, ep)[0]) -
             float(_outer_grad(plain, variables, ep)[0])) > 1e-3
  with pytest.raises(ValueError, match="zero_head zeroes the 'head'"):
    learner.task_init({"block0": {}})


def test_zero_head_learner_takes_any_ways():
  # A zero-head learner meta-learns nothing of the N-way head, so one trained
  # on 5-way tasks scores 3-way ones (and vice versa) exactly as a learner
  # built for 3 ways does; a learner with a meta-learned head refuses.
  ep5, ep3 = _episode(ways=5), _episode(ways=3, seed=1)
  five = _learner("fomaml", ways=5, zero_head=True, eval_inner_steps=2)
  three = _learner("fomaml", ways=3, zero_head=True, eval_inner_steps=2)
  variables = five.init(jax.random.PRNGKey(0), ep5)
  assert variables["params"]["net"]["head"]["kernel"].shape[-1] == 5
  logits = jax.jit(five.predict)(variables, ep3)
  assert logits.shape == (6, 3)
  np.testing.assert_allclose(logits, jax.jit(three.predict)(variables, ep3), rtol=1e-6)
  assert np.abs(np.asarray(logits)).max() > 0
  loss3, grads = _outer_grad(five, variables, ep3)
  assert np.isfinite(float(loss3)) and np.abs(_flat(grads["net"]["block0"])).max() > 0
  np.testing.assert_array_equal(_flat(grads["net"]["head"]), 0.0)
  for name in ("fomaml", "metasgd"):
    fixed = _learner(name, ways=5)
    with pytest.raises(ValueError, match="5-way .* but the episode is 3-way"):
      fixed.predict(fixed.init(jax.random.PRNGKey(0), ep5), ep3)


def test_metasgd_learns_its_rates():
  ep = _episode()
  learner = _learner("metasgd", inner_steps=1)
  variables = learner.init(jax.random.PRNGKey(0), ep)
  lr0 = variables["params"]["lr"]
  assert all(np.allclose(x, 0.3) for x in jax.tree.leaves(lr0))
  tx = optax.adam(1e-2)
  params, opt = variables["params"], tx.init(variables["params"])
  grad_fn = jax.jit(lambda p: _outer_grad(learner, {**variables, "params": p}, ep))
  losses = []
  for _ in range(15):
    loss, g = grad_fn(params)
    upd, opt = tx.update(g, opt)
    params = optax.apply_updates(params, upd)
    losses.append(float(loss))
  moved = np.abs(_flat(params["lr"]) - _flat(lr0))
  assert moved.max() > 0.05 and np.mean(moved > 0) > 0.9
  assert losses[-1] < losses[0]


def test_mamlpp_multi_step_loss_weights_and_derivative_order_annealing():
  for steps in (1, 2, 5):
    for progress in (0.0, 0.3, 1.0, 2.0):
      w = np.asarray(maml.msl_weights(steps, progress))
      assert w.shape == (steps,) and np.all(w >= 0)
      np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(maml.msl_weights(5, 0.0), np.full(5, 0.2), rtol=1e-6)
  np.testing.assert_allclose(maml.msl_weights(5, 1.0)[:4], np.full(4, 0.006), rtol=1e-5)

  ep = _episode()
  learner = _learner("mamlpp", inner_steps=3, eval_inner_steps=3, msl_steps=10,
                     first_order_steps=5)
  variables = learner.init(jax.random.PRNGKey(0), ep)
  # Per-layer per-step rates and per-step BatchNorm weights.
  assert variables["params"]["lr"]["block0"]["Conv_0"]["kernel"].shape == (3,)
  assert variables["params"]["net"]["block0"]["BatchNorm_0"]["scale"].shape == (4, 4)
  grad_at = jax.jit(lambda st: _outer_grad(learner, variables, ep, step=st)[1])
  g_early, g_late = grad_at(jnp.asarray(0)), grad_at(jnp.asarray(100))
  fo = _learner("mamlpp", inner_steps=3, eval_inner_steps=3, msl_steps=10, first_order_steps=10**9)
  g_fo = jax.jit(lambda st: _outer_grad(fo, variables, ep, step=st)[1])(jnp.asarray(0))
  np.testing.assert_allclose(_flat(g_early), _flat(g_fo), rtol=1e-5, atol=1e-7)
  # After annealing: second order (and other loss weights) change the gradient.
  assert np.abs(_flat(g_early) - _flat(g_late)).max() > 1e-4


def _train_step_outputs(batching, learner_name="maml", remat=False, devices=1, chunk=0):
  from fsl_jax.data import ClassImages, EpisodeSampler
  rng = np.random.default_rng(0)
  src = ClassImages(rng.random((12, 6, 28, 28, 1), np.float32), np.full(12, 6, np.int32),
                    [str(i) for i in range(12)])
  spec = EpisodeSpec(3, 1, 2)
  sampler = EpisodeSampler(src, spec)
  learner = _learner(learner_name, remat=remat)
  # SGD, not Adam: Adam's first step is ~lr * sign(grad), which turns the
  # float noise of exactly-zero gradients (conv biases under BatchNorm) into
  # full-size updates.
  tx = optax.sgd(0.1)
  state = builders.init_state(learner, tx, src.image_shape, spec, 0)
  step = jax.jit(meta_step.make_train_step(learner, tx, sampler, 4,
                                           builders.make_mesh(devices), batching, chunk))
  sums = None
  for i in range(2):  # the harness's keys: fold_in(run_key, step)
    key = jax.random.fold_in(builders.run_key(0), i)
    state, metrics = step(state, key, (sampler.images, sampler.counts))
    sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
  return {**state, "metric_sums": sums}


def test_vmapped_looped_and_chunked_steps_agree():
  # Two train steps four ways on one device: tasks vmapped in one gradient
  # chunk, vmapped in chunks of 2 (gradients accumulated), looped (lax.map),
  # and looped with rematerialised inner steps.
  a, b = _train_step_outputs("vmap", chunk=4), _train_step_outputs("map")
  np.testing.assert_allclose(_flat(a["params"]), _flat(b["params"]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(_flat(a["metric_sums"]), _flat(b["metric_sums"]), rtol=1e-5,
                             atol=1e-5)
  chunked = _train_step_outputs("vmap", chunk=2)
  # BatchNorm's running statistics average the chunks' batch statistics in
  # another order: measured 3.4e-6 apart (values ~0.05) with two conv
  # blocks; a chunk dropped or counted twice moves them by ~1e-2.
  for key, atol in (("params", 1e-6), ("model_state", 1e-5), ("metric_sums", 1e-6)):
    np.testing.assert_allclose(_flat(chunked[key]), _flat(b[key]), rtol=1e-5, atol=atol)
  c = _train_step_outputs("map", remat=True)
  np.testing.assert_allclose(_flat(c["params"]), _flat(b["params"]), rtol=1e-5, atol=1e-6)


def test_two_device_steps_agree_with_one(production_xla):
  # On two devices, each looping over, or chunking, its half of the
  # meta-batch (shard_map), gradients averaged: the one-device looped step's
  # result. (Split from the one-device test so xdist runs the two at once.)
  # Rerun in a process with two CPU devices and users' XLA flags
  # (conftest.ProductionXla: the agreement is to 1e-6).
  if jax.device_count() < 2 or not production_xla.here:
    production_xla.rerun("--xla_force_host_platform_device_count=2")
    return
  b = _train_step_outputs("map")
  for two in (_train_step_outputs("map", devices=2),
              _train_step_outputs("vmap", devices=2, chunk=1)):
    for key in ("params", "model_state", "metric_sums"):
      np.testing.assert_allclose(_flat(two[key]), _flat(b[key]), rtol=1e-5, atol=1e-6)


def test_batching_choice_by_backend():
  learner, proto = _learner(impl="auto"), meta.get("protonet", model=models.get("conv4"))
  # On CPU the MAML family's backbone convolves by im2col matmuls, which
  # vmap well; pinned to XLA's convolutions, its tasks are looped instead.
  assert meta.task_batching(learner) == "vmap"
  pinned = meta.get("maml", model=models.get("conv4", hidden=4, impl="cpu"))
  assert meta.task_batching(pinned) == ("map" if jax.default_backend() == "cpu" else "vmap")
  assert meta.task_batching(proto) == "vmap"
  assert meta.task_batching(learner, "vmap") == "vmap"
  with pytest.raises(ValueError, match="auto, vmap or map"):
    meta.task_batching(learner, "loop")
  # Gradient chunks: on CPU two vmapped tasks at a time for per-task weights.
  cpu = jax.default_backend() == "cpu"
  assert meta.task_chunk(learner, "vmap", 32) == (2 if cpu else 0)
  assert meta.task_chunk(learner, "vmap", 7) == (1 if cpu else 0)
  assert meta.task_chunk(learner, "vmap", 2) == 0  # one chunk already
  assert meta.task_chunk(proto, "vmap", 32) == 0
  assert meta.task_chunk(learner, "map", 32) == meta.task_chunk(learner, "map", 32, 4) == 0
  assert meta.task_chunk(learner, "vmap", 32, 8) == 8
  with pytest.raises(ValueError, match="task_chunk=3 must divide the 32 tasks"):
    meta.task_chunk(learner, "vmap", 32, 3)


def test_transductive_and_running_statistics_differ_and_ways_checked():
  ep = _episode()
  trans, running = _learner(), _learner(transductive=False)
  variables = trans.init(jax.random.PRNGKey(0), ep)
  a, b = trans.predict(variables, ep), running.predict(variables, ep)
  assert a.shape == b.shape == (6, 3)
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
  with pytest.raises(ValueError, match="--ways=3"):
    trans.predict(variables, _episode(ways=4))


def test_reptile_outer_gradient_is_params_minus_fast_weights():
  ep = _episode()
  learner = _learner("reptile", inner_steps=2)
  variables = learner.init(jax.random.PRNGKey(0), ep)
  _, g = _outer_grad(learner, variables, ep)
  x = jnp.concatenate([ep["support_x"], ep["query_x"]])
  y = jnp.concatenate([ep["support_y"], ep["query_y"]])
  fast, _ = learner.adapt(variables, x, y, 2, train=True, first_order=True)
  expected = jax.tree.map(lambda p, f: p - f, variables["params"]["net"], fast)
  np.testing.assert_allclose(_flat(g["net"]), _flat(expected), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("algo", ["maml", "fomaml", "anil", "metasgd", "reptile", "mamlpp"])
def test_config_trains_end_to_end_on_mock_data(algo, tmp_path):
  import importlib
  from fsl_jax.data import testing
  module = importlib.import_module(f"experiments.configs.{algo}_omniglot")
  config = module.get_config("runlocal")
  config.val_every = 0
  if algo == "fomaml":  # as its cpu60 variant: zero head, trained 7-way, tested 5-way
    cpu60 = module.get_config("cpu60")
    assert cpu60.learner_kwargs.zero_head and cpu60.train.ways == cpu60.learner_kwargs.ways
    assert cpu60.eval.ways == 5 != cpu60.train.ways
    config.train.ways = config.learner_kwargs.ways = 7
    config.learner_kwargs.zero_head = True
  with testing.mock_omniglot(train_classes=20, test_classes=10):
    res = meta_trainer.train_and_evaluate(config, str(tmp_path))
  assert (res["ways"], res["shots"], res["episodes"]) == (5, 1, 20)
  assert 0.0 <= res["accuracy"] <= 1.0
  rows = [l for l in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
  assert len(rows) == 3 and all("NaN" not in r for r in rows)


def test_sigterm_during_validation_saves_and_resumes(tmp_path, monkeypatch):
  # Seen on a GPU: `timeout` sent SIGTERM to the process group while
  # validation was compiling, the signal killed ptxas and the compilation
  # raised. The run must still save the step it reached and exit 143.
  import importlib
  import signal
  from fsl_jax.data import testing
  from fsl_jax.train import evaluation
  config = importlib.import_module("experiments.configs.maml_omniglot").get_config("runlocal")
  config.checkpoint_every, config.val_every = 1000, 4  # step 4 is no checkpoint step
  real_call = evaluation.Evaluator.__call__  # validation runs a compiled Evaluator

  def killed_compiler(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    raise RuntimeError("INTERNAL: ptxas exited with non-zero error code 15")

  with testing.mock_omniglot(train_classes=20, test_classes=10):
    monkeypatch.setattr(evaluation.Evaluator, "__call__", killed_compiler)
    with pytest.raises(SystemExit) as exit_info:
      meta_trainer.train_and_evaluate(config, str(tmp_path))
    assert exit_info.value.code == 143
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [4]
    monkeypatch.setattr(evaluation.Evaluator, "__call__", real_call)
    res = meta_trainer.train_and_evaluate(config, str(tmp_path))
  assert res["episodes"] == 20
  steps = [l for l in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
  assert len(steps) == 3  # steps 2, 4 and 6, each logged once


def test_evaluation_learner_options_are_typed_and_checked():
  import ml_collections
  config = ml_collections.ConfigDict({"learner_kwargs": {
      "eval_inner_steps": 3, "inner_lr": 0.4, "transductive": True}})
  got = restore.parse_learner_kwargs(
      config, ["eval_inner_steps=1", "inner_lr=1", "transductive=false"])
  assert got == {"eval_inner_steps": 1, "inner_lr": 1.0, "transductive": False}
  assert isinstance(got["inner_lr"], float)
  with pytest.raises(ValueError, match=r"one of \['eval_inner_steps', 'inner_lr'"):
    restore.parse_learner_kwargs(config, ["eval_steps=1"])
  with pytest.raises(ValueError, match="is a bool"):
    restore.parse_learner_kwargs(config, ["transductive=maybe"])
  with pytest.raises(ValueError, match="takes an integer"):
    restore.parse_learner_kwargs(config, ["eval_inner_steps=1.5"])
