"""The episode loss every learner reports: cross-entropy and accuracy on labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def ce_and_accuracy(logits_BxN: jax.Array, labels_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean softmax cross-entropy, mean argmax accuracy) of integer `labels_B`."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits_BxN, labels_B).mean()
  acc = jnp.mean(jnp.argmax(logits_BxN, -1) == labels_B)
  return loss, acc
