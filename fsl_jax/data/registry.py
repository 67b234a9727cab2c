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
      cache_dir=data_cfg.get("cache_dir") or None)
