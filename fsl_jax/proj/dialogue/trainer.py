"""`experiments.prompt_tune`: tune a soft prompt, prefix or LoRA of a frozen GPT-2
on few-shot dialogue exchanges, then generate replies and score them with BLEU.

Runs on the shared harness (`fsl_jax.train.loop`): resume, preemption,
metrics and results as every binary. The state is
`{"tuned": ..., "opt_state": ..., "step": ...}`; the frozen base is the
step's `inputs` (never donated, never checkpointed: its leaves stay
bit-identical).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsl_jax.peft import vocab
from fsl_jax.peft import gpt2_tuning
from fsl_jax.proj.dialogue import data as dialogue
from fsl_jax.train import loop, optim
from fsl_jax.train import metrics as metrics_lib

BINARY = "prompt_tune"
# Generation-only keys may change when resuming; everything else shapes training.
RESUMABLE = ("eval_batch_size", "decode", "num_beams", "max_new_tokens", "prompt_len")


def freeze_keys(tx: optax.GradientTransformation, frozen: set[str], tree_keys
                ) -> optax.GradientTransformation:
  """tx on every top-level entry of the tuned dict but `frozen` (those get zero updates)."""
  if not frozen:
    return tx
  labels = {k: "frozen" if k in frozen else "tuned" for k in tree_keys}
  return optax.multi_transform(
      {"tuned": tx, "frozen": optax.set_to_zero()},
      lambda tuned: {k: jax.tree.map(lambda _: labels[k], v) for k, v in tuned.items()})


def train_and_evaluate(config, workdir: str) -> dict:
  """Tunes (resumable), generates for held-out contexts, scores BLEU; returns the result."""
  import sacrebleu  # pylint: disable=import-outside-toplevel

  gpt2_tuning.METHODS.get(config.method)  # an unknown method fails before anything loads
  lcfg = loop.LoopConfig.from_config(config, steps="num_steps")
  lr = float(config.optimizer.learning_rate or gpt2_tuning.default_lr(config.method))
  resumable = RESUMABLE + (() if optim.schedule_depends_on_steps(config.optimizer)
                           else ("num_steps",))
  harness = loop.Harness(config, workdir, binary=BINARY, loop=lcfg, resumable=resumable,
                         meta={"method": config.method, "model": config.model})

  exchanges = dialogue.read(config.data, config.max_context_turns)
  tok_name = config.tokenizer or (config.model if not config.model.startswith("random:")
                                  else "gpt2")
  tokenizer = gpt2_tuning.load_tokenizer(tok_name)
  base_config, base, base_name = gpt2_tuning.load_base(config.model, config.seed, tokenizer)
  eos_id = base_config.eos_token_id
  special = vocab.add_special_tokens(tokenizer, dialogue.SPECIAL_TOKENS)
  n_new = max(0, len(tokenizer) - base_config.vocab_size)
  if max(special) >= base_config.vocab_size + n_new:
    raise ValueError(f"Special token ids {special} exceed the resized vocabulary.")
  cfg = base_config.replace(vocab_size=base_config.vocab_size + n_new,
                            dropout=float(config.dropout))
  train_ex, eval_ex = dialogue.split_by_dialogue(exchanges, config.n_train, config.n_eval,
                                                 config.seed)
  train = dialogue.batch_arrays(tokenizer, train_ex, config.max_len, eos_id, eos_id)

  text_ids = tokenizer(config.prompt_text)["input_ids"] if config.prompt_text else None
  spec, tuned = gpt2_tuning.init_tuned(
      jax.random.key(config.seed + 1), base_config, base, config.method, n_new_tokens=n_new,
      n_prompt=config.n_prompt, prompt_init=config.prompt_init, prompt_text_ids=text_ids,
      prefix_len=config.prefix_len, prefix_hidden=config.prefix_hidden,
      lora_rank=config.lora_rank, lora_alpha=config.lora_alpha)
  frozen = set() if config.train_new_rows else {"new_rows"} & set(tuned)
  if frozen:
    metrics_lib.log("New token rows stay at their initialisation (train_new_rows=False).")
  tx = freeze_keys(optim.make_optimizer(config.optimizer, lcfg.steps, lr), frozen, tuned)
  dropout_key = jax.random.key(config.seed + 2) if config.dropout > 0 else None
  step = gpt2_tuning.make_train_step(cfg, spec, tx, dropout_key)

  n = train["inputs"].shape[0]

  def batches(s):  # step s's batch depends only on (seed, s): resume is exact
    idx = np.random.default_rng([config.seed, s]).choice(n, config.batch_size,
                                                         replace=n < config.batch_size)
    return {k: v[idx] for k, v in train.items()}

  state = {"tuned": tuned, "opt_state": tx.init(tuned), "step": jnp.zeros((), jnp.int32)}
  state = harness.train(state, step, inputs=base, batches=batches,
                        items_per_step=config.batch_size, items="examples")
  tuned = state["tuned"]

  tuned_path = os.path.join(harness.workdir, "tuned.safetensors")
  gpt2_tuning.save_tuned(tuned_path, tuned, spec, cfg, base_name, {"method": config.method})
  eval_batch = dialogue.batch_arrays(tokenizer, eval_ex, config.max_len, eos_id, eos_id)
  eval_nll = gpt2_tuning.eval_loss(cfg, base, tuned, spec,
                                 {k: jnp.asarray(v) for k, v in eval_batch.items()})
  ids, mask = dialogue.prompt_arrays(tokenizer, eval_ex, config.prompt_len, eos_id)
  hyps = []
  for i in range(0, len(eval_ex), config.eval_batch_size):
    sl = slice(i, i + config.eval_batch_size)
    b_ids, b_mask = ids[sl], mask[sl]
    pad = config.eval_batch_size - b_ids.shape[0]  # one compiled shape
    if pad:
      b_ids = np.concatenate([b_ids, np.repeat(b_ids[-1:], pad, 0)])
      b_mask = np.concatenate([b_mask, np.repeat(b_mask[-1:], pad, 0)])
    out = gpt2_tuning.generate(cfg, base, tuned, spec, b_ids, b_mask, config.max_new_tokens,
                             method=config.decode, num_beams=config.num_beams, eos_id=eos_id)
    hyps.extend(_decode(tokenizer, np.asarray(out)[:len(ids[sl])], eos_id))
  refs = [e.response for e in eval_ex]
  bleu = sacrebleu.corpus_bleu(hyps, [refs]).score
  with open(os.path.join(harness.workdir, "samples.jsonl"), "w") as f:
    for e, h in zip(eval_ex, hyps):
      f.write(json.dumps({"context": dialogue.format_context(e), "reference": e.response,
                          "hypothesis": h}) + "\n")
  final_loss = harness.last_metric("loss")
  return harness.finish({
      "method": config.method, "bleu": round(float(bleu), 4),
      "trainable_params": gpt2_tuning.count_trainable(tuned), "examples": len(eval_ex),
      "train_examples": len(train_ex), "steps": lcfg.steps,
      "final_train_loss": None if final_loss is None else round(final_loss, 4),
      "eval_loss": round(eval_nll, 4), "model": base_name,
      "tuned_file_bytes": os.path.getsize(tuned_path)})


def _decode(tokenizer, out_BxN: np.ndarray, eos_id: int) -> list[str]:
  texts = []
  for row in out_BxN:
    row = list(row)
    if eos_id in row:
      row = row[:row.index(eos_id)]
    texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
  return texts
