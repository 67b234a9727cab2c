r"""Few-shot evaluation of the latest checkpoint in a workdir.

    python -m experiments.evaluate --workdir=DIR --ways=20 --shots=1 \
        --episodes=1000 [--split=test] [--queries=15] [--seed=1234] \
        [--learner_kwarg=eval_inner_steps=1 ...]

Prints one JSON line: {"split", "ways", "shots", "accuracy", "ci95", "episodes"}.
The episode set depends only on (split, ways, shots, queries, seed, episodes).

Cross-domain: `--dataset=NAME [--data_dir=PATH]` evaluates on another
dataset of the data registry (its --split, default test), its images resized
to the trained model's input size and channels, e.g. a Tiny ImageNet model
on the NEU-DET steel defects (any folder of class folders):

    python -m experiments.evaluate --workdir=DIR --dataset=image_folder \
        --data_dir=../shared/data/images/neu-det --ways=5 --shots=1
"""

import json

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory written by experiments.meta_train.")
flags.DEFINE_integer("ways", None, "Classes per episode (default: the config's eval.ways).")
flags.DEFINE_integer("shots", None, "Support examples per class (default: eval.shots).")
flags.DEFINE_integer("queries", None, "Query examples per class (default: eval.queries).")
flags.DEFINE_integer("episodes", None, "Number of episodes (default: eval.episodes).")
flags.DEFINE_string("split", None, "Split to evaluate on (default: eval.split).")
flags.DEFINE_integer("seed", None, "Episode seed (default: eval.seed).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_string("dataset", None, "Evaluate on this dataset of the registry instead of the "
                    "trained one (cross-domain), e.g. image_folder, tiny_imagenet, cifar_fs.")
flags.DEFINE_string("data_dir", None, "With --dataset: its files (for image_folder: the folder "
                    "of class folders, or a .zip of one).")
flags.DEFINE_multi_string(
    "learner_kwarg", [], "NAME=VALUE: evaluate with a learner option changed from the saved "
    "config, e.g. eval_inner_steps=1 or transductive=false; repeatable; recorded in results.jsonl.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  common.setup()
  from fsl_jax.data import registry as data_registry  # pylint: disable=g-import-not-at-top
  from fsl_jax.train import builders, evaluation, loop, restore  # pylint: disable=g-import-not-at-top

  for name in ("ways", "shots", "queries", "episodes"):
    value = getattr(FLAGS, name)
    if value is not None and value < (2 if name == "ways" else 1):
      raise loop.ConfigError(f"--{name}={value} must be at least {2 if name == 'ways' else 1}.")
  # Checked before any work: the result is appended to WORKDIR/results.jsonl
  # before it is printed, so nothing is printed that was not recorded.
  workdir = loop.check_writable_dir(FLAGS.workdir)
  cfg, learner, variables, step = restore.load_for_eval(workdir, FLAGS.step, FLAGS.learner_kwarg)
  ev = cfg.eval
  pick = lambda flag, default: default if flag is None else flag
  split = pick(FLAGS.split, ev.split)
  spec = builders.spec_from({"ways": pick(FLAGS.ways, ev.ways), "shots": pick(FLAGS.shots, ev.shots),
                             "queries": pick(FLAGS.queries, ev.queries)})
  extra = {"learner_kwargs": FLAGS.learner_kwarg} if FLAGS.learner_kwarg else {}
  if FLAGS.dataset or FLAGS.data_dir:
    data_cfg, split = cross_domain(cfg, restore.load_meta(workdir), FLAGS.dataset,
                                   FLAGS.data_dir, FLAGS.split)
    extra["dataset"] = data_cfg.name
    if FLAGS.data_dir:
      extra["data_dir"] = FLAGS.data_dir
    source = load_like_training(data_registry, data_cfg, split,
                                restore.load_meta(workdir).get("image_shape"))
  else:
    source = data_registry.load_split(cfg.data, split)
  result = evaluation.evaluate(learner, variables, source, spec,
                               pick(FLAGS.episodes, ev.episodes), pick(FLAGS.seed, ev.seed),
                               split=split, batching=cfg.train.get("task_batching", "auto"))
  result = {**result, **{k: v for k, v in extra.items() if k != "learner_kwargs"}}
  loop.append_result(workdir, {**result, "step": step, **extra})
  print(json.dumps(result), flush=True)


FOLDER_DATASETS = ("image_folder", "omniglot_folder")


def cross_domain(cfg, meta: dict, dataset: str | None, data_dir: str | None,
                 split: str | None):
  """(data config, split) of another dataset, at the trained image size and channels."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from fsl_jax.data import registry as data_registry  # pylint: disable=g-import-not-at-top
  data = ml_collections.ConfigDict(cfg.data.to_dict())
  name = dataset or cfg.data.name
  data_registry.DATASETS.get(name)  # an unknown name is refused with the known ones
  data.name = name
  shape = meta.get("image_shape")
  if shape:
    data.image_size = int(shape[0])
    data.grayscale = shape[-1] == 1
  if name in FOLDER_DATASETS:
    if not data_dir:
      raise ValueError(f"--dataset={name} reads a folder: pass --data_dir=FOLDER (class "
                       "folders of images, or a .zip of them).")
    split = split or "test"
    data[f"{split}_dir"] = data_dir
    return data, split
  data.data_dir = data_dir or ""
  return data, split or "test"


def load_like_training(data_registry, data_cfg, split, image_shape):
  """The split, its channels matched to the trained model's input (gray <-> RGB)."""
  from fsl_jax.data import sources  # pylint: disable=g-import-not-at-top
  source = data_registry.load_split(data_cfg, split)
  if image_shape:
    source = sources.match_channels(source, int(image_shape[-1]))
    if list(source.image_shape) != list(image_shape):
      raise sources.DataError(
          f"{data_cfg.name}/{split} gives {list(source.image_shape)} images but the model was "
          f"trained on {list(image_shape)}; this dataset does not resize to "
          "data.image_size.")
  return source


if __name__ == "__main__":
  app.run(common.friendly(main), flags_parser=common.parse_flags)
