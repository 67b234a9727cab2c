r"""Open-set recognition on a folder of people: enroll K images each, recognise or say unknown.

    python -m experiments.open_set --config=experiments/configs/open_set_faces.py[:runlocal] \
        --workdir=DIR [--config.data.root=DIR --config.enroll=K --config.known_fraction=0.5 \
        --config.model=NAME --config.weights=PATH|random --config.calibration=known|strangers]

The people with >= data.min_per_class images (default 10) are split by the
seed into known and unknown; `enroll` images of each known person form the
gallery; the threshold is set at FAR 1% on held-out data (never on the test
unknowns); the known people's other images and all images of the unknown
people are the probes (fsl_jax/proj/image_open_set.py states the protocol).
`--config.model=dlib` is the face_recognition library's dlib embedding (pip
install --no-deps face-recognition-models==0.3.0 dlib-bin==20.0.1.post1).

Prints one JSON line {"known_people", "unknown_people", "enroll",
"known_accuracy", "dir_at_far1", "auroc", "model", "threshold",
"far_measured", "seconds", ...}, also appended to DIR/results.jsonl. DIR
keeps gallery.npz (fsl_jax.openset.Gallery.load), gallery.json (threshold,
model, centre) and the embeddings (reused by later runs on the same files).
"""

import json

from absl import app, flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for the gallery, embeddings and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  common.setup()
  from fsl_jax.proj import image_open_set  # pylint: disable=g-import-not-at-top
  result = image_open_set.run(FLAGS.config, FLAGS.workdir)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(common.friendly(main), flags_parser=common.parse_flags)
