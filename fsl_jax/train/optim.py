"""Optimizers and learning-rate schedules by name, from a config's `optimizer` section.

    optimizer:
      name: adam | adamw | sgd                 (OPTIMIZERS)
      learning_rate: 1e-3
      schedule: constant | step | piecewise | cosine | warmup_constant   (SCHEDULES)
      warmup_steps, decay_every, decay_rate, end_fraction, boundaries, scales,
      weight_decay, momentum, nesterov, b2, grad_clip (0: none)
      groups: 'PATTERN=SCALE; PATTERN=SCALE'   ('' : one group)

`groups` gives parameter groups their own learning rates: a parameter whose
path ('backbone/block3/project/kernel', '/'-joined) contains a match of a
PATTERN (`re.search`; the first pattern that matches wins) has its updates
multiplied by SCALE, and SCALE 0 freezes it (no optimizer state; inside a
jitted step XLA then drops the gradients nothing uses). E.g. meta-training
a pretrained backbone with its first blocks frozen and the rest at a tenth
of the rate: 'backbone/(stem|block[0-9]/)=0; backbone/=0.1'. A pattern that
matches no parameter is an error (a typo would silently train everything).

Every binary builds its optimizer here, so a new optimizer or schedule is one
registered function and no trainer changes.
"""

from __future__ import annotations

import re

import jax
import optax

from fsl_jax.registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")


@SCHEDULES.register("constant")
def _constant(cfg, lr: float, total_steps: int):
  del total_steps
  warmup = int(cfg.get("warmup_steps", 0))
  return optax.warmup_constant_schedule(0.0, lr, warmup) if warmup else optax.constant_schedule(lr)


SCHEDULES.register("warmup_constant", _constant)


@SCHEDULES.register("step")
def _step(cfg, lr: float, total_steps: int):
  """Multiplied by decay_rate every decay_every steps (Snell et al.: x0.5 every 2000)."""
  del total_steps
  every = int(cfg.get("decay_every", 0))
  if every < 1:
    raise ValueError(f"optimizer.schedule='step' needs optimizer.decay_every >= 1 (got {every}); "
                     "set --config.optimizer.decay_every=N.")
  return optax.exponential_decay(lr, every, float(cfg.get("decay_rate", 0.5)), staircase=True)


@SCHEDULES.register("piecewise")
def _piecewise(cfg, lr: float, total_steps: int):
  """lr multiplied by scales[i] from step boundaries[i] on (MetaOptNet: 0.1, then x0.06,
  x0.2, x0.2 at epochs 20, 40, 50)."""
  del total_steps
  bounds, scales = list(cfg.get("boundaries", ())), list(cfg.get("scales", ()))
  if len(bounds) != len(scales) or not bounds or sorted(bounds) != bounds:
    raise ValueError(f"optimizer.schedule='piecewise' needs increasing optimizer.boundaries "
                     f"and as many optimizer.scales (got {bounds} and {scales}).")
  return optax.piecewise_constant_schedule(lr, {int(b): float(v) for b, v in zip(bounds, scales)})


@SCHEDULES.register("cosine")
def _cosine(cfg, lr: float, total_steps: int):
  """Linear warm-up, then cosine decay to end_fraction * lr at the last step."""
  warmup = int(cfg.get("warmup_steps", 0))
  return optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup, max(total_steps, warmup + 1), end_value=lr * float(cfg.get("end_fraction", 0.0)))


@OPTIMIZERS.register("adam")
def _adam(cfg, schedule):
  return optax.adam(schedule, b2=float(cfg.get("b2", 0.999)))


@OPTIMIZERS.register("adamw")
def _adamw(cfg, schedule):
  return optax.adamw(schedule, b2=float(cfg.get("b2", 0.999)),
                     weight_decay=float(cfg.get("weight_decay", 1e-4)))


@OPTIMIZERS.register("sgd")
def _sgd(cfg, schedule):
  """SGD with momentum (nesterov optional) and L2 weight decay added to the gradient
  (torch.optim.SGD's weight_decay, as MetaOptNet's 5e-4)."""
  sgd = optax.sgd(schedule, momentum=float(cfg.get("momentum", 0.9)) or None,
                  nesterov=bool(cfg.get("nesterov", False)))
  decay = float(cfg.get("weight_decay", 0.0))
  return optax.chain(optax.add_decayed_weights(decay), sgd) if decay else sgd


def schedule_depends_on_steps(cfg) -> bool:
  """Whether changing the run's length changes its learning rates (no resume with more steps)."""
  return cfg.get("schedule", "constant") == "cosine"


def parse_groups(spec: str) -> list[tuple[re.Pattern, float]]:
  """[(compiled PATTERN, SCALE), ...] of 'PATTERN=SCALE; ...' ('' -> [])."""
  groups = []
  for item in filter(None, (p.strip() for p in str(spec or "").split(";"))):
    pattern, eq, scale = item.rpartition("=")
    try:
      if not eq or not pattern.strip():
        raise ValueError("no PATTERN=SCALE")
      value = float(scale)
      if not value >= 0:
        raise ValueError("negative scale")
      groups.append((re.compile(pattern.strip()), value))
    except (ValueError, re.error) as e:
      raise ValueError(f"optimizer.groups: bad group {item!r} ({e}); write "
                       "'PATTERN=SCALE; PATTERN=SCALE' with regular expressions over parameter "
                       "paths like backbone/block3/project/kernel and scales >= 0 (0 freezes).") \
          from None
  return groups


def param_path(path) -> str:
  """'backbone/block3/project/kernel' for a jax tree path."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                  for k in path)


def group_labels(groups: list[tuple[re.Pattern, float]], params) -> object:
  """The group of each parameter: 'g<i>' for the first pattern i it matches, else 'rest'."""
  used = set()

  def label(path, _):
    name = param_path(path)
    for i, (pattern, _) in enumerate(groups):
      if pattern.search(name):
        used.add(i)
        return f"g{i}"
    return "rest"

  labels = jax.tree_util.tree_map_with_path(label, params)
  unused = [groups[i][0].pattern for i in range(len(groups)) if i not in used]
  if unused:
    some = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0][:6]]
    raise ValueError(f"optimizer.groups: {', '.join(repr(u) for u in unused)} matches no "
                     f"parameter (paths look like {', '.join(some)}); fix the pattern.")
  return labels


def with_groups(tx: optax.GradientTransformation, groups: list[tuple[re.Pattern, float]]
                ) -> optax.GradientTransformation:
  """`tx` with each group's updates scaled (0: frozen), see the module doc."""
  def scaled(scale):
    if scale == 0:
      return optax.set_to_zero()
    return tx if scale == 1 else optax.chain(tx, optax.scale(scale))

  transforms = {"rest": tx, **{f"g{i}": scaled(s) for i, (_, s) in enumerate(groups)}}
  return optax.multi_transform(transforms, lambda params: group_labels(groups, params))


def make_optimizer(cfg, total_steps: int, learning_rate: float | None = None
                   ) -> optax.GradientTransformation:
  """The optimizer `cfg` (a config's `optimizer` section) names, for a run of total_steps."""
  lr = float(cfg.learning_rate if learning_rate is None else learning_rate)
  if not lr > 0:
    raise ValueError(f"optimizer.learning_rate={lr} must be positive; set "
                     "--config.optimizer.learning_rate.")
  schedule = SCHEDULES.get(cfg.get("schedule", "constant"))(cfg, lr, int(total_steps))
  tx = OPTIMIZERS.get(cfg.get("name", "adam"))(cfg, schedule)
  groups = parse_groups(cfg.get("groups", ""))
  if groups:
    tx = with_groups(tx, groups)
  clip = float(cfg.get("grad_clip", 0.0))
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx
