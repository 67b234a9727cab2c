"""`experiments.adapter_tune`: train a translation base from scratch, or tune
adapters / LoRA / all weights of one, then translate the test set and score it.

Reads parallel text (aligned files or TSV), optionally mixes in
back-translated pairs, builds or loads the base (`fsl_jax.proj.translation.tuning`),
trains on the shared harness (`fsl_jax.train.loop`: resume, preemption,
metrics, results), translates with batched beam search and scores with
sacreBLEU. The state is `{"trainable", "opt_state", "step"}`; a frozen base
is the step's `inputs` (never donated or checkpointed).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax.peft import adapters, freeze
from fsl_jax.proj.translation import tuning
from fsl_jax.proj.translation import data as td
from fsl_jax.train import loop, optim

BINARY = "adapter_tune"
# Evaluation-only keys may change when resuming; everything else shapes training.
RESUMABLE = ("eval_batch_size", "num_beams", "length_penalty", "max_new_tokens", "eval_base")
METHODS = ("full",) + tuple(adapters.METHODS.names())


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  if config.method not in METHODS:
    raise loop.ConfigError(f"method={config.method!r}: use one of {METHODS} (--config.method=...).")
  lcfg = loop.LoopConfig.from_config(config, steps="steps")
  resumable = RESUMABLE + (() if optim.schedule_depends_on_steps(config.optimizer)
                           else ("steps",))
  harness = loop.Harness(config, workdir, binary=BINARY, loop=lcfg, resumable=resumable,
                         meta={"method": config.method, "model": config.model})
  workdir = harness.workdir
  rng_np = np.random.default_rng(config.seed)
  # Every data file is read (and refused if empty) before a tokenizer trains.
  real = td.load_pairs(config.train)
  if config.max_train_pairs and len(real) > config.max_train_pairs:
    real = [real[i] for i in sorted(rng_np.permutation(len(real))[:config.max_train_pairs])]
  synthetic = td.load_pairs(config.bt_pairs) if config.get("bt_pairs") else []
  pairs = td.mix(real, synthetic, config.bt_ratio, rng_np, config.get("bt_tag") or None) \
      if synthetic else real
  test = td.load_pairs(config.test)
  if config.max_test_pairs:
    test = test[:config.max_test_pairs]

  cfg, base, tok, tok_dir = tuning.build_base(config, workdir, pairs)
  if config.method == "full":
    cfg = cfg.replace(dropout=config.dropout)
  src, tgt = td.encode_pairs(tok, pairs, config.max_len)
  sampler = td.BatchSampler(src, tgt, config.batch_size, cfg.pad_token_id, config.seed,
                            config.max_len)
  gen = tuning.generation_config(config, cfg, tok)

  result: dict[str, Any] = {"method": config.method}
  refs = [t for _, t in test]
  if config.eval_base and config.model != "scratch":
    hyps = tuning.translate(cfg, base, tok, [s for s, _ in test], gen, None,
                               config.eval_batch_size, config.max_len)
    result.update({f"base_{k}": v for k, v in tuning.score(hyps, refs).items()})

  key = jax.random.PRNGKey(config.seed)
  if config.method == "full":
    trainable, lspec, spec, frozen = base, None, None, None
  else:
    spec = adapters.AdapterSpec(config.method, config.reduction_factor, config.adapter_activation,
                                config.lora_rank, config.lora_alpha)
    tree = adapters.init(key, cfg, base, spec)
    trainable, lspec, frozen = adapters.trainable(tree), tree.get("_spec"), base
  merge = tuning.params_fn(config.method, spec, lspec)
  tx = optim.make_optimizer(config.optimizer, lcfg.steps)
  dropout = config.method == "full" or config.dropout_adapters
  step = tuning.make_train_step(cfg, merge, tx, float(config.label_smoothing),
                                   key if dropout else None)
  state = {"trainable": trainable, "opt_state": tx.init(trainable),
           "step": jnp.zeros((), jnp.int32)}
  state = harness.train(state, step, inputs=frozen, batches=sampler.batch,
                        items_per_step=config.batch_size, items="pairs")
  trainable = state["trainable"]

  params, acfg = merge(trainable, frozen)
  if config.method == "full":
    tuning.export_hf(os.path.join(workdir, "model"), cfg, params, tok_dir)
  else:
    bank = adapters.AdapterBank(cfg, base)
    bank.add("tuned", spec, key)  # the same init as above: the same LoRA spec
    bank.set_weights(trainable)
    bank.save(os.path.join(workdir, "adapter.safetensors"), "tuned",
              {"train": config.train, "steps": lcfg.steps})
  hyps = tuning.translate(cfg, params, tok, [s for s, _ in test], gen, acfg,
                             config.eval_batch_size, config.max_len)
  with open(os.path.join(workdir, "test_hyps.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(hyps) + "\n")
  result.update(tuning.score(hyps, refs))
  result.update({"trainable_params": freeze.count_params(trainable), "train_pairs": len(pairs),
                 "real_pairs": len(real), "synthetic_pairs": len(pairs) - len(real),
                 "test_pairs": len(test), "steps": lcfg.steps,
                 "final_loss": harness.last_metric("loss")})
  return harness.finish(result)
