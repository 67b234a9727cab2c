"""The meta-training step: sample a meta-batch of episodes, take the meta-gradient, update.

`make_train_step(...)` returns a pure `step(state, key, inputs) -> (state,
metrics)` for `fsl_jax.train.loop.Harness`: it samples its own meta-batch of
episodes from `key` inside the jitted function (`inputs` = the split's
images and counts, on device once), shards the episodes over a 1-D device
mesh ('data'), and returns the new state and the step's loss, accuracy and
gradient norm. With a split kept on the host (`episodes.HostEpisodes`), the
step takes the host's batch {'key', 'x', 'classes'} in place of the key (and
no inputs) and finishes the same episodes from its pixels.
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import optax

from fsl_jax import meta
from fsl_jax.data.episodes import EpisodeSampler, HostEpisodes


def make_train_step(learner, tx, sampler: EpisodeSampler | HostEpisodes, meta_batch: int,
                    mesh: Mesh,
                    batching: str = "auto", chunk: int = 0):
  """A pure `step(state, key, (images, counts)) -> (state, metrics)`, not yet jitted.

  `batching` ('auto' | 'vmap' | 'map') runs the meta-batch's tasks batched
  or in a loop; see `fsl_jax.meta.base.task_batching`. Vmapped tasks take
  their gradient `chunk` tasks at a time, accumulated in a loop (0: picked
  by `fsl_jax.meta.base.task_chunk`, all at once off CPU). With a loop or
  chunks and more than one device, each device runs its own shard of the
  tasks (`shard_map`) and the gradients are averaged with `pmean`; left to
  the partitioner, a `lax.map` over a sharded axis runs ~2x slower than on
  one device.
  """
  on_host = isinstance(sampler, HostEpisodes)
  batch_fn = None if on_host else sampler.batch_fn()
  episode_sharding = NamedSharding(mesh, P("data"))
  mode = meta.task_batching(learner, batching)
  chunk = meta.task_chunk(learner, mode, meta_batch // mesh.devices.size, chunk)
  over_tasks = functools.partial(meta.map_tasks, batching=mode)
  step_kw = getattr(learner, "uses_step", False)

  def loss_fn(params, model_state, step, episodes, loss_keys):
    variables = {"params": params, **model_state}
    kw = {"step": step} if step_kw else {}
    one = lambda ep, k: learner.outer_loss(variables, ep, k, train=True, **kw)
    losses, aux = over_tasks(one)(episodes, loss_keys)
    # Means over tasks; keepdims so the per-device path can average them.
    return losses.mean(), jax.tree.map(lambda x: x.mean(0, keepdims=True), aux)

  grad_fn = local_grad_fn = _in_chunks(jax.value_and_grad(loss_fn, has_aux=True), chunk)
  if (mode == "map" or chunk) and mesh.devices.size > 1:
    def per_device(*args):  # equal shards, so the mean of means is the mean
      return jax.lax.pmean(local_grad_fn(*args), "data")
    grad_fn = jax.shard_map(per_device, mesh=mesh, out_specs=P(), check_vma=False,
                            in_specs=(P(), P(), P(), P("data"), P("data")))

  def step(state, key_or_batch, inputs):
    key = key_or_batch["key"] if on_host else key_or_batch
    k_data, k_loss = jax.random.split(key)
    if on_host:
      episodes = sampler.finish(k_data, key_or_batch)
    else:
      images, counts = inputs
      episodes = batch_fn(k_data, meta_batch, images, counts)
    episodes = jax.lax.with_sharding_constraint(episodes, episode_sharding)
    loss_keys = jax.random.split(k_loss, meta_batch)
    (loss, aux), grads = grad_fn(state["params"], state["model_state"], state["step"],
                                 episodes, loss_keys)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    # Model state (BatchNorm running stats) updated per episode, already
    # averaged over tasks (and devices) by grad_fn; drop the kept axis.
    model_state = jax.tree.map(lambda x: x[0], aux["model_state"]) or state["model_state"]
    metrics = {"loss": loss, "accuracy": aux["accuracy"][0],
               "grad_norm": optax.global_norm(grads)}
    return {**state, "params": params, "opt_state": opt_state,
            "model_state": model_state}, metrics

  return step


def _in_chunks(grad_fn, chunk: int):
  """grad_fn(params, state, step, episodes, keys) over `chunk` tasks at a time, averaged.

  The loss and aux are means over tasks, so the mean over equal chunks is
  the whole batch's; only one chunk's activations are live at a time.
  """
  if not chunk:
    return grad_fn

  def chunked(params, model_state, step, episodes, keys):
    split = lambda x: x.reshape((x.shape[0] // chunk, chunk) + x.shape[1:])
    per_chunk = jax.lax.map(lambda xs: grad_fn(params, model_state, step, *xs),
                            jax.tree.map(split, (episodes, keys)))
    return jax.tree.map(lambda x: x.mean(0), per_chunk)

  return chunked
