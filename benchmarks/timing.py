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


def mean_ms(fn, steps: int) -> float:
  """Mean milliseconds per call over `steps` calls, after one untimed call.
  fn must block until its result is ready."""
  fn()
  t0 = time.perf_counter()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - t0) / steps * 1e3
