"""Gradient-based meta-learners: MAML, first-order MAML, ANIL, Meta-SGD, MAML++.

All share `GradientLearner`: a classifier backbone (Conv4 with an N-way head)
whose weights are adapted on each task's support set by `lax.scan` over inner
SGD steps of `jax.grad`, then scored on the query set. The outer gradient
flows through the inner updates (second order) unless `first_order`.

A variant overrides hooks rather than the loop:
- `task_init(net, ways) -> net`: where adaptation starts (`zero_head`: a zero
  `ways`-way head, so such a learner takes episodes of any ways);
- `inner_partition(net) -> (adapted, frozen)`: which weights adapt (ANIL: the head);
- `init_meta(key, net) -> dict`: extra meta-learned parameters (learned rates);
- `inner_update(fast, grads, meta, i) -> fast`: the inner step (Meta-SGD, MAML++);
- `step_weights(step) -> [S] | None`: query loss after every inner step (MAML++).

Variables are {'params': {'net': backbone params, **meta params},
'batch_stats': ...}. BatchNorm uses the statistics of the batch it sees
(support or query) at meta-test time when `transductive` (Finn et al.'s
MAML); otherwise running statistics gathered on training query batches.

A backbone with dropout (resnet12, wrn) draws it in training only, from the
key `outer_loss` receives: support pass i from fold_in(k_support, i), query
pass after step i from fold_in(k_query, i + 1). At meta-test time its
dropout is off (`models.layers.deterministic`), also when transductive
BatchNorm runs the backbone in training mode.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax.meta import base, embedding, losses
from fsl_jax.models import layers

Params = dict[str, Any]


def sgd(fast, grads, lr):
  return jax.tree.map(lambda p, g: p - lr * g, fast, grads)


def _pass_key(key, i):
  """The dropout key of one backbone pass (None without a key)."""
  return None if key is None else jax.random.fold_in(key, i)


def _split(key):
  """(support, query) dropout keys of a task (Nones without a key)."""
  return (None, None) if key is None else tuple(jax.random.split(key))


def _model_state(variables: dict) -> dict:
  """The non-parameter collections of `variables` (BatchNorm statistics)."""
  return {k: v for k, v in variables.items() if k != "params"}


@dataclasses.dataclass(frozen=True)
class GradientLearner:
  """MAML (Finn et al., 2017) and the base of its variants."""
  model: nn.Module
  ways: int = 5
  inner_steps: int = 1        # inner SGD steps while meta-training
  eval_inner_steps: int = 3   # ... and at meta-test time
  inner_lr: float = 0.4
  first_order: bool = False
  transductive: bool = True   # BatchNorm batch statistics at meta-test time
  remat: bool = False         # jax.checkpoint each inner step (memory flat in steps)
  zero_head: bool = False     # adapt from a zero head every task (Kao et al.'s zeroing trick)
  name: str = "maml"

  per_task_weights = True
  uses_step = False

  # ------------------------------------------------------------- hooks

  @property
  def net(self) -> nn.Module:
    """The backbone with an N-way head."""
    if getattr(self.model, "num_classes", self.ways) != self.ways:
      return self.backbone(num_classes=self.ways)
    return self.backbone()

  def net_for(self, ways: int) -> nn.Module:
    """`self.net` with a `ways`-way head (only a zero-head learner takes other ways)."""
    return self.net if ways == self.ways else self.net.clone(num_classes=ways)

  def backbone(self, **updates) -> nn.Module:
    """`self.model` with `updates`, and on CPU convolutions for per-task weights.

    A backbone left at `impl='auto'` runs its convolutions on CPU as im2col
    matmuls (`models.layers.conv_im2col`): with adapted weights they are
    twice as fast as XLA's convolutions with our custom gradients, looped or
    vmapped (BENCHMARKS.md).
    """
    if getattr(self.model, "impl", None) == "auto" and jax.default_backend() == "cpu":
      updates = {"impl": "im2col", **updates}
    return self.model.clone(**updates) if updates else self.model

  def init_meta(self, key, net: Params) -> Params:
    del key, net
    return {}

  def inner_partition(self, net: Params) -> tuple[Params, Params]:
    return net, {}

  def task_init(self, net: Params, ways: int | None = None) -> Params:
    """The net weights a task's adaptation starts from, for a `ways`-way task.

    With `zero_head`, the head is zero, the "zeroing trick" of Kao et al.
    (2022, "MAML is a noisy contrastive learner in classification"): the first
    inner step then writes class-mean features into the head, and the head's
    meta-learned initialisation, which under random label permutations only
    adds noise to the outer gradient, is not used (it gets zero gradient).
    Nothing meta-learned then depends on the number of classes, so the head
    is built for the task's `ways` (default `self.ways`): a zero-head learner
    trains and evaluates on any N-way episodes.
    """
    if not self.zero_head:
      return net
    if "head" not in net:
      raise ValueError(f"zero_head zeroes the 'head' submodule; the backbone has none "
                       f"(params: {sorted(net)}).")
    ways = self.ways if ways is None else ways
    # Dense head: kernel [D, N] and bias [N]; the class axis is the last.
    head = jax.tree.map(lambda p: jnp.zeros(p.shape[:-1] + (ways,), p.dtype), net["head"])
    return {**net, "head": head}

  def combine(self, adapted: Params, frozen: Params) -> Params:
    return {**frozen, **adapted}

  def inner_update(self, fast: Params, grads: Params, meta: Params, i) -> Params:
    del meta, i
    return sgd(fast, grads, self.inner_lr)

  def step_weights(self, step) -> jax.Array | None:
    del step
    return None

  # ------------------------------------------------------------- core

  def init(self, key, episode):
    variables = dict(self.net.init(key, episode["support_x"], train=False))
    net = variables.pop("params")
    return {"params": {"net": net, **self.init_meta(jax.random.fold_in(key, 1), net)},
            **variables}

  def _apply(self, net: Params, state: dict, x, train: bool, i, key=None):
    module = self.net
    if self.zero_head and "head" in net:  # its head has the task's ways (task_init)
      module = self.net_for(jax.tree.leaves(net["head"])[0].shape[-1])
    if not train:  # meta-test: no dropout, even in transductive BatchNorm's training mode
      module = layers.deterministic(module)
    kwargs = {"step": i} if getattr(module, "bn_steps", 0) else {}
    kwargs["rngs"] = embedding.dropout_rngs(key, train)
    variables = {"params": net, **state}
    if (train or self.transductive) and state:
      return module.apply(variables, x, train=True, mutable=list(state), **kwargs)
    return module.apply(variables, x, train=(train or self.transductive), **kwargs), state

  def _check_ways(self, episode) -> int:
    """The episode's ways; refused unless the head has them or is zeroed per task."""
    ways = episode["classes"].shape[0]
    if ways != self.ways and not self.zero_head:
      raise ValueError(
          f"{self.name} has a {self.ways}-way classifier head but the episode is {ways}-way; "
          f"evaluate with --ways={self.ways} or train with --config.train.ways={ways} "
          f"--config.learner_kwargs.ways={ways} (a learner with "
          f"--config.learner_kwargs.zero_head=true takes any ways).")
    return ways

  def adapt(self, variables, x, y, steps: int, train: bool = False, first_order=None,
            query=None, ways: int | None = None, key=None):
    """Fast net weights after `steps` inner steps on (x, y) of a `ways`-way task.

    With `query=(qx, qy)`, also returns the query loss and accuracy after
    every step ([steps] each); otherwise that element is None. `ways`
    (default `self.ways`) may differ from the head's only with `zero_head`.
    `key` feeds the backbone's dropout in training (see the module doc).
    """
    params = variables["params"]
    state = _model_state(variables)
    meta = {k: v for k, v in params.items() if k != "net"}
    adapted, frozen = self.inner_partition(self.task_init(params["net"], ways))
    fo = self.first_order if first_order is None else first_order
    k_support, k_query = _split(key)

    def support_loss(adapted, i):
      logits, _ = self._apply(self.combine(adapted, frozen), state, x, train, i,
                              _pass_key(k_support, i))
      return losses.ce_and_accuracy(logits, y)[0]

    def body(adapted, i):
      grads = jax.grad(support_loss)(adapted, i)
      if fo:
        grads = jax.lax.stop_gradient(grads)
      adapted = self.inner_update(adapted, grads, meta, i)
      out = None
      if query is not None:
        logits, _ = self._apply(self.combine(adapted, frozen), state, query[0], train, i + 1,
                                _pass_key(k_query, i + 1))
        out = losses.ce_and_accuracy(logits, query[1])
      return adapted, out

    if self.remat:
      body = jax.checkpoint(body)
    adapted, per_step = jax.lax.scan(body, adapted, jnp.arange(steps))
    return self.combine(adapted, frozen), per_step

  def _loss(self, variables, episode, train, first_order, weights, key=None):
    steps = self.inner_steps if train else self.eval_inner_steps
    state = _model_state(variables)
    query = (episode["query_x"], episode["query_y"]) if weights is not None else None
    fast, per_step = self.adapt(variables, episode["support_x"], episode["support_y"], steps,
                                train, first_order, query, ways=episode["classes"].shape[0],
                                key=key)
    logits, new_state = self._apply(fast, state, episode["query_x"], train, steps,
                                    _pass_key(_split(key)[1], steps))
    loss, acc = losses.ce_and_accuracy(logits, episode["query_y"])
    if weights is not None:  # multi-step loss: the last term is `loss` itself
      loss = jnp.sum(weights[:-1] * per_step[0][:-1]) + weights[-1] * loss
    return loss, {"accuracy": acc, "model_state": new_state}

  def outer_loss(self, variables, episode, key=None, train=True, step=None):
    self._check_ways(episode)
    weights = self.step_weights(step) if train else None
    return self._loss(variables, episode, train, None, weights, key)

  def predict(self, variables, episode, key=None):
    del key
    ways = self._check_ways(episode)
    state = _model_state(variables)
    fast, _ = self.adapt(variables, episode["support_x"], episode["support_y"],
                         self.eval_inner_steps, train=False, first_order=True, ways=ways)
    return self._apply(fast, state, episode["query_x"], False, self.eval_inner_steps)[0]


base.register("maml")(GradientLearner)


@base.register("fomaml")
@dataclasses.dataclass(frozen=True)
class FOMAML(GradientLearner):
  """First-order MAML: the inner gradients are constants to the outer gradient."""
  first_order: bool = True
  name: str = "fomaml"


@base.register("anil")
@dataclasses.dataclass(frozen=True)
class ANIL(GradientLearner):
  """Almost No Inner Loop (Raghu et al., 2020): only the head adapts."""
  name: str = "anil"

  def inner_partition(self, net):
    if "head" not in net:
      raise ValueError("ANIL adapts the 'head' submodule; the backbone has none "
                       f"(params: {sorted(net)}).")
    return {"head": net["head"]}, {k: v for k, v in net.items() if k != "head"}


@base.register("metasgd")
@dataclasses.dataclass(frozen=True)
class MetaSGD(GradientLearner):
  """Meta-SGD (Li et al., 2017): a learned inner learning rate per parameter."""
  name: str = "metasgd"

  def init_meta(self, key, net):
    del key
    adapted, _ = self.inner_partition(net)
    return {"lr": jax.tree.map(lambda p: jnp.full_like(p, self.inner_lr), adapted)}

  def inner_update(self, fast, grads, meta, i):
    del i
    return jax.tree.map(lambda p, g, lr: p - lr * g, fast, grads, meta["lr"])

  def _check_ways(self, episode) -> int:
    ways = episode["classes"].shape[0]
    if ways != self.ways:  # the head's learned rates have its shape
      raise ValueError(
          f"metasgd learns a rate per weight of its {self.ways}-way head but the episode is "
          f"{ways}-way; evaluate with --ways={self.ways} or train with "
          f"--config.train.ways={ways} --config.learner_kwargs.ways={ways}.")
    return ways


def msl_weights(steps: int, progress) -> jax.Array:
  """MAML++ multi-step loss weights, summing to one.

  At progress 0 every inner step's query loss weighs 1/steps; the non-final
  weights then decay linearly to a floor of 0.03/steps at progress 1, the
  final step taking the rest.
  """
  progress = jnp.clip(progress, 0.0, 1.0)
  nonfinal = jnp.maximum((1.0 - progress) / steps, 0.03 / steps) * jnp.ones(steps - 1)
  return jnp.concatenate([nonfinal, 1.0 - jnp.sum(nonfinal, keepdims=True)])


@base.register("mamlpp")
@dataclasses.dataclass(frozen=True)
class MAMLPlusPlus(GradientLearner):
  """MAML++ (Antoniou et al., 2019).

  - multi-step loss: the query loss after every inner step, weights annealed
    towards the last step over `msl_steps` training steps (`msl_weights`);
  - per-layer per-step learned inner learning rates (LSLR);
  - per-step BatchNorm weights and running statistics (BNWB + BNRS);
  - derivative-order annealing: first order for the first
    `first_order_steps` training steps, second order after.
  Cosine annealing of the outer learning rate is the optimizer config's.
  """
  inner_steps: int = 5
  eval_inner_steps: int = 5
  inner_lr: float = 0.1
  msl_steps: int = 10000
  first_order_steps: int = 5000
  name: str = "mamlpp"

  uses_step = True

  @property
  def net(self):
    steps = max(self.inner_steps, self.eval_inner_steps) + 1
    return self.backbone(num_classes=self.ways, bn_steps=steps)

  def init_meta(self, key, net):
    del key
    adapted, _ = self.inner_partition(net)
    steps = max(self.inner_steps, self.eval_inner_steps)
    return {"lr": jax.tree.map(lambda p: jnp.full((steps,), self.inner_lr), adapted)}

  def inner_update(self, fast, grads, meta, i):
    return jax.tree.map(lambda p, g, lr: p - lr[i] * g, fast, grads, meta["lr"])

  def step_weights(self, step):
    progress = 1.0 if step is None else step / max(self.msl_steps, 1)
    return msl_weights(self.inner_steps, progress)

  def outer_loss(self, variables, episode, key=None, train=True, step=None):
    self._check_ways(episode)
    if not train:
      return self._loss(variables, episode, False, None, None)
    weights = self.step_weights(step)
    if step is None or self.first_order_steps <= 0:
      return self._loss(variables, episode, True, None, weights, key)
    return jax.lax.cond(step < self.first_order_steps,
                        lambda v: self._loss(v, episode, True, True, weights, key),
                        lambda v: self._loss(v, episode, True, False, weights, key), variables)


@base.register("reptile")
@dataclasses.dataclass(frozen=True)
class Reptile(GradientLearner):
  """Reptile (Nichol et al., 2018).

  Adapts on all of a task's data (support and query) with first-order inner
  SGD; the outer "gradient" is params - fast params, produced as the gradient
  of the surrogate 0.5 * |params - stop_gradient(fast)|^2 so any optax
  optimizer applies it (plain SGD with learning rate e = Reptile's step size).
  The reported accuracy is on the query set after adaptation.
  """
  inner_steps: int = 5
  eval_inner_steps: int = 10
  inner_lr: float = 0.1
  first_order: bool = True
  name: str = "reptile"

  def outer_loss(self, variables, episode, key=None, train=True, step=None):
    del step
    self._check_ways(episode)
    x = jnp.concatenate([episode["support_x"], episode["query_x"]])
    y = jnp.concatenate([episode["support_y"], episode["query_y"]])
    steps = self.inner_steps if train else self.eval_inner_steps
    fast, _ = self.adapt(variables, x, y, steps, train, first_order=True,
                         ways=episode["classes"].shape[0], key=key)
    fast = jax.lax.stop_gradient(fast)
    state = _model_state(variables)
    logits, new_state = self._apply(fast, state, episode["query_x"], train, steps,
                                    _pass_key(_split(key)[1], steps))
    _, acc = losses.ce_and_accuracy(logits, episode["query_y"])
    net = variables["params"]["net"]
    if self.zero_head:  # the stored head is never used (and may have other ways)
      net, fast = ({k: v for k, v in t.items() if k != "head"} for t in (net, fast))
    sq = jax.tree.map(lambda p, f: jnp.sum((p - f) ** 2), net, fast)
    return 0.5 * sum(jax.tree.leaves(sq)), {"accuracy": acc, "model_state": new_state}
