"""Optimizers and learning-rate schedules by name, from a config's `optimizer` section.

    optimizer:
      name: adam | adamw | sgd                 (OPTIMIZERS)
      learning_rate: 1e-3
      schedule: constant | step | piecewise | cosine | warmup_constant   (SCHEDULES)
      warmup_steps, decay_every, decay_rate, end_fraction, boundaries, scales,
      weight_decay, momentum, nesterov, b2, grad_clip (0: none)

Every binary builds its optimizer here, so a new optimizer or schedule is one
registered function and no trainer changes.
"""

from __future__ import annotations

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


def make_optimizer(cfg, total_steps: int, learning_rate: float | None = None
                   ) -> optax.GradientTransformation:
  """The optimizer `cfg` (a config's `optimizer` section) names, for a run of total_steps."""
  lr = float(cfg.learning_rate if learning_rate is None else learning_rate)
  if not lr > 0:
    raise ValueError(f"optimizer.learning_rate={lr} must be positive; set "
                     "--config.optimizer.learning_rate.")
  schedule = SCHEDULES.get(cfg.get("schedule", "constant"))(cfg, lr, int(total_steps))
  tx = OPTIMIZERS.get(cfg.get("name", "adam"))(cfg, schedule)
  clip = float(cfg.get("grad_clip", 0.0))
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx
