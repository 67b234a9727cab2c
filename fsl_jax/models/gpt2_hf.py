"""Hugging Face GPT-2 checkpoints -> `gpt2` config and params.

Reading files (safetensors, shards, `pytorch_model.bin`, hub ids) is
`fsl_jax.models.hf_loading`; this module maps names and checks sizes. GPT-2's
`Conv1D` weights are [in, out], the Dense layout, so nothing is transposed;
LayerNorm `weight` -> `scale`; `wte.weight` -> `wte/embedding` (the head is tied).

    config, params = gpt2_hf.from_pretrained("gpt2")  # hub id (online) or a directory
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fsl_jax.models import hf_loading
from fsl_jax.models.gpt2 import Gpt2Config

_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".crossattention.bias")


def config_from_hf(hf: dict, **kw) -> Gpt2Config:
  """Our config from a config.json dict; refuses other architectures."""
  model_type = hf.get("model_type")
  if model_type != "gpt2":
    raise ValueError(f"Checkpoint config has model_type={model_type!r}; this loader "
                     f"reads GPT-2 only (model_type='gpt2'). Use the port for "
                     f"{model_type!r} instead.")
  for flag, ok in (("scale_attn_by_inverse_layer_idx", False),
                   ("reorder_and_upcast_attn", False), ("add_cross_attention", False),
                   ("scale_attn_weights", True), ("tie_word_embeddings", True)):
    if hf.get(flag, ok) != ok:
      raise ValueError(f"GPT-2 checkpoint sets {flag}={hf[flag]!r}; only {ok!r} is supported.")
  eos = hf.get("eos_token_id", 50256)
  eos = eos[0] if isinstance(eos, list) else eos
  return Gpt2Config(**{
      "vocab_size": hf["vocab_size"], "n_positions": hf.get("n_positions", 1024),
      "n_embd": hf["n_embd"], "n_layer": hf["n_layer"], "n_head": hf["n_head"],
      "n_inner": hf.get("n_inner"), "activation": hf.get("activation_function", "gelu_new"),
      "layer_norm_epsilon": hf.get("layer_norm_epsilon", 1e-5),
      "dropout": hf.get("resid_pdrop", 0.1),
      "eos_token_id": 50256 if eos is None else int(eos),
      "name": hf.get("_name_or_path") or "gpt2", **kw})


def params_from_state_dict(state: dict[str, np.ndarray], config: Gpt2Config,
                           dtype=jnp.float32) -> dict:
  """Maps HF GPT-2 tensor names to our params; checks every shape."""
  state = hf_loading.strip_prefix(state, ["transformer."])
  state = {k: v for k, v in state.items() if not k.endswith(_IGNORED_SUFFIXES)}
  lm_head = state.pop("lm_head.weight", None)
  if not any(k.startswith("h.0.") for k in state):
    raise ValueError(f"Not a GPT-2 checkpoint: no 'h.0.*' tensors (found e.g. "
                     f"{sorted(state)[:5]}).")
  used = set()

  def take(name, shape):
    if name not in state:
      raise ValueError(f"GPT-2 checkpoint lacks {name!r}; is it a GPT-2 model with "
                       f"n_layer={config.n_layer}?")
    arr = state[name]
    if tuple(arr.shape) != tuple(shape):
      raise ValueError(f"{name} has shape {tuple(arr.shape)} but {config.name} "
                       f"(n_embd={config.n_embd}, n_layer={config.n_layer}, vocab="
                       f"{config.vocab_size}) expects {tuple(shape)}: the checkpoint is of "
                       f"another size; pass its own config.")
    used.add(name)
    return jnp.asarray(arr, dtype)

  d, f = config.n_embd, config.inner
  ln = lambda n: {"scale": take(f"{n}.weight", (d,)), "bias": take(f"{n}.bias", (d,))}
  # Conv1D weights are [in, out]: the Dense layout, no transpose.
  lin = lambda n, i, o: {"kernel": take(f"{n}.weight", (i, o)), "bias": take(f"{n}.bias", (o,))}
  params = {"wte": {"embedding": take("wte.weight", (config.vocab_size, d))},
            "wpe": {"embedding": take("wpe.weight", (config.n_positions, d))},
            "ln_f": ln("ln_f")}
  for i in range(config.n_layer):
    p = f"h.{i}"
    params[f"h_{i}"] = {
        "ln_1": ln(f"{p}.ln_1"), "ln_2": ln(f"{p}.ln_2"),
        "attn": {"c_attn": lin(f"{p}.attn.c_attn", d, 3 * d),
                 "c_proj": lin(f"{p}.attn.c_proj", d, d)},
        "mlp": {"c_fc": lin(f"{p}.mlp.c_fc", d, f), "c_proj": lin(f"{p}.mlp.c_proj", f, d)}}
  extra = sorted(set(state) - used)
  if extra:
    raise ValueError(f"GPT-2 checkpoint has tensors this config does not use: {extra[:6]}"
                     f"{' ...' if len(extra) > 6 else ''} (more layers than n_layer="
                     f"{config.n_layer}?).")
  if lm_head is not None and not np.array_equal(lm_head, state["wte.weight"]):
    raise ValueError("lm_head.weight differs from wte.weight; GPT-2 ties them and this "
                     "port supports tied heads only.")
  return params


def from_pretrained(path_or_id: str, config: Gpt2Config | None = None,
                    dtype: str = "float32", param_dtype=jnp.float32
                    ) -> tuple[Gpt2Config, dict]:
  """(config, params) from a save_pretrained directory or a hub id (online).

  When `config` is given (e.g. `Gpt2Config.medium()`), the checkpoint must
  match it; otherwise the checkpoint's own config.json is used.
  """
  directory = hf_loading.resolve(path_or_id)
  ckpt_config = config_from_hf(hf_loading.load_config(directory), dtype=dtype)
  if config is not None:
    fields = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "inner")
    hf_loading.check_config_matches(ckpt_config, config, fields, path_or_id)
    ckpt_config = config.replace(dtype=dtype)
  state = hf_loading.load_state_dict(directory)
  return ckpt_config, params_from_state_dict(state, ckpt_config, param_dtype)
