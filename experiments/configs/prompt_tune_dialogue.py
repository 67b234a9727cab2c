"""Prompt / prefix / LoRA tuning of GPT-2 on few-shot SGD dialogues.

  --config=experiments/configs/prompt_tune_dialogue.py            real gpt2 (hub, online)
  --config=experiments/configs/prompt_tune_dialogue.py:runlocal   tiny random-init model,
      the shared GPT-2 tokenizer, seconds on a CPU (smoke runs, tests)
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.model = "gpt2"  # hub id, local save_pretrained dir, or random:<preset>
  c.tokenizer = ""  # default: the model's own (hub id / dir)
  c.data = "../shared/data/dialogue/sgd_dev"  # SGD folder (dialogues_*.json) or a .jsonl
  c.method = "prompt"  # prompt | prefix | lora
  c.seed = 0

  c.n_train = 300  # few-shot: a few hundred exchanges
  c.n_eval = 100
  c.max_context_turns = 3
  c.max_len = 128  # training tokens per example (context cut from the left)
  c.prompt_len = 96  # generation context tokens (left padded)
  c.max_new_tokens = 40
  c.decode = "greedy"  # greedy | beam | sample
  c.num_beams = 4
  c.eval_batch_size = 16

  c.n_prompt = 20
  c.prompt_init = "vocab"  # random | vocab | text
  c.prompt_text = ""
  c.prefix_len = 10
  c.prefix_hidden = 512  # 0: no reparameterisation MLP
  c.lora_rank = 8
  c.lora_alpha = 16.0
  c.train_new_rows = True  # train the <customer>/<system> embeddings

  c.num_steps = 600
  c.batch_size = 8
  c.dropout = 0.1
  c.optimizer = ml_collections.ConfigDict()  # fsl_jax.train.optim
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 0.0  # 0: the method's default (prompt 3e-2, prefix 5e-3, lora 2e-3)
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 30  # linear warm-up from 0
  c.optimizer.weight_decay = 0.0
  c.log_every = 50
  c.profile_steps = ""  # "A:B": a jax.profiler trace of steps A+1..B in WORKDIR/profile
  c.checkpoint_every = 100
  c.keep_checkpoints = 2

  if arg == "runlocal":
    c.model = "random:gpt2-tiny"
    c.tokenizer = "../shared/data/tokenizers/gpt2"
    c.n_train, c.n_eval = 32, 16
    c.max_len, c.prompt_len, c.max_new_tokens = 64, 48, 12
    c.n_prompt, c.prefix_len, c.prefix_hidden = 8, 4, 32
    c.num_steps, c.batch_size, c.checkpoint_every, c.log_every = 6, 4, 3, 2
    c.optimizer.warmup_steps = 1
    c.eval_batch_size = 8
    c.dropout = 0.0
  elif arg:
    raise ValueError(f"Unknown config arg {arg!r}; use runlocal or nothing.")
  return c
