"""Datasets by name: `DATASETS.get(config.data.name)(config.data, split)`.

Each dataset factory takes the whole `config.data` (so a new dataset's keys
need no trainer change) and a split name, and returns a `ClassImages`.
A module registering a dataset joins by importing it (`config.imports`).
"""

from __future__ import annotations

from fsl_jax.data.sources import ClassImages, DataError
from fsl_jax.registry import Registry

DATASETS = Registry("dataset")


def load_split(data_cfg, split: str) -> ClassImages:
  """The `split` of the dataset `data_cfg.name` names."""
  return DATASETS.get(data_cfg.name)(data_cfg, split)


def _folder_root(data_cfg, split: str) -> str:
  """The folder (or .zip) of `split`: config.data.{train,val,test}_dir."""
  key = f"{split}_dir"
  if key not in data_cfg:
    raise DataError(f"Folder datasets have the splits train, val and test "
                    f"(config.data.train_dir, val_dir, test_dir), not '{split}': set "
                    f"data.train_split, data.val_split and eval.split to those names.")
  root = data_cfg.get(key) or ""
  if not root:
    raise DataError(f"Set --config.data.{key} to the folder (or .zip) of the '{split}' split"
                    + (" (or --config.data.val_split='' to train without validation)."
                       if split == "val" else "."))
  return root


@DATASETS.register("omniglot")
def _omniglot(data_cfg, split: str) -> ClassImages:
  from fsl_jax.data import omniglot  # pylint: disable=g-import-not-at-top
  return omniglot.load_omniglot(
      split, data_cfg.get("scheme", "lake"), data_cfg.get("image_size", 28),
      data_cfg.get("data_dir") or None, bool(data_cfg.get("download", False)))


@DATASETS.register("omniglot_folder")
def _omniglot_folder(data_cfg, split: str) -> ClassImages:
  from fsl_jax.data import folders  # pylint: disable=g-import-not-at-top
  return folders.load_omniglot_folder(
      _folder_root(data_cfg, split), data_cfg.get("image_size", 28),
      skip_bad_images=bool(data_cfg.get("skip_bad_images", False)))


@DATASETS.register("image_folder")
def _image_folder(data_cfg, split: str) -> ClassImages:
  from fsl_jax.data import folders  # pylint: disable=g-import-not-at-top
  return folders.load_image_folder(
      _folder_root(data_cfg, split), data_cfg.get("image_size", 84),
      grayscale=bool(data_cfg.get("grayscale", False)),
      skip_bad_images=bool(data_cfg.get("skip_bad_images", False)),
      cache_dir=data_cfg.get("cache_dir") or None,
      min_per_class=int(data_cfg.get("min_per_class") or 0))


# Natural-image few-shot benchmarks: uint8 images, class splits fixed in each module.
# `data.image_size` unset or 0 gives the dataset's native/customary size.
def _image_args(data_cfg) -> dict:
  return dict(grayscale=bool(data_cfg.get("grayscale", False)),
              cache_dir=data_cfg.get("cache_dir") or None)


@DATASETS.register("tiny_imagenet")
def _tiny_imagenet(data_cfg, split: str) -> ClassImages:
  from fsl_jax.data import tiny_imagenet  # pylint: disable=g-import-not-at-top
  return tiny_imagenet.load_tiny_imagenet(
      split, data_cfg.get("data_dir") or "", data_cfg.get("image_size") or 64,
      skip_bad_images=bool(data_cfg.get("skip_bad_images", False)), **_image_args(data_cfg))


def _cifar100_fewshot(dataset: str, data_cfg, split: str) -> ClassImages:
  from fsl_jax.data import cifar  # pylint: disable=g-import-not-at-top
  return cifar.load_cifar100_fewshot(
      dataset, split, data_cfg.get("image_size") or 32, data_cfg.get("data_dir") or None,
      download=bool(data_cfg.get("download", False)), **_image_args(data_cfg))


@DATASETS.register("cifar_fs")
def _cifar_fs(data_cfg, split: str) -> ClassImages:
  return _cifar100_fewshot("cifar_fs", data_cfg, split)


@DATASETS.register("fc100")
def _fc100(data_cfg, split: str) -> ClassImages:
  return _cifar100_fewshot("fc100", data_cfg, split)


@DATASETS.register("mini_imagenet")
def _mini_imagenet(data_cfg, split: str) -> ClassImages:
  from fsl_jax.data import mini_imagenet  # pylint: disable=g-import-not-at-top
  return mini_imagenet.load_mini_imagenet(
      split, data_cfg.get("data_dir") or "", data_cfg.get("image_size") or 84,
      imagenet_dir=data_cfg.get("imagenet_dir") or "",
      skip_bad_images=bool(data_cfg.get("skip_bad_images", False)), **_image_args(data_cfg))


@DATASETS.register("tiered_imagenet")
def _tiered_imagenet(data_cfg, split: str) -> ClassImages:
  from fsl_jax.data import mini_imagenet  # pylint: disable=g-import-not-at-top
  return mini_imagenet.load_tiered_imagenet(
      split, data_cfg.get("data_dir") or "", data_cfg.get("image_size") or 84,
      npz_bgr=bool(data_cfg.get("npz_bgr", True)),
      skip_bad_images=bool(data_cfg.get("skip_bad_images", False)), **_image_args(data_cfg))


@DATASETS.register("cub")
def _cub(data_cfg, split: str) -> ClassImages:
  from fsl_jax.data import cub  # pylint: disable=g-import-not-at-top
  return cub.load_cub(split, data_cfg.get("image_size") or 84, data_cfg.get("data_dir") or None,
                      download=bool(data_cfg.get("download", False)), **_image_args(data_cfg))


@DATASETS.register("text")
def _text(data_cfg, split: str) -> ClassImages:
  """Token ids packed as int32 [C, M, 2, L, 1] "images" (fsl_jax.data.text_episodes)."""
  from fsl_jax.data import text_episodes  # pylint: disable=g-import-not-at-top
  return text_episodes.load_split(data_cfg, split)
