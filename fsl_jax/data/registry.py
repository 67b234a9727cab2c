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
  root = data_cfg.get(f"{split}_dir") or ""
  if not root:
    raise DataError(f"Set --config.data.{split}_dir to the folder (or .zip) of the "
                    f"'{split}' split.")
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
  return folders.load_omniglot_folder(_folder_root(data_cfg, split),
                                      data_cfg.get("image_size", 28))


@DATASETS.register("image_folder")
def _image_folder(data_cfg, split: str) -> ClassImages:
  from fsl_jax.data import folders  # pylint: disable=g-import-not-at-top
  return folders.load_image_folder(_folder_root(data_cfg, split),
                                   data_cfg.get("image_size", 84),
                                   grayscale=bool(data_cfg.get("grayscale", False)))
