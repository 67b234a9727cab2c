r"""ProtoNet on your own photos: class folders with ~10 images each (e.g. newly listed products).

    python -m experiments.meta_train --config=experiments/configs/protonet_folder.py[:VARIANTS] \
        --workdir=DIR --config.data.train_dir=PHOTOS/train --config.data.test_dir=PHOTOS/test \
        [--config.data.val_dir=PHOTOS/val]

Each split is a folder (or .zip) of class folders (`fsl_jax/data/folders.py`);
the classes of test are new categories the model never trained on. Episodes
fit 10 images per class: training 5-way 1-shot with 4 queries, evaluation
5-way 1-shot and 5 queries (`--config.eval.shots=5` needs 10 per class).
Photos are resized to 84x84 (decoded once, then read from the cache) and
augmented with crops, colour jitter and flips. Start from a model trained
on a large dataset instead with `experiments.evaluate --dataset=image_folder`.

Variants: resnet12, noaug, runlocal (comma-separated).
"""

from experiments.configs import natural


def get_config(arg: str | None = None):
  words = natural.variants(arg, ("resnet12", "noaug", "runlocal"))
  c = natural.base("image_folder", 84)
  c.data.val_split = ""            # set --config.data.val_split=val with a val_dir
  c.train.ways, c.train.shots, c.train.queries = 5, 1, 4
  c.train.steps = 2000
  c.eval.queries = 5
  c.optimizer.decay_every = 500
  c.log_every, c.checkpoint_every, c.val_every = 50, 500, 500
  if "resnet12" in words:
    c.model = "resnet12"
    c.model_kwargs.drop_rate = 0.1
  if "noaug" not in words:
    c.train.augment = natural.standard_augment(84)
  if "runlocal" in words:
    natural.runlocal(c)
  return c
