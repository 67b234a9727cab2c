r"""ImageNet predictions and embeddings of images by a pretrained backbone.

    python -m experiments.predict --model=efficientnet_lite0 [--weights=PATH] \
        --images=DIR_OR_FILES [--topk=5] [--features=out.npz]

Prints one JSON line per image, in file order:

    {"file": "photos/cat.jpg", "top5": [["n02123045", "tabby", 0.61], ...]}

the k most probable of ImageNet-1k's classes (wnid, short name, softmax
probability; `fsl_jax.models.pretrained.imagenet_classes`). `--images` takes
files, folders (every image under them, sorted by path) and .zip files (every
image inside), comma-separated. `--features=FILE.npz` also writes
`features` [N, D] float32 (the pooled features the classifier reads, 1280-d
for EfficientNet-Lite0 and MobileNetV2) and `files` [N] (the same names as
the JSON lines).

Each image is decoded as RGB and resized (whole, not cropped; antialiased
bilinear, Pillow) to the weight file's input size (224), then normalised as
the file expects (EfficientNet-Lite0: (x - 127) / 128; torchvision:
ImageNet's mean and std) inside the model (`pretrained.Pretrained`).
`--weights=random` with any backbone (e.g. conv4, which has no classifier:
`--topk=0 --features=...`) gives untrained embeddings, for baselines and tests.
"""

import json
import os
import sys
import time

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Backbone with ImageNet weights: efficientnet_lite0 (the "
                    "installed package's file), mobilenet_v2 (needs --weights), or any backbone "
                    "with --weights=random.")
flags.DEFINE_string("weights", None, "Its weight file (default: the package's, for "
                    "efficientnet_lite0), or 'random'.")
flags.DEFINE_list("images", None, "Image files, folders of images and .zip files, "
                  "comma-separated.")
flags.DEFINE_integer("topk", 5, "Classes printed per image (0: none; needs --features).")
flags.DEFINE_string("features", None, "Write the embeddings here (.npz: features [N, D], files "
                    "[N]).")
flags.DEFINE_integer("image_size", None, "The model's input size (default: its weight file's, "
                     "224).")
flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")
flags.mark_flags_as_required(["model", "images"])

# Images decoded at a time (224x224 RGB: 150 KB each).
DECODE_CHUNK = 256


def main(argv):
  del argv
  common.setup()
  if FLAGS.topk < 0 or FLAGS.topk > 1000:
    raise ValueError(f"--topk={FLAGS.topk}: use 0 (no classes) to 1000.")
  if FLAGS.topk == 0 and not FLAGS.features:
    raise ValueError("--topk=0 prints nothing: pass --features=FILE.npz to write the embeddings, "
                     "or --topk=5.")
  if FLAGS.batch_size < 1:
    raise ValueError(f"--batch_size={FLAGS.batch_size} must be at least 1.")
  if FLAGS.image_size is not None and FLAGS.image_size < 8:
    raise ValueError(f"--image_size={FLAGS.image_size}: use at least 8 (224 for the weights).")
  if FLAGS.features and not FLAGS.features.endswith(".npz"):
    raise ValueError(f"--features={FLAGS.features}: name a .npz file (numpy.savez adds .npz "
                     "to any other name).")
  import contextlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fsl_jax.data import folders  # pylint: disable=g-import-not-at-top
  from fsl_jax.models import pretrained  # pylint: disable=g-import-not-at-top

  start = time.time()
  model, variables, facts = pretrained.load_backbone(FLAGS.model, FLAGS.weights,
                                                     classifier=FLAGS.topk > 0,
                                                     size=FLAGS.image_size)
  size = facts["image_size"] or 224

  def forward(v, x):
    if FLAGS.topk == 0:
      return None, model.apply(v, x, train=False)
    logits, state = model.apply(v, x, train=False, mutable=["intermediates"])
    return jax.nn.softmax(logits), state["intermediates"]["backbone"]["features"][0]

  forward = jax.jit(forward)
  features, names = [], []
  with contextlib.ExitStack() as stack:
    files = image_files(FLAGS.images, stack, folders)
    for lo in range(0, len(files), DECODE_CHUNK):
      chunk = files[lo:lo + DECODE_CHUNK]
      x = np.zeros((len(chunk), size, size, 3), np.uint8)
      folders.decode_files(chunk, size, out=x)
      for b in range(0, len(chunk), FLAGS.batch_size):
        part = x[b:b + FLAGS.batch_size]
        n = len(part)
        if n < FLAGS.batch_size and len(files) > FLAGS.batch_size:  # one compiled shape
          part = np.concatenate([part, np.zeros((FLAGS.batch_size - n,) + part.shape[1:],
                                                part.dtype)])
        probs, feats = forward(variables, part.astype(np.float32) / np.float32(255))
        feats = np.asarray(feats)[:n]
        if FLAGS.features:
          features.append(feats)
        for i, f in enumerate(chunk[b:b + n]):
          names.append(f.where)
          if probs is not None:
            print(json.dumps({"file": f.where, f"top{FLAGS.topk}": pretrained.top_classes(
                np.asarray(probs[i]), FLAGS.topk)}), flush=True)
  if FLAGS.features:
    out = np.concatenate(features) if features else np.zeros((0, 0), np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.features)), exist_ok=True)
    np.savez(FLAGS.features, features=out.astype(np.float32), files=np.asarray(names, str))
  print(f"predict: {len(names)} images, {facts['model']} ({facts['weights']}), "
        f"{time.time() - start:.1f} s", file=sys.stderr, flush=True)


def image_files(entries, stack, folders) -> list:
  """The `folders.ImageFile`s of --images' files, folders and .zips, in the order given."""
  import functools  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top
  files = []
  for entry in entries:
    if not entry:
      continue
    if not os.path.exists(entry):
      raise FileNotFoundError(f"--images: {entry} does not exist (pass image files, folders "
                              "or .zip files, comma-separated).")
    if os.path.isdir(entry) or zipfile.is_zipfile(entry):
      found = stack.enter_context(folders.list_images(entry))
      if not found:
        raise ValueError(f"--images: {entry} holds no images ({', '.join(folders.IMAGE_SUFFIXES)}).")
      files += found
    else:
      st = os.stat(entry)
      files.append(folders.ImageFile((os.path.basename(entry),), entry,
                                     (st.st_size, st.st_mtime_ns),
                                     functools.partial(_read, entry), entry))
  if not files:
    raise ValueError("--images names no files.")
  return files


def _read(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


if __name__ == "__main__":
  app.run(common.friendly(main), flags_parser=common.parse_flags)
