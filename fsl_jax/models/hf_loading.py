"""Reads Hugging Face checkpoints into flat numpy state dicts, for any port.

`resolve(path_or_id)` gives a local directory: the path itself when it exists,
else a hub snapshot through `huggingface_hub` (online only). `load_state_dict`
reads, in this order of preference,
  - `model.safetensors`,
  - sharded safetensors listed in `model.safetensors.index.json`,
  - `pytorch_model.bin` (needs torch; loaded with `weights_only=True`),
  - sharded `pytorch_model.bin.index.json`,
and returns `{name: np.ndarray}` with PyTorch names, untransposed. Ports map
names and layouts themselves (see `fsl_jax.models.gpt2_hf.params_from_state_dict`).
"""

from __future__ import annotations

import json
import os
from typing import Iterable

import numpy as np

SAFE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"


def resolve(path_or_id: str, allow_patterns: Iterable[str] | None = None) -> str:
  """A local directory holding the checkpoint; downloads a hub id when online."""
  path_or_id = os.fspath(path_or_id)
  if os.path.isdir(path_or_id):
    return path_or_id
  if os.path.exists(path_or_id):
    raise ValueError(f"{path_or_id!r} is a file; pass the directory that holds "
                     f"config.json and the weights.")
  if path_or_id.startswith((".", "/", "~")):
    raise FileNotFoundError(f"No checkpoint directory at {path_or_id!r}.")
  try:
    import huggingface_hub  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise FileNotFoundError(
        f"{path_or_id!r} is not a local directory and huggingface_hub is not "
        f"installed to fetch it as a hub id (pip install huggingface_hub).") from e
  patterns = list(allow_patterns or ["*.json", "*.safetensors", "*.txt", "*.model"])
  try:
    local = huggingface_hub.snapshot_download(path_or_id, allow_patterns=patterns)
    if not any(os.path.exists(os.path.join(local, n)) for n in (SAFE, SAFE_INDEX)):
      # Older repos only have PyTorch pickles.
      local = huggingface_hub.snapshot_download(
          path_or_id, allow_patterns=patterns + ["pytorch_model*.bin*"])
    return local
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f"{path_or_id!r} is not a local directory and downloading it from the "
        f"Hugging Face hub failed ({type(e).__name__}: {e}). Offline, pass a local "
        f"directory written by save_pretrained.") from e


def load_config(directory: str) -> dict:
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"No config.json in {directory!r}; is it a Hugging Face "
                            f"checkpoint directory (written by save_pretrained)?")
  with open(path) as f:
    return json.load(f)


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel
  with safe_open(path, framework="numpy") as f:
    dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
  if "BF16" in dtypes:  # numpy has no bfloat16: read through JAX (ml_dtypes arrays)
    from safetensors.flax import load_file as load_flax  # pylint: disable=import-outside-toplevel
    return {k: np.asarray(v) for k, v in load_flax(path).items()}
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  return dict(load_file(path))


def _torch_to_numpy(t) -> np.ndarray:
  import torch  # pylint: disable=import-outside-toplevel
  if t.dtype == torch.bfloat16:
    return t.to(torch.float32).numpy()
  return t.detach().cpu().numpy()


def _read_bin(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"{path} is a PyTorch pickle; reading it needs torch "
                      f"(pip install torch, CPU wheel) or a safetensors copy.") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {k: _torch_to_numpy(v) for k, v in state.items()}


def _read_index(directory: str, index_name: str, reader) -> dict[str, np.ndarray]:
  with open(os.path.join(directory, index_name)) as f:
    weight_map = json.load(f)["weight_map"]
  out: dict[str, np.ndarray] = {}
  for shard in sorted(set(weight_map.values())):
    shard_path = os.path.join(directory, shard)
    if not os.path.exists(shard_path):
      raise FileNotFoundError(f"{index_name} names shard {shard!r}, missing in {directory!r}.")
    out.update(reader(shard_path))
  return out


def load_state_dict(directory: str) -> dict[str, np.ndarray]:
  """All tensors of a checkpoint directory as numpy arrays, PyTorch names."""
  if os.path.exists(os.path.join(directory, SAFE)):
    return _read_safetensors(os.path.join(directory, SAFE))
  if os.path.exists(os.path.join(directory, SAFE_INDEX)):
    return _read_index(directory, SAFE_INDEX, _read_safetensors)
  if os.path.exists(os.path.join(directory, BIN)):
    return _read_bin(os.path.join(directory, BIN))
  if os.path.exists(os.path.join(directory, BIN_INDEX)):
    return _read_index(directory, BIN_INDEX, _read_bin)
  raise FileNotFoundError(
      f"No weights in {directory!r}: expected {SAFE}, {SAFE_INDEX}, {BIN} or {BIN_INDEX}.")


def strip_prefix(state: dict[str, np.ndarray], prefixes: Iterable[str]) -> dict[str, np.ndarray]:
  """Drops a leading wrapper name (e.g. 'transformer.') where present."""
  out = {}
  for k, v in state.items():
    for p in prefixes:
      if k.startswith(p):
        k = k[len(p):]
        break
    out[k] = v
  return out


def check_config_matches(ckpt_config, config, fields: Iterable[str], source: str) -> None:
  """Refuses a checkpoint whose config differs from the expected `config` in `fields`."""
  diff = {f: (getattr(ckpt_config, f), getattr(config, f)) for f in fields
          if getattr(ckpt_config, f) != getattr(config, f)}
  if diff:
    raise ValueError(f"Checkpoint {source!r} does not match config {config.name!r}: "
                     + ", ".join(f"{k}={a} in checkpoint vs {b} expected"
                                 for k, (a, b) in diff.items()))
