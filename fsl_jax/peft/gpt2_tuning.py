"""Parameter-efficient tuning of a frozen GPT-2: soft prompt, prefix or LoRA.

Tuned weights are one small pytree, the only thing differentiated and saved:
  {"new_rows": [N, D]}            special tokens' embeddings (vocab resize),
  + {"prompt": [P, D]}            method "prompt" (soft prompt),
  | {"prefix": {...}}             method "prefix" (per-layer key/value prefixes),
  | {"lora": {...}}               method "lora" (c_attn q/v slices + MLP).
The base params are passed to every step as a constant, so their leaves stay
bit-identical (tests check it). `assemble` builds the inference view. The
dialogue binary built on it is `fsl_jax.proj.dialogue.trainer`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsl_jax.models import gpt2, gpt2_generate, gpt2_hf
from fsl_jax.peft import io as peft_io
from fsl_jax.peft import lora, prefix, prompt, vocab
from fsl_jax.registry import Registry

# name -> init(key, config, base, **options) -> (tuned entries, LoraSpec | None)
METHODS = Registry("GPT-2 tuning method")


@dataclasses.dataclass(frozen=True)
class TuneSpec:
  """Static structure of the tuned weights (hashable: a jit static arg)."""
  method: str
  n_new_tokens: int = 0
  lora: lora.LoraSpec | None = None

  def to_json(self) -> dict:
    return {"method": self.method, "n_new_tokens": self.n_new_tokens,
            "lora": self.lora.to_json() if self.lora else None}

  @classmethod
  def from_json(cls, d: dict) -> "TuneSpec":
    return cls(d["method"], int(d["n_new_tokens"]),
               lora.LoraSpec.from_json(d["lora"]) if d.get("lora") else None)


def lora_targets(config: gpt2.Gpt2Config, mlp: bool = True) -> dict:
  """GPT-2's fused c_attn: the q and v column thirds; optionally the MLP."""
  d = config.n_embd
  targets: dict = {r"attn/c_attn/kernel$": [(0, d), (2 * d, 3 * d)]}
  if mlp:
    targets[r"mlp/c_fc/kernel$"] = None
    targets[r"mlp/c_proj/kernel$"] = None
  return targets


@METHODS.register("prompt")
def _init_prompt(key, config, base, *, n_prompt=20, prompt_init="vocab", prompt_text_ids=None,
                 **_):
  del config
  return {"prompt": prompt.init(key, base["wte"]["embedding"], n_prompt, prompt_init,
                                prompt_text_ids)}, None


@METHODS.register("prefix")
def _init_prefix(key, config, base, *, prefix_len=10, prefix_hidden=0, **_):
  del base
  return {"prefix": prefix.init(key, prefix_len, config.n_layer, config.n_embd, prefix_hidden)}, None


@METHODS.register("lora")
def _init_lora(key, config, base, *, lora_rank=8, lora_alpha=16.0, lora_mlp=True, **_):
  lspec, factors = lora.init(key, base, lora_targets(config, lora_mlp), lora_rank, lora_alpha)
  return {"lora": factors}, lspec


def init_tuned(key: jax.Array, config: gpt2.Gpt2Config, base: dict, method: str, *,
               n_new_tokens: int = 0, **options) -> tuple[TuneSpec, dict]:
  """(spec, tuned) for `method` (a METHODS name), with `n_new_tokens` new embedding rows.

  options: prompt: n_prompt, prompt_init (random | vocab | text), prompt_text_ids;
  prefix: prefix_len, prefix_hidden (0: no MLP); lora: lora_rank, lora_alpha, lora_mlp.
  Each method reads its own options and ignores the others'.
  """
  init = METHODS.get(method)
  k_rows, k_m = jax.random.split(key)
  tuned: dict = {}
  if n_new_tokens:
    tuned["new_rows"] = vocab.init_rows(k_rows, base["wte"]["embedding"], n_new_tokens)
  entries, lspec = init(k_m, config, base, **options)
  return TuneSpec(method, n_new_tokens, lspec), {**tuned, **entries}


def assemble(config: gpt2.Gpt2Config, base: dict, tuned: dict, spec: TuneSpec):
  """(params, soft_prompt_PxD | None, prefix_kv | None) for the resized model."""
  params = vocab.with_rows(base, tuned.get("new_rows"))
  if spec.lora is not None:
    params = lora.merge(params, tuned["lora"], spec.lora)
  soft = tuned.get("prompt")
  pkv = (prefix.to_kv(tuned["prefix"], config.n_layer, config.n_head, config.head_dim)
         if "prefix" in tuned else None)
  return params, soft, pkv


def tuned_logits(config, base, tuned, spec, ids_BxT, mask_BxT, rng=None):
  """Logits for ids_BxT under the tuned model (soft prompt positions dropped)."""
  params, soft, pkv = assemble(config, base, tuned, spec)
  model = gpt2.Gpt2(config)
  embeds = model.apply({"params": params}, ids_BxT, method=gpt2.Gpt2.embed)
  mask = mask_BxT.astype(jnp.bool_)
  p = 0
  if soft is not None:
    p = soft.shape[0]
    embeds, mask = prompt.prepend(soft, embeds, mask)
  kw = {} if rng is None else {"deterministic": False, "rngs": {"dropout": rng}}
  logits, _ = model.apply({"params": params}, inputs_embeds_BxTxD=embeds, attention_mask_BxT=mask,
                          positions_BxT=gpt2.positions_from_mask(mask), prefix_kv=pkv, **kw)
  return logits[:, p:]


tuned_logits_jit = jax.jit(tuned_logits, static_argnums=(0, 3))


def make_train_step(config: gpt2.Gpt2Config, spec: TuneSpec, tx: optax.GradientTransformation,
                    dropout_key: jax.Array | None = None):
  """A pure `step(state, batch, base) -> (state, {"loss"})` for `fsl_jax.train.loop`.

  state = {"tuned", "opt_state", "step"}; `base` (the frozen GPT-2 params) is
  an input of every step, never updated. With `dropout_key`, step s drops out
  with fold_in(dropout_key, s).
  """

  def loss_fn(tuned, base, batch, rng):
    logits = tuned_logits(config, base, tuned, spec, batch["inputs"], batch["mask"], rng)
    return gpt2.lm_loss(logits, batch["targets"], batch["weights"])

  def step(state, batch, base):
    rng = None if dropout_key is None else jax.random.fold_in(dropout_key, state["step"])
    loss, grads = jax.value_and_grad(loss_fn)(state["tuned"], base, batch, rng)
    updates, opt_state = tx.update(grads, state["opt_state"], state["tuned"])
    return {**state, "tuned": optax.apply_updates(state["tuned"], updates),
            "opt_state": opt_state}, {"loss": loss}

  return step


def eval_loss(config, base, tuned, spec, batch) -> float:
  logits = tuned_logits_jit(config, base, tuned, spec, batch["inputs"], batch["mask"])
  return float(gpt2.lm_loss(logits, batch["targets"], batch["weights"]))


def generate(config, base, tuned, spec, ids_BxT, mask_BxT, max_new_tokens: int, **kw):
  """Cached decoding with the tuned weights (LoRA merged once, outside the loop)."""
  params, soft, pkv = assemble(config, base, tuned, spec)
  return gpt2_generate.generate(config, params, ids_BxT, mask_BxT, max_new_tokens,
                                soft_prompt_PxD=soft, prefix_kv=pkv, **kw)


def export(tuned: dict) -> dict:
  """Inference form: prefix MLPs collapsed to their outputs."""
  out = dict(tuned)
  if "prefix" in out:
    out["prefix"] = prefix.materialize(out["prefix"])
  return out


def save_tuned(path: str, tuned: dict, spec: TuneSpec, config: gpt2.Gpt2Config,
               base_name: str, extra: dict | None = None) -> None:
  """Tuned weights alone, with what is needed to check the base on load."""
  meta = {"spec": spec.to_json(), "base": base_name, "base_vocab_size":
          config.vocab_size - spec.n_new_tokens, "n_embd": config.n_embd,
          "n_layer": config.n_layer, **(extra or {})}
  peft_io.save_tree(path, jax.device_get(export(tuned)), meta)


def load_tuned(path: str, base_config: gpt2.Gpt2Config
               ) -> tuple[dict, TuneSpec, gpt2.Gpt2Config, dict]:
  """(tuned, spec, resized config, meta); refuses a file made for another base."""
  tree, meta = peft_io.load_tree(path)
  spec = TuneSpec.from_json(meta["spec"])
  want = {"base_vocab_size": base_config.vocab_size, "n_embd": base_config.n_embd,
          "n_layer": base_config.n_layer}
  diff = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
  if diff:
    raise ValueError(f"{path} was tuned on base {meta.get('base')!r} with "
                     + ", ".join(f"{k}={a}" for k, (a, _) in diff.items())
                     + f"; this base has " + ", ".join(f"{k}={b}" for k, (_, b) in diff.items())
                     + ". Load it onto the base it was trained on.")
  if spec.lora is not None:  # factor keys are '/'-joined paths: undo the nesting
    def get(node, path):
      for part in path.split("/"):
        node = node[part]
      return node
    tree["lora"] = {p: get(tree["lora"], p) for p, _ in spec.lora.slices}
  tuned = jax.tree.map(jnp.asarray, tree)
  config = base_config.replace(vocab_size=base_config.vocab_size + spec.n_new_tokens)
  return tuned, spec, config, meta


def count_trainable(tuned: Any) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tuned)))


def meta_json(spec: TuneSpec) -> str:
  return json.dumps(spec.to_json(), sort_keys=True)


# ---------------------------------------------------------------- the binary

def load_base(model: str, seed: int = 0, tokenizer=None) -> tuple[gpt2.Gpt2Config, dict, str]:
  """A checkpoint dir / hub id, or 'random:<preset>': random init (smoke runs),
  its vocabulary and EOS sized to `tokenizer` when one is given."""
  if model.startswith("random:"):
    config = gpt2.Gpt2Config.preset(model.split(":", 1)[1])
    if tokenizer is not None:
      config = config.replace(vocab_size=len(tokenizer),
                              eos_token_id=int(tokenizer.eos_token_id))
    return config, gpt2.init_params(config, jax.random.key(seed)), model
  config, params = gpt2_hf.from_pretrained(model)
  return config, params, model


def load_tokenizer(name: str):
  import transformers  # pylint: disable=import-outside-toplevel
  try:
    return transformers.AutoTokenizer.from_pretrained(name)
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f"Could not load a tokenizer from {name!r} ({type(e).__name__}: {e}). Set "
        f"--config.tokenizer to a local tokenizer folder (e.g. ../shared/data/tokenizers/gpt2) "
        f"or a hub id when online.") from e


def default_lr(method: str) -> float:
  """Learning rates that trained each method well on the dialogue task (docs/gpt2.md)."""
  return {"prompt": 0.03, "prefix": 5e-3, "lora": 2e-3}[method]
