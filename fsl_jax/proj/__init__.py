"""Scenario code on top of the generic core (readers, trainers of one application).

Nothing in the core imports `fsl_jax.proj`; each scenario folder holds its
data readers and the trainer its binary runs.
"""
