"""Episodic few-shot data: class-indexed image sources and an N-way K-shot sampler."""

from fsl_jax.data.sources import ClassImages, DataError
from fsl_jax.data.episodes import EpisodeSampler, EpisodeSpec
