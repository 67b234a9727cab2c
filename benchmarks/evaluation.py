r"""Few-shot evaluation: embedding each image once against embedding it per episode.

    python benchmarks/evaluation.py [--model=resnet12 --image_size=32]
        [--classes=40 --per_class=80] [--ways=5 --shots=1 --queries=15]
        [--episodes=1000 --per_episode_episodes=100]

`evaluation.Evaluator` evaluates a metric learner (ProtoNet here) by
embedding every image of the split once and drawing the episodes over the
embeddings; learners that adapt per episode embed each episode's images.
On a random uint8 split of the given shape (the defaults are Tiny ImageNet's
40 novel classes x 80 images at the ResNet-12 cpu60 input) this prints one
JSON line: the seconds of a `--episodes` evaluation each way (the
per-episode one timed on `--per_episode_episodes` and scaled, as it is
linear in the episodes), both after compilation, their ratio, and whether
the two gave the same accuracy on the episodes both ran.
"""

import json
import time

from absl import app
from absl import flags
import jax
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet12", "Backbone name.")
flags.DEFINE_integer("image_size", 32, "")
flags.DEFINE_integer("classes", 40, "Classes in the split.")
flags.DEFINE_integer("per_class", 80, "Images per class.")
flags.DEFINE_integer("ways", 5, "")
flags.DEFINE_integer("shots", 1, "")
flags.DEFINE_integer("queries", 15, "")
flags.DEFINE_integer("episodes", 1000, "Episodes of the embed-once evaluation.")
flags.DEFINE_integer("per_episode_episodes", 100,
                     "Episodes timed per episode (scaled to --episodes).")
flags.DEFINE_string("learner", "protonet", "protonet (both paths timed), or finetune (P>M>F: "
                    "fine-tuning per episode, so only the per-episode path).")
flags.DEFINE_integer("finetune_steps", 50, "With --learner=finetune: SGD steps per episode.")


def main(argv):
  del argv
  from fsl_jax import meta, models  # pylint: disable=g-import-not-at-top
  from fsl_jax.data.episodes import EpisodeSpec  # pylint: disable=g-import-not-at-top
  from fsl_jax.data.sources import ClassImages  # pylint: disable=g-import-not-at-top
  from fsl_jax.train import evaluation  # pylint: disable=g-import-not-at-top
  from fsl_jax.train.builders import dummy_episode  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  shape = (FLAGS.classes, FLAGS.per_class, FLAGS.image_size, FLAGS.image_size, 3)
  src = ClassImages(rng.integers(0, 256, shape, dtype=np.uint8),
                    np.full(FLAGS.classes, FLAGS.per_class, np.int32),
                    [str(c) for c in range(FLAGS.classes)])
  spec = EpisodeSpec(FLAGS.ways, FLAGS.shots, FLAGS.queries)
  kwargs = {"steps": FLAGS.finetune_steps} if FLAGS.learner == "finetune" else {}
  learner = meta.get(FLAGS.learner, model=models.get(FLAGS.model), **kwargs)
  variables = learner.init(jax.random.PRNGKey(0), dummy_episode(src.image_shape, spec))
  row = {"model": FLAGS.model, "learner": FLAGS.learner, "image_size": FLAGS.image_size,
         "split": list(shape[:2]), "ways": FLAGS.ways, "shots": FLAGS.shots,
         "queries": FLAGS.queries, "episodes": FLAGS.episodes,
         "devices": f"{jax.device_count()}x {jax.default_backend()}", **kwargs}
  if FLAGS.learner == "finetune":  # each episode fine-tunes its own copy: no embed-once path
    ev = evaluation.Evaluator(learner, src, spec, FLAGS.per_episode_episodes, seed=0)
    ev(variables)  # compiles
    t = time.perf_counter()
    ev(variables)
    row["per_episode_s"] = round((time.perf_counter() - t) * FLAGS.episodes
                                 / FLAGS.per_episode_episodes, 2)
    print(json.dumps(row), flush=True)
    return
  results = {}
  for embed_once, episodes in ((True, FLAGS.episodes), (False, FLAGS.per_episode_episodes)):
    ev = evaluation.Evaluator(learner, src, spec, episodes, seed=0, embed_once=embed_once)
    ev(variables)  # compiles
    t = time.perf_counter()
    results[embed_once] = ev(variables)
    seconds = (time.perf_counter() - t) * FLAGS.episodes / episodes
    row["embed_once_s" if embed_once else "per_episode_s"] = round(seconds, 2)
  row["speedup"] = round(row["per_episode_s"] / row["embed_once_s"], 1)
  small = evaluation.Evaluator(learner, src, spec, FLAGS.per_episode_episodes, seed=0,
                               embed_once=True)(variables)
  row["same_accuracy"] = small["accuracy"] == results[False]["accuracy"]
  print(json.dumps(row), flush=True)


if __name__ == "__main__":
  app.run(main)
