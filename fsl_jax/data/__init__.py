"""Episodic few-shot data: class-indexed image and text sources and an N-way K-shot sampler."""

from fsl_jax.data.sources import ClassImages, DataError
from fsl_jax.data.episodes import EpisodeSampler, EpisodeSpec
from fsl_jax.data.text import TextClasses, TextEpisodeSampler, TokenizedClasses
