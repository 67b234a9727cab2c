"""Meta-learners, chosen by name from a registry (see `fsl_jax.meta.base`)."""

from fsl_jax.meta.base import (LEARNERS, Learner, get, map_tasks, names, register,
                                task_batching, task_chunk)
from fsl_jax.meta.losses import ce_and_accuracy
from fsl_jax.meta.metric import MetricLearner
from fsl_jax.meta import maml  # noqa: F401  (registers itself)
from fsl_jax.meta import protonet  # noqa: F401
from fsl_jax.meta import baseline  # noqa: F401
from fsl_jax.meta import matchingnet  # noqa: F401
from fsl_jax.meta import r2d2  # noqa: F401
from fsl_jax.meta import metaopt  # noqa: F401
from fsl_jax.meta import simpleshot  # noqa: F401
from fsl_jax.meta import logreg  # noqa: F401
from fsl_jax.meta import finetune  # noqa: F401
from fsl_jax.meta import setfit  # noqa: F401
