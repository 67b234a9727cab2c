"""The PyTorch reference steps of benchmarks/torch_fewshot.py compute our learners.

`benchmarks/meta_step.py --compare_torch` reports a throughput ratio against
these steps; the ratio means something only if they train the same learner.
On copied weights (dropout off, training-mode BatchNorm) the torch ProtoNet,
MetaOptNet and MAML losses and gradients equal ours, and the torch SVM head
(the same interior-point method, implicit gradients) gives our logits.
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax import meta, models
from fsl_jax.meta import metaopt

torch = pytest.importorskip("torch")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_fewshot  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

WIDTHS = (4, 8, 12, 16)  # the ResNet-12 widths of tests/test_backbones.py (shared compiles)


@pytest.fixture(autouse=True)
def _one_torch_thread():
  """Tiny ops: OpenMP's barriers cost more than they save on a loaded 2-core machine
  (the uint8 step tests ran 5-12 s with 2 threads, 0.2-0.5 s with 1)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def _episode(ways, shots, queries, size, channels, seed=0):
  rng = np.random.default_rng(seed)
  draw = lambda n: rng.random((n, size, size, channels), np.float32)  # noqa: E731
  return {"support_x": draw(ways * shots), "support_y": np.repeat(np.arange(ways), shots),
          "query_x": draw(ways * queries), "query_y": np.repeat(np.arange(ways), queries),
          "classes": np.arange(ways)}


def _torch_episode(ep):
  nchw = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # noqa: E731
  label = lambda y: torch.from_numpy(y).long()  # noqa: E731
  return (nchw(ep["support_x"]), label(ep["support_y"]), nchw(ep["query_x"]),
          label(ep["query_y"]))


def _model(name, size, channels, num_classes=None):
  """(flax backbone, torch backbone) of the same architecture, dropout off."""
  if name == "resnet12":
    flax_net = models.get("resnet12", widths=WIDTHS, drop_rate=0.0, num_classes=num_classes)
    kw = {"widths": WIDTHS, "drop_rate": 0.0}
  else:
    flax_net = models.get("conv4", hidden=8, num_classes=num_classes)
    kw = {"hidden": 8}
  return flax_net, torch_fewshot.backbone(name, size, channels, num_classes, **kw)


def _first_conv_grad(flax_grads, net):
  """(ours [k, k, I, O], torch's in the flax layout) gradients of the first convolution."""
  if isinstance(net, torch_fewshot.Conv4):
    ours, theirs = flax_grads["block0"]["Conv_0"]["kernel"], net.blocks[0][0].weight.grad
  else:
    ours, theirs = flax_grads["block0"]["conv0"]["kernel"], net.blocks[0].convs[0].weight.grad
  return np.asarray(ours), theirs.permute(2, 3, 1, 0).numpy()


def test_protonet_loss_and_gradient_match_ours():
  name, size, channels = "resnet12", 16, 3
  flax_net, net = _model(name, size, channels)
  learner = meta.get("protonet", model=flax_net)
  ep = _episode(5, 2, 3, size, channels)
  variables = learner.init(jax.random.PRNGKey(0), ep)
  loss_fn = lambda p: learner.outer_loss({**variables, "params": p}, ep,  # noqa: E731
                                         jax.random.PRNGKey(1), train=True)[0]
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["params"])
  torch_fewshot.load_from_flax(net, variables)
  got, _ = torch_fewshot.protonet_loss(net.train(), _torch_episode(ep), 5)
  got.backward()
  assert float(loss) > 0.1  # a loss with something to learn, not a saturated 0
  np.testing.assert_allclose(got.item(), float(loss), rtol=1e-4, atol=1e-4)
  ours, theirs = _first_conv_grad(grads, net)
  np.testing.assert_allclose(theirs, ours, rtol=1e-3, atol=1e-4 * np.abs(ours).max())


def _svm_problem(rng, ways=5, shots=2, queries=4, dim=12):
  centers = rng.normal(size=(ways, dim))

  def draw(per):  # post-ReLU embeddings around one centre per class
    return np.maximum(np.repeat(centers, per, 0) + rng.normal(size=(ways * per, dim)), 0)

  return draw(shots), np.repeat(np.arange(ways), shots), draw(queries)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-9), (np.float32, 2e-4)])
def test_svm_head_logits_and_gradients_match_ours(dtype, tol):
  """Same solver in both: float64 agrees to rounding; float32 to 2e-4 of the largest entry."""
  sup, sup_y, qry = _svm_problem(np.random.default_rng(0))
  sup, qry = sup.astype(dtype), qry.astype(dtype)
  w = np.random.default_rng(1).normal(size=(len(qry), 5)).astype(dtype)  # a cotangent

  def ours_fn(s, q, scale):
    logits = metaopt.metaopt_logits(s, jnp.asarray(sup_y), q, 5, {"scale": scale})
    return jnp.sum(logits * w), logits

  with jax.enable_x64(dtype == np.float64):
    (_, logits), (g_s, g_q, g_scale) = jax.jit(jax.value_and_grad(ours_fn, (0, 1, 2),
                                                                  has_aux=True))(
        jnp.asarray(sup), jnp.asarray(qry), jnp.asarray(1.5, dtype))
  s_t, q_t = (torch.tensor(x, requires_grad=True) for x in (sup, qry))
  scale_t = torch.tensor(1.5, dtype=s_t.dtype, requires_grad=True)
  got = torch_fewshot.metaopt_logits(s_t, torch.from_numpy(sup_y).long(), q_t, 5, scale_t)
  (got * torch.from_numpy(w)).sum().backward()
  for theirs, ours in ((got.detach(), logits), (s_t.grad, g_s), (q_t.grad, g_q),
                       (scale_t.grad, g_scale)):
    ours = np.asarray(ours)
    np.testing.assert_allclose(theirs.numpy(), ours, rtol=0, atol=tol * np.abs(ours).max())


@pytest.mark.parametrize("algo", ["maml", "fomaml"])
def test_maml_loss_and_gradient_match_ours(algo):
  # Conv4 at 32x32: a 2x2 final map, so the head's NHWC -> NCHW row order is tested too.
  flax_net, net = _model("conv4", 32, 1, num_classes=3)
  learner = meta.get(algo, model=flax_net, ways=3, inner_steps=2, inner_lr=0.3)
  ep = _episode(3, 1, 2, 32, 1, seed=1)
  variables = learner.init(jax.random.PRNGKey(2), ep)
  loss_fn = lambda p: learner.outer_loss({**variables, "params": p}, ep,  # noqa: E731
                                         jax.random.PRNGKey(3), train=True)[0]
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["params"])
  torch_fewshot.load_from_flax(net, {**variables, "params": variables["params"]["net"]})
  got, _ = torch_fewshot.maml_loss(net.train(), _torch_episode(ep), inner_steps=2,
                                   inner_lr=0.3, first_order=algo == "fomaml")
  got.backward()
  np.testing.assert_allclose(got.item(), float(loss), rtol=1e-4, atol=1e-4)
  ours, theirs = _first_conv_grad(grads["net"], net)
  np.testing.assert_allclose(theirs, ours, rtol=1e-3, atol=1e-3 * np.abs(ours).max())
  # The head's rows: flax flattens the 2x2x8 map NHWC, torch NCHW.
  head = np.asarray(grads["net"]["head"]["kernel"]).reshape(2, 2, 8, 3).transpose(2, 0, 1, 3)
  head = head.reshape(-1, 3).T
  np.testing.assert_allclose(net.head.weight.grad.numpy(), head, rtol=1e-3,
                             atol=1e-3 * np.abs(head).max())


@pytest.mark.parametrize("algo", torch_fewshot.ALGOS)
def test_torch_step_trains_on_sampled_uint8_episodes(algo):
  maml = algo in ("maml", "fomaml")
  net = torch_fewshot.backbone("resnet12", 16, 3, 5 if maml else None, WIDTHS, 0.1, 2)
  split = torch_fewshot.random_split(8, 6, 16, 3, uint8=True)
  assert split.dtype == torch.uint8 and split.shape == (8, 6, 3, 16, 16)
  sx, sy, qx, qy = torch_fewshot.sample_episode(split, 5, 1, 3, torch.Generator().manual_seed(0))
  assert sx.shape == (5, 3, 16, 16) and qx.shape == (15, 3, 16, 16)
  assert sx.dtype == torch.float32 and 0 <= sx.min() and sx.max() <= 1
  assert sy.tolist() == list(range(5)) and qy.tolist() == sorted(list(range(5)) * 3)
  step, sync, _ = torch_fewshot.make_step(algo, net, 5, 1, 3, 2, split)
  before = [p.detach().clone() for p in net.parameters()]
  step()
  sync()
  assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
  assert all(torch.isfinite(p).all() for p in net.parameters())


def test_unknown_algo_or_model_is_refused():
  with pytest.raises(ValueError, match="use one of protonet, metaopt"):
    torch_fewshot.make_step("r2d2", torch_fewshot.Conv4(), 5, 1, 1, 1,
                            torch_fewshot.random_split(5, 2, 28, 1, uint8=False))
  with pytest.raises(ValueError, match="conv4, resnet12"):
    torch_fewshot.backbone("wrn", 32, 3)
