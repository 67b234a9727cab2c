"""fsl_jax: few-shot learning in JAX/Flax."""

__version__ = "0.1.0"
