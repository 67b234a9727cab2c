"""Bottleneck adapters and LoRA for the Marian/mBART encoder-decoder.

Adapters are a small pytree kept apart from the frozen base and merged into it
just before the forward pass, so gradients reach only the adapter and the base
stays bit-identical:

  * `pfeiffer` (Pfeiffer et al., 2021): one bottleneck after each FFN block.
  * `houlsby` (Houlsby et al., 2019): one after self-attention and one after
    the FFN block of every layer.
    A bottleneck is `h + up(act(down(h)))` on the sublayer output before the
    residual add, with `down` [D, D/r] and `up` [D/r, D]; `up` is zero at
    init, so the adapted model equals the base at step 0.
  * `lora` (`fsl_jax.peft.lora`): low-rank updates of the q and v projection
    kernels of every attention block (self and cross), B = 0 at init.

`AdapterBank` holds several named adapters on one base (add, activate,
switch) and saves/loads one adapter alone through `fsl_jax.peft.io`.

    bank = AdapterBank(cfg, base)
    bank.add("ntrex", AdapterSpec("pfeiffer", reduction_factor=16), key)
    params, acfg = bank.params()          # base + active adapter
    logits = seq2seq.forward(cfg, params, ids, mask, dec, adapter_cfg=acfg)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from fsl_jax.models.seq2seq import AdapterConfig, Params, Seq2SeqConfig
from fsl_jax.peft import io as peft_io
from fsl_jax.peft import lora
from fsl_jax.registry import Registry

QV_TARGETS = (r"(self_attn|encoder_attn)/(q_proj|v_proj)/kernel$",)


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
  method: str = "pfeiffer"
  reduction_factor: int = 16
  activation: str = "relu"
  lora_rank: int = 8
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = QV_TARGETS

  def __post_init__(self):
    METHODS.get(self.method)  # an unknown method names the registered ones

  def adapter_config(self) -> AdapterConfig | None:
    if self.method == "lora":
      return None
    return AdapterConfig(self.method, self.reduction_factor, self.activation)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["lora_targets"] = list(self.lora_targets)
    return d

  @classmethod
  def from_json(cls, d: dict) -> "AdapterSpec":
    d = dict(d)
    d["lora_targets"] = tuple(d.get("lora_targets", QV_TARGETS))
    return cls(**d)


def _bottleneck(key, d: int, r: int) -> dict:
  hidden = max(1, d // r)
  return {"down": {"kernel": jax.random.normal(key, (d, hidden)) * 0.01, "bias": jnp.zeros((hidden,))},
          "up": {"kernel": jnp.zeros((hidden, d)), "bias": jnp.zeros((d,))}}


@dataclasses.dataclass(frozen=True)
class _Bottlenecks:
  """Bottleneck adapters after the given sublayers of every layer (Pfeiffer / Houlsby)."""
  sublayers: tuple[str, ...]

  def init(self, key, cfg: Seq2SeqConfig, base: Params, spec: AdapterSpec) -> dict:
    del base
    tree = {}
    for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
      layers = []
      for _ in range(n):
        layer = {}
        for name in self.sublayers:
          key, sub = jax.random.split(key)
          layer[name] = _bottleneck(sub, cfg.d_model, spec.reduction_factor)
        layers.append(layer)
      tree[side] = {"layers": layers}
    return tree

  def apply(self, base, weights, spec, lspec):
    del lspec
    return _merge(base, weights), spec.adapter_config()


class _Lora:
  """Low-rank updates of the attention projections (spec.lora_targets), merged into the base."""

  def init(self, key, cfg, base, spec: AdapterSpec) -> dict:
    del cfg
    targets = {t: None for t in spec.lora_targets}
    lspec, factors = lora.init(key, base, targets, spec.lora_rank, spec.lora_alpha)
    return {"lora": factors, "_spec": lspec}

  def apply(self, base, weights, spec, lspec):
    del spec
    if lspec is None:
      raise ValueError("LoRA adapters need their static LoraSpec (tree['_spec'] from adapters.init).")
    return lora.merge(base, weights["lora"], lspec), None


# name -> an object with init(key, cfg, base, spec) and apply(base, weights, spec, lspec).
METHODS = Registry("adapter method")
METHODS.register("pfeiffer", _Bottlenecks(("adapter_ffn",)))
METHODS.register("houlsby", _Bottlenecks(("adapter_ffn", "adapter_attn")))
METHODS.register("lora", _Lora())


def init(key: jax.Array, cfg: Seq2SeqConfig, base: Params, spec: AdapterSpec) -> dict:
  """A fresh adapter tree for `spec` (identity at init)."""
  return METHODS.get(spec.method).init(key, cfg, base, spec)


def trainable(tree: dict) -> dict:
  """The arrays of an adapter tree (drops the static LoRA spec)."""
  return {k: v for k, v in tree.items() if k != "_spec"}


def _merge(base, extra):
  if isinstance(base, dict):
    out = dict(base)
    for k, v in extra.items():
      out[k] = _merge(base[k], v) if k in base else v
    return out
  if isinstance(base, list):
    return [_merge(b, e) for b, e in zip(base, extra)]
  return extra


def apply(base: Params, weights: dict, spec: AdapterSpec,
          lspec: lora.LoraSpec | None = None) -> tuple[Params, AdapterConfig | None]:
  """(params for `seq2seq` functions, static adapter config) of base + adapter.

  `weights` is `trainable(tree)`; for LoRA pass `lspec` (static, from `init`).
  """
  return METHODS.get(spec.method).apply(base, weights, spec, lspec)


class AdapterBank:
  """Several named adapters on one frozen base; one is active at a time."""

  def __init__(self, cfg: Seq2SeqConfig, base: Params):
    self.cfg, self.base = cfg, base
    self._adapters: dict[str, tuple[AdapterSpec, dict]] = {}
    self.active: str | None = None

  @property
  def names(self) -> list[str]:
    return list(self._adapters)

  def add(self, name: str, spec: AdapterSpec, key: jax.Array, activate: bool = True) -> dict:
    if name in self._adapters:
      raise ValueError(f"Adapter {name!r} exists; remove it first or choose another name.")
    self._adapters[name] = (spec, init(key, self.cfg, self.base, spec))
    if activate:
      self.activate(name)
    return self._adapters[name][1]

  def remove(self, name: str) -> None:
    self._get(name)
    del self._adapters[name]
    if self.active == name:
      self.active = None

  def activate(self, name: str | None) -> None:
    """Switches the active adapter; `None` runs the bare base."""
    if name is not None:
      self._get(name)
    self.active = name

  def _get(self, name):
    if name not in self._adapters:
      raise KeyError(f"No adapter named {name!r}; have {self.names}.")
    return self._adapters[name]

  def spec(self, name: str | None = None) -> AdapterSpec:
    return self._get(name or self.active)[0]

  def weights(self, name: str | None = None) -> dict:
    return trainable(self._get(name or self.active)[1])

  def set_weights(self, weights: dict, name: str | None = None) -> None:
    name = name or self.active
    spec, tree = self._get(name)
    new = dict(weights)
    if "_spec" in tree:
      new["_spec"] = tree["_spec"]
    self._adapters[name] = (spec, new)

  def params(self, name: str | None = "__active__") -> tuple[Params, AdapterConfig | None]:
    name = self.active if name == "__active__" else name
    if name is None:
      return self.base, None
    spec, tree = self._get(name)
    return apply(self.base, trainable(tree), spec, tree.get("_spec"))

  def save(self, path: str, name: str | None = None, extra_meta: dict | None = None) -> None:
    """Writes only the adapter's weights (+ spec and base shape) to one file."""
    name = name or self.active
    spec, tree = self._get(name)
    meta = {"name": name, "spec": spec.to_json(), "base": _base_meta(self.cfg),
            **(extra_meta or {})}
    if "_spec" in tree:
      meta["lora_spec"] = tree["_spec"].to_json()
    peft_io.save_tree(path, trainable(tree), meta)

  def load(self, path: str, name: str | None = None, activate: bool = True) -> str:
    """Adds the adapter saved at `path`; refuses one made for another base."""
    tree, meta = peft_io.load_tree(path)
    if meta.get("base") != _base_meta(self.cfg):
      raise ValueError(f"Adapter {path} was trained on base {meta.get('base')}, but this base is "
                       f"{_base_meta(self.cfg)}: load the matching base model.")
    spec = AdapterSpec.from_json(meta["spec"])
    tree = jax.tree.map(jnp.asarray, tree)
    if spec.method == "lora":
      tree = {"lora": _lora_paths(tree["lora"]),
              "_spec": lora.LoraSpec.from_json(meta["lora_spec"])}
    name = name or meta.get("name", "adapter")
    if name in self._adapters:
      raise ValueError(f"Adapter {name!r} exists; pass another name.")
    self._adapters[name] = (spec, tree)
    if activate:
      self.activate(name)
    return name


def _lora_paths(node, prefix="") -> dict:
  """Undoes io's nesting of LoRA factor keys ('a/b/kernel' -> {'a': {'b': ...}})."""
  if isinstance(node, dict) and set(node) == {"a", "b"}:
    return {prefix: node}
  out = {}
  items = node.items() if isinstance(node, dict) else enumerate(node)
  for k, v in items:
    out.update(_lora_paths(v, f"{prefix}/{k}" if prefix else str(k)))
  return out


def _base_meta(cfg: Seq2SeqConfig) -> dict:
  return {"family": cfg.family, "vocab_size": cfg.vocab_size, "d_model": cfg.d_model,
          "encoder_layers": cfg.encoder_layers, "decoder_layers": cfg.decoder_layers}
