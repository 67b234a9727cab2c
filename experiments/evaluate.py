r"""Few-shot evaluation of the latest checkpoint in a workdir.

    python -m experiments.evaluate --workdir=DIR --ways=20 --shots=1 \
        --episodes=1000 [--split=test] [--queries=15] [--seed=1234] \
        [--learner_kwarg=eval_inner_steps=1 ...]

Prints one JSON line: {"split", "ways", "shots", "accuracy", "ci95", "episodes"}.
The episode set depends only on (split, ways, shots, queries, seed, episodes).
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
  source = data_registry.load_split(cfg.data, split)
  result = evaluation.evaluate(learner, variables, source, spec,
                               pick(FLAGS.episodes, ev.episodes), pick(FLAGS.seed, ev.seed),
                               split=split, batching=cfg.train.get("task_batching", "auto"))
  extra = {"learner_kwargs": FLAGS.learner_kwarg} if FLAGS.learner_kwarg else {}
  loop.append_result(workdir, {**result, "step": step, **extra})
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(common.friendly(main), flags_parser=common.parse_flags)
