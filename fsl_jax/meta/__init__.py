"""Meta-learners, chosen by name from a registry (see `fsl_jax.meta.base`)."""

from fsl_jax.meta.base import Learner, get, names, register
from fsl_jax.meta import protonet  # noqa: F401  (registers itself)
