"""Baseline++ + Conv4 on Omniglot (Chen et al., 2019): pretrain, then fine-tune.

    python -m experiments.meta_train --config=experiments/configs/baseline_omniglot.py \
        --workdir=/tmp/baseline [--config.train.shots=5 ...]

Training is plain classification over all 3168 training classes (792 lake
`train` characters x 4 rotations) with a cosine classifier; the "episodes"
are class-balanced minibatches of 32 classes x 4 images. Evaluation fits a
new 5-way cosine classifier on each episode's support set (100 Adam steps,
lr 0.01) on the frozen backbone. Chen et al.'s values where they apply (Adam
1e-3, scale 10 for many classes), Omniglot-sensible ones elsewhere.

`learner_kwargs.num_classes` must match `data.train_split` and
`data.rotations`: the global class ids are r * C + c. If it is too small the
training loss is NaN from the first step.

Arguments after ':' pick a variant:
  (none)    the full run: 20k steps of 128-image batches
  runlocal  seconds: a handful of tiny steps, for smoke tests
"""

from experiments.configs import protonet_omniglot


def get_config(arg: str | None = None):
  if arg not in (None, "", "runlocal"):
    raise ValueError(f"Unknown variant {arg!r}; use runlocal.")
  c = protonet_omniglot.get_config(arg)  # the same episodic body and runlocal variant
  c.learner = "baseline"
  # Lake `train`: 792 classes x 4 rotations. Use 964 * 4 = 3856 with
  # data.train_split = 'trainval'; C (no x4) with data.rotations = False.
  c.learner_kwargs.num_classes = 792 * 4
  c.learner_kwargs.scale = 10.0
  c.learner_kwargs.finetune_steps = 100
  c.learner_kwargs.finetune_lr = 0.01
  # A class-balanced minibatch: 32 classes x (1 + 3) images; shots and
  # queries play the same role in training.
  c.train.queries = 3
  c.optimizer.schedule = "constant"
  if not arg:
    c.train.ways = 32
  else:
    # The synthetic Omniglot of fsl_jax.data.testing (mock_omniglot defaults)
    # has 20 lake `train` classes: 20 x 4 rotations.
    c.learner_kwargs.num_classes = 20 * 4
  return c
