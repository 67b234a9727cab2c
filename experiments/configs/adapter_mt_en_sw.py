r"""English->Swahili translation: base training, adapters / LoRA, back-translation.

    python -m experiments.adapter_tune --config=experiments/configs/adapter_mt_en_sw.py:VARIANT \
        --workdir=DIR [--config.model=DIR_OR_HUB_ID] [--config.method=pfeiffer|houlsby|lora|full]

Variants (after ':'):
  (none)      adapt `config.model` (e.g. Helsinki-NLP/opus-mt-en-sw) to NTREX-128:
              1,000 training pairs, the remaining 997 lines held out for BLEU/chrF
  runlocal    seconds: tiny scratch model, a few steps (smoke tests; set train/test)
  base_cpu    a small Marian-shaped en->sw base from scratch on en_sw_lafand/train,
              bounded for a 2-core CPU (writes DIR/model for later adapter runs)
  reverse_cpu the same for sw->en (the back-translation model)
  ntrex       alias of the default (adapter tuning toward NTREX-128)

Data paths default to ../shared/data/translation (FSL_JAX_SHARED overrides ../shared).
"""

import os

import ml_collections

SHARED = os.environ.get("FSL_JAX_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared"))
DATA = os.path.join(SHARED, "data", "translation")
NTREX = os.path.join(DATA, "en_sw_ntrex128")
NTREX_PAIRS = f"{NTREX}/newstest2019-src.eng.txt,{NTREX}/newstest2019-ref.swa.txt"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = "Helsinki-NLP/opus-mt-en-sw"  # HF dir / hub id, or "scratch"
  c.method = "pfeiffer"                   # pfeiffer | houlsby | lora | full
  c.src_lang = ""                         # mBART only, e.g. en_XX
  c.tgt_lang = ""                         # mBART only, e.g. sw_KE (forced BOS)
  # NTREX-128: the first 1,000 aligned lines train, the rest are held out.
  c.train = f"{NTREX_PAIRS}@0:1000"        # 'src,tgt' files | 'prefix:en,swa' | .tsv, @lo:hi slice
  c.test = f"{NTREX_PAIRS}@1000:"
  c.max_train_pairs = 0                   # 0 = all
  c.max_test_pairs = 0
  c.bt_pairs = ""                         # TSV from experiments.back_translate
  c.bt_ratio = 1.0                        # synthetic pairs per real pair
  c.bt_tag = ""                           # e.g. "<BT>" prefixed to synthetic sources

  c.reduction_factor = 16
  c.adapter_activation = "relu"
  c.lora_rank = 8
  c.lora_alpha = 16.0
  c.dropout_adapters = False              # dropout inside the frozen base while tuning

  c.steps = 1000
  c.batch_size = 32
  c.optimizer = ml_collections.ConfigDict()  # fsl_jax.train.optim
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.b2 = 0.98
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "cosine"  # linear warm-up, cosine decay to end_fraction x the rate
  c.optimizer.warmup_steps = 100
  c.optimizer.end_fraction = 0.1
  c.optimizer.grad_clip = 1.0
  c.label_smoothing = 0.1
  c.dropout = 0.1                         # full training only
  c.max_len = 128
  c.log_every = 50
  c.profile_steps = ""  # "A:B": a jax.profiler trace of steps A+1..B in WORKDIR/profile
  c.checkpoint_every = 200
  c.keep_checkpoints = 1

  c.num_beams = 4
  c.length_penalty = 1.0
  c.max_new_tokens = 128
  c.eval_batch_size = 32
  c.eval_base = True                      # also score the base before tuning

  c.scratch = ml_collections.ConfigDict()
  c.scratch.vocab_size = 8000
  c.scratch.d_model = 256
  c.scratch.layers = 3
  c.scratch.heads = 4
  c.scratch.ffn_dim = 1024
  c.scratch.max_positions = 256
  c.scratch.dropout = 0.1

  if arg in (None, "", "ntrex"):
    return c
  if arg == "runlocal":
    c.model = "scratch"
    c.method = "full"
    c.scratch.update(vocab_size=200, d_model=32, layers=1, heads=2, ffn_dim=64, max_positions=64)
    c.steps, c.batch_size, c.log_every, c.checkpoint_every = 6, 4, 2, 3
    c.max_len, c.max_new_tokens, c.num_beams, c.eval_batch_size = 32, 8, 2, 4
    c.optimizer.warmup_steps, c.optimizer.learning_rate = 2, 3e-3
    return c
  if arg in ("base_cpu", "reverse_cpu"):
    c.model, c.method, c.eval_base = "scratch", "full", False
    lafand = os.path.join(DATA, "en_sw_lafand")
    if arg == "base_cpu":
      c.train, c.test = f"{lafand}/train:en,swa", f"{NTREX_PAIRS}@1000:"
    else:
      c.train, c.test = f"{lafand}/train:swa,en", f"{lafand}/dev:swa,en"
      c.max_test_pairs = 200
    # Sized for ~10 minutes on a shared 2-core CPU (d256 x 3 layers ran at >2 s/step there).
    c.scratch.update(vocab_size=4000, d_model=128, layers=2, heads=4, ffn_dim=512)
    c.steps, c.batch_size = 800, 24
    c.optimizer.learning_rate, c.optimizer.warmup_steps = 1e-3, 100
    c.max_len, c.max_new_tokens, c.eval_batch_size = 48, 64, 64
    return c
  raise ValueError(f"Unknown variant {arg!r}: use runlocal, base_cpu, reverse_cpu or ntrex.")
