"""Timing shared by the benchmark scripts (imported as a sibling module)."""

import time

import numpy as np


def median_seconds(fn, reps: int) -> float:
  """Median wall seconds of `reps` calls of fn, after one warm-up call
  (compilation for JAX). fn must block until its result is ready."""
  fn()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))
