"""PyTorch checkpoints read into numpy without torch, and mapped onto Flax variables.

    sd = torch_weights.load("mobilenet_v2-7ebf99e0.pth", sha256="7ebf99e0")
    sd["features.0.0.weight"].shape        # (32, 3, 3, 3), a float32 np.ndarray

`load` reads both formats `torch.save` writes:
- zip (torch >= 1.6): `<name>/data.pkl` holds the pickled object, whose
  tensors point by persistent id ('storage', storage type, key, location,
  numel) at raw little-endian bytes in `<name>/data/<key>`;
- legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`): one stream
  of pickles, the magic number 0x1950a86a20f9469cfc6c, the protocol version
  1001, a sys_info dict (byte order, type sizes), the object with the same
  persistent ids (plus an old view field), the sorted list of storage keys,
  then for each key an int64 element count and the storage's bytes.
(torch/serialization.py, `_save` and `_legacy_save`.)

Reading is safe: the unpickler resolves only what a state_dict holds,
`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` / `_v3`,
`_rebuild_parameter(_with_state)`, the typed storage classes
(`torch.FloatStorage`, ...) and `torch.<dtype>`; any other global (a class,
`os.system`) is refused by name before anything runs. A tensor's view
(offset, sizes, strides) is checked against its storage before numpy sees it.

`variables_from_state_dict` builds Flax {'params', 'batch_stats'} from a
state_dict through a list of `Entry`s (torch key -> Flax path + layout),
checking every shape against the model's own, and refusing keys missing from
the checkpoint or left over in it, by name.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001


def _bfloat16():
  import ml_dtypes  # pylint: disable=import-outside-toplevel  (a JAX dependency)
  return np.dtype(ml_dtypes.bfloat16)


# torch's typed storage classes and dtypes, by the name pickles use, as numpy dtypes.
_STORAGE_DTYPES: dict[str, Callable[[], np.dtype]] = {
    "DoubleStorage": lambda: np.dtype(np.float64),
    "FloatStorage": lambda: np.dtype(np.float32),
    "HalfStorage": lambda: np.dtype(np.float16),
    "BFloat16Storage": _bfloat16,
    "LongStorage": lambda: np.dtype(np.int64),
    "IntStorage": lambda: np.dtype(np.int32),
    "ShortStorage": lambda: np.dtype(np.int16),
    "CharStorage": lambda: np.dtype(np.int8),
    "ByteStorage": lambda: np.dtype(np.uint8),
    "BoolStorage": lambda: np.dtype(np.bool_),
    "ComplexFloatStorage": lambda: np.dtype(np.complex64),
    "ComplexDoubleStorage": lambda: np.dtype(np.complex128),
    "UntypedStorage": lambda: np.dtype(np.uint8),  # bytes; _rebuild_tensor_v3 names the dtype
}
_TORCH_DTYPES: dict[str, Callable[[], np.dtype]] = {
    "float64": lambda: np.dtype(np.float64), "float32": lambda: np.dtype(np.float32),
    "float16": lambda: np.dtype(np.float16), "bfloat16": _bfloat16,
    "int64": lambda: np.dtype(np.int64), "int32": lambda: np.dtype(np.int32),
    "int16": lambda: np.dtype(np.int16), "int8": lambda: np.dtype(np.int8),
    "uint8": lambda: np.dtype(np.uint8), "uint16": lambda: np.dtype(np.uint16),
    "uint32": lambda: np.dtype(np.uint32), "uint64": lambda: np.dtype(np.uint64),
    "bool": lambda: np.dtype(np.bool_), "complex64": lambda: np.dtype(np.complex64),
    "complex128": lambda: np.dtype(np.complex128),
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
  name: str
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _DType:
  dtype: np.dtype


class _Storage:
  """One storage of the checkpoint: its dtype, element count and (once read) bytes."""

  def __init__(self, key: str, dtype: np.dtype, numel: int):
    self.key, self.dtype, self.numel = key, dtype, int(numel)
    self.array: np.ndarray | None = None
    self.byteorder = "<"

  def set_bytes(self, data: bytes, byteorder: str) -> None:
    need = self.numel * self.dtype.itemsize
    if len(data) < need:
      raise ValueError(f"storage {self.key!r} holds {len(data)} bytes; its {self.numel} "
                       f"{self.dtype} elements need {need}: the file is truncated or corrupt.")
    self.byteorder = "<" if byteorder == "little" else ">"
    dtype = self.dtype.newbyteorder(self.byteorder)
    self.array = np.frombuffer(data, dtype=dtype, count=self.numel)


@dataclasses.dataclass
class _Tensor:
  """A tensor as the pickle describes it: a view of a storage, materialised later."""
  storage: _Storage
  offset: int
  size: tuple
  stride: tuple
  dtype: np.dtype | None = None  # _rebuild_tensor_v3: the storage is bytes of this dtype

  def to_numpy(self) -> np.ndarray:
    data = self.storage.array
    if data is None:
      raise ValueError(f"storage {self.storage.key!r} was never read: the file is truncated.")
    if self.dtype is not None:
      data = data[: data.size // self.dtype.itemsize * self.dtype.itemsize].view(
          self.dtype.newbyteorder(self.storage.byteorder))
    size, stride, offset = tuple(int(s) for s in self.size), tuple(int(s) for s in self.stride), \
        int(self.offset)
    if len(size) != len(stride) or any(s < 0 for s in size + stride) or offset < 0:
      raise ValueError(f"tensor of storage {self.storage.key!r}: bad view size={size} "
                       f"stride={stride} offset={offset}.")
    if 0 not in size:
      last = offset + sum((n - 1) * s for n, s in zip(size, stride))
      if last >= data.size:
        raise ValueError(f"tensor of storage {self.storage.key!r} (size={size}, stride={stride}, "
                         f"offset={offset}) reaches element {last} of a storage of {data.size}.")
      view = np.lib.stride_tricks.as_strided(
          data[offset:], size, tuple(s * data.itemsize for s in stride), writeable=False)
    else:
      view = np.zeros(size, data.dtype)
    # A native-byte-order, contiguous copy that owns its memory.
    return np.array(view, dtype=view.dtype.newbyteorder("="), order="C", copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError(f"_rebuild_tensor_v2 got {type(storage).__name__}, "
                                 "not a storage.")
  return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
  tensor = _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                              backward_hooks, metadata)
  if not isinstance(dtype, _DType):
    raise pickle.UnpicklingError(f"_rebuild_tensor_v3 got dtype {dtype!r}.")
  tensor.dtype = dtype.dtype
  return tensor


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  return data


class _Unpickler(pickle.Unpickler):
  """Resolves only a state_dict's globals; storages come through `persistent_load`."""

  _ALLOWED = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
      ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
  }

  def __init__(self, file, storages: dict[str, _Storage], path: str):
    super().__init__(file)
    self.storages, self.path = storages, path

  def find_class(self, module: str, name: str):
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
      return _StorageType(name, _STORAGE_DTYPES[name]())
    if module == "torch" and name in _TORCH_DTYPES:
      return _DType(_TORCH_DTYPES[name]())
    raise pickle.UnpicklingError(
        f"{self.path}: refusing to load global {module}.{name}; a state_dict needs only "
        f"tensors in (Ordered)dicts. If you trust the file, load it with torch.load and "
        f"pass {{name: tensor.numpy()}} on.")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"{self.path}: unknown persistent id {pid!r:.80}.")
    _, storage_type, key, _location, numel = pid[:5]
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"{self.path}: storage {key!r} has type {storage_type!r}.")
    if len(pid) == 6 and pid[5] is not None:  # a storage view (torch < 0.4 files)
      raise pickle.UnpicklingError(f"{self.path}: storage views (torch < 0.4 files) "
                                   "are not supported; re-save the file with torch.save.")
    key = str(key)
    if key not in self.storages:
      self.storages[key] = _Storage(key, storage_type.dtype, numel)
    return self.storages[key]


def sha256_of(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def check_sha256(path: str, expected: str) -> None:
  """Raises unless the file's sha256 starts with `expected` (a full hex digest or a prefix).

  torchvision's file names carry the first 8 hex digits (mobilenet_v2-7ebf99e0.pth),
  which torch.hub checks the same way.
  """
  expected = expected.lower()
  got = sha256_of(path)
  if not got.startswith(expected):
    raise ValueError(f"sha256 mismatch for {path}: expected {expected}, got {got}. "
                     f"The file is corrupt or a different checkpoint.")


def _load_zip(path: str) -> tuple[Any, dict[str, _Storage]]:
  storages: dict[str, _Storage] = {}
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
      raise ValueError(f"{path}: a torch zip checkpoint holds one <name>/data.pkl; "
                       f"found {pkls or 'none'}.")
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
      byteorder = z.read(prefix + "byteorder").decode().strip()
    obj = _Unpickler(io.BytesIO(z.read(pkls[0])), storages, path).load()
    for key, storage in storages.items():
      member = f"{prefix}data/{key}"
      if member not in names:
        raise ValueError(f"{path}: storage {key!r} has no {member} in the archive.")
      storage.set_bytes(z.read(member), byteorder)
  return obj, storages


def _load_legacy(path: str) -> tuple[Any, dict[str, _Storage]]:
  storages: dict[str, _Storage] = {}
  with open(path, "rb") as f:
    header = lambda: _Unpickler(f, {}, path).load()
    try:
      magic = header()
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{path} is neither a torch zip checkpoint nor a legacy torch "
                       f"pickle ({type(e).__name__}: {e}).") from e
    if magic != LEGACY_MAGIC:
      raise ValueError(f"{path} is not a torch checkpoint: it starts with {magic!r:.40}, "
                       f"not torch's magic number {LEGACY_MAGIC:#x}.")
    protocol = header()
    if protocol != LEGACY_PROTOCOL:
      raise ValueError(f"{path}: legacy protocol {protocol}, only {LEGACY_PROTOCOL} is known.")
    sys_info = header()
    byteorder = "little" if sys_info.get("little_endian", True) else "big"
    obj = _Unpickler(f, storages, path).load()
    keys = header()
    if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
      raise ValueError(f"{path}: the storage key list {keys!r:.80} does not match the "
                       f"{len(storages)} storages its tensors use.")
    for key in keys:
      storage = storages[str(key)]
      count_bytes = f.read(8)
      if len(count_bytes) != 8:
        raise ValueError(f"{path}: truncated before storage {key!r}.")
      (count,) = struct.unpack("<q" if byteorder == "little" else ">q", count_bytes)
      if count != storage.numel:
        raise ValueError(f"{path}: storage {key!r} holds {count} elements; its tensors "
                         f"say {storage.numel}.")
      storage.set_bytes(f.read(count * storage.dtype.itemsize), byteorder)
  return obj, storages


def _materialise(obj, path: str) -> dict[str, np.ndarray]:
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict (a dict of "
                     f"tensors).")
  out = {}
  for name, value in obj.items():
    if not isinstance(value, _Tensor):
      nested = [k for k, v in obj.items() if isinstance(v, Mapping)]
      hint = (f"; pass key={nested[0]!r} for the state_dict nested in a training checkpoint"
              if nested else "")
      raise ValueError(f"{path}: entry {name!r} is not a tensor "
                       f"({type(value).__name__}){hint}.")
    out[str(name)] = value.to_numpy()
  return out


def load(path: str | os.PathLike, sha256: str | None = None,
         key: str | None = None) -> dict[str, np.ndarray]:
  """{name: np.ndarray} of the state_dict saved at `path` by `torch.save`, without torch.

  `sha256`: the expected digest (or its leading hex digits), checked first.
  `key`: the state_dict's entry in a nested checkpoint ({'state_dict': ...,
  'epoch': ...}). Arrays keep their dtype (bfloat16 as ml_dtypes.bfloat16)
  and shape, contiguous, in native byte order.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No checkpoint file at {path!r}.")
  if sha256:
    check_sha256(path, sha256)
  obj, _ = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
  if key is not None:
    if not isinstance(obj, Mapping) or key not in obj:
      have = list(obj) if isinstance(obj, Mapping) else type(obj).__name__
      raise KeyError(f"{path} has no entry {key!r}; it has {have}.")
    obj = obj[key]
  return _materialise(obj, path)


# ------------------------------------------------------------ state_dict -> Flax variables

@dataclasses.dataclass(frozen=True)
class Layout:
  """A torch tensor layout and its Flax counterpart: `to_flax(array)`, `to_torch(shape)`."""
  name: str
  to_flax: Callable[[np.ndarray], np.ndarray]
  to_torch: Callable[[tuple], tuple]


SAME = Layout("same", lambda a: a, tuple)
# Conv2d weight [O, I, kh, kw] -> Flax kernel [kh, kw, I, O] (a depthwise conv's I is 1).
CONV = Layout("conv", lambda a: a.transpose(2, 3, 1, 0), lambda s: (s[3], s[2], s[0], s[1]))
# A 1x1 Conv2d weight [O, I, 1, 1] -> a Dense kernel [I, O].
CONV1X1 = Layout("conv1x1", lambda a: a[:, :, 0, 0].T, lambda s: (s[1], s[0], 1, 1))
# Linear weight [O, I] -> Dense kernel [I, O].
LINEAR = Layout("linear", lambda a: a.T, lambda s: (s[1], s[0]))


@dataclasses.dataclass(frozen=True)
class Entry:
  torch_key: str
  flax_path: tuple[str, ...]  # (collection, module, ..., leaf)
  layout: Layout = SAME


def batch_norm_entries(torch_prefix: str, flax_path: tuple[str, ...]) -> list[Entry]:
  """A BatchNorm2d's weight/bias/running_mean/running_var -> flax scale/bias/mean/var."""
  return [Entry(f"{torch_prefix}.weight", ("params", *flax_path, "scale")),
          Entry(f"{torch_prefix}.bias", ("params", *flax_path, "bias")),
          Entry(f"{torch_prefix}.running_mean", ("batch_stats", *flax_path, "mean")),
          Entry(f"{torch_prefix}.running_var", ("batch_stats", *flax_path, "var"))]


def _flat(tree, prefix=()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _nest(flat: Mapping[tuple[str, ...], Any]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out


def variables_from_state_dict(state_dict: Mapping[str, np.ndarray], entries: Iterable[Entry],
                              model_variables, ignore: Iterable[str] = (),
                              ignore_suffixes: Iterable[str] = (".num_batches_tracked",),
                              what: str = "model") -> dict:
  """Flax variables from `state_dict` through `entries`, checked against the model's.

  `model_variables`: the model's variables or their shapes
  (`jax.eval_shape(model.init, ...)`). Every entry's torch key must be in the
  state_dict with the shape the model implies; every state_dict key must be
  an entry's, in `ignore` or end with one of `ignore_suffixes`; every model
  variable must be some entry's. Errors name the keys (and both shapes).
  Arrays come back as float32 np.ndarrays (the model's dtype).
  """
  entries = list(entries)
  want = _flat(model_variables)
  used = {e.torch_key for e in entries} | set(ignore)
  missing = [e.torch_key for e in entries if e.torch_key not in state_dict]
  unexpected = [k for k in state_dict if k not in used and
                not any(k.endswith(s) for s in ignore_suffixes)]
  problems = []
  if missing:
    problems.append(f"missing from the checkpoint: {_names(missing)}")
  if unexpected:
    problems.append(f"unexpected in the checkpoint: {_names(unexpected)}")
  uncovered = [p for p in want if p not in {e.flax_path for e in entries}]
  if uncovered:
    problems.append("model variables no key maps to: " +
                    _names(["/".join(p) for p in uncovered]))
  if problems:
    raise ValueError(f"The state_dict does not fit the {what}; " + "; ".join(problems) + ".")
  flat = {}
  for e in entries:
    if e.flax_path not in want:
      raise ValueError(f"{e.torch_key!r} maps to {'/'.join(e.flax_path)}, which the {what} "
                       f"does not have.")
    a = np.asarray(state_dict[e.torch_key])
    flax_shape = tuple(want[e.flax_path].shape)
    torch_shape = tuple(e.layout.to_torch(flax_shape))
    if a.shape != torch_shape:
      raise ValueError(f"Shape mismatch for {e.torch_key!r}: the checkpoint has "
                       f"{tuple(a.shape)}, the {what} expects {torch_shape} (Flax "
                       f"{'/'.join(e.flax_path)} {flax_shape}).")
    flat[e.flax_path] = np.ascontiguousarray(e.layout.to_flax(a), dtype=np.float32)
  return _nest(flat)


def model_shapes(model, x_shape: tuple[int, ...]):
  """The shapes of `model`'s variables for an input of `x_shape` (no computation)."""
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                           jax.numpy.zeros(x_shape, jax.numpy.float32),
                                           train=False))


def _names(keys: list[str], limit: int = 8) -> str:
  shown = ", ".join(repr(k) for k in keys[:limit])
  return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
