"""Dialogue data for response generation: readers, formatting, loss masks.

An `Exchange` is a context (previous turns, oldest first, each with a speaker)
and the system response that follows. Two readers:

  - `read_sgd(dir_or_file)`: Schema-Guided Dialogue JSON (`dialogues_*.json`,
    a list of {"dialogue_id", "turns": [{"speaker": USER|SYSTEM, "utterance"}]}),
    one exchange per SYSTEM turn;
  - `read_jsonl(path)`: lines {"context": str | [str, ...], "response": str};
    a list context alternates customer/system ending with the customer.

`format_context` writes "<customer> hi <system> hello <customer> a table <system>";
`encode_example` appends the response and EOS and gives loss weights that are
1 on the response tokens and EOS only.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Iterable, Sequence

import numpy as np

CUSTOMER, SYSTEM = "<customer>", "<system>"
SPECIAL_TOKENS = (CUSTOMER, SYSTEM)


@dataclasses.dataclass(frozen=True)
class Exchange:
  context: tuple[tuple[str, str], ...]  # ((speaker, text), ...), speaker in {customer, system}
  response: str
  dialogue_id: str = ""


def _speaker(s: str) -> str:
  s = s.upper()
  if s in ("USER", "CUSTOMER"):
    return "customer"
  if s in ("SYSTEM", "AGENT"):
    return "system"
  raise ValueError(f"Unknown speaker {s!r}; expected USER or SYSTEM.")


def read_sgd(path: str, max_context_turns: int = 0) -> list[Exchange]:
  """Exchanges from an SGD folder (`dialogues_*.json`) or one such file."""
  files = (sorted(glob.glob(os.path.join(path, "dialogues_*.json")))
           if os.path.isdir(path) else [path])
  if not files or not os.path.exists(files[0]):
    raise FileNotFoundError(f"No SGD dialogues_*.json under {path!r}. Download the "
                            f"dstc8-schema-guided-dialogue repository and pass its dev/ folder.")
  out = []
  for f in files:
    with open(f) as fh:
      dialogues = json.load(fh)
    if not isinstance(dialogues, list) or (dialogues and "turns" not in dialogues[0]):
      raise ValueError(f"{f} is not SGD dialogues JSON (a list of objects with 'turns').")
    for d in dialogues:
      turns = [(_speaker(t["speaker"]), t["utterance"].strip()) for t in d["turns"]]
      for i, (spk, text) in enumerate(turns):
        if spk != "system" or i == 0:
          continue
        ctx = turns[:i][-max_context_turns:] if max_context_turns > 0 else turns[:i]
        out.append(Exchange(tuple(ctx), text, d.get("dialogue_id", "")))
  return out


def read_jsonl(path: str) -> list[Exchange]:
  out = []
  with open(path) as fh:
    for n, line in enumerate(fh, 1):
      if not line.strip():
        continue
      row = json.loads(line)
      if "context" not in row or "response" not in row:
        raise ValueError(f"{path}:{n}: each line needs 'context' and 'response' keys.")
      ctx = row["context"]
      if isinstance(ctx, str):
        turns = [("customer", ctx.strip())]
      else:  # alternate, ending with the customer
        k = len(ctx)
        turns = [("customer" if (k - 1 - j) % 2 == 0 else "system", t.strip())
                 for j, t in enumerate(ctx)]
      out.append(Exchange(tuple(turns), row["response"].strip(), str(row.get("id", n))))
  return out


def read(path: str, max_context_turns: int = 0) -> list[Exchange]:
  """Dispatches on the path: *.jsonl -> read_jsonl, else SGD JSON."""
  if path.endswith(".jsonl"):
    return read_jsonl(path)
  return read_sgd(path, max_context_turns)


def format_context(ex: Exchange) -> str:
  tag = {"customer": CUSTOMER, "system": SYSTEM}
  return " ".join(f"{tag[s]} {t}" for s, t in ex.context) + f" {SYSTEM}"


def split_by_dialogue(exchanges: Sequence[Exchange], n_train: int, n_eval: int, seed: int = 0
                      ) -> tuple[list[Exchange], list[Exchange]]:
  """Disjoint dialogues for train and eval (no context leaks across the split)."""
  ids = sorted({e.dialogue_id for e in exchanges})
  rng = np.random.default_rng(seed)
  rng.shuffle(ids)
  by_id: dict[str, list[Exchange]] = {}
  for e in exchanges:
    by_id.setdefault(e.dialogue_id, []).append(e)
  train: list[Exchange] = []
  evals: list[Exchange] = []
  for d in ids:
    if len(train) < n_train:
      train.extend(by_id[d])
    elif len(evals) < n_eval:
      evals.extend(by_id[d])
  if len(train) < n_train or len(evals) < n_eval:
    raise ValueError(f"Only {len(exchanges)} exchanges; asked for {n_train} train + {n_eval} eval.")
  return train[:n_train], evals[:n_eval]


def encode_example(tokenizer, ex: Exchange, max_len: int, eos_id: int
                   ) -> tuple[list[int], list[int]]:
  """(ids, loss weights) for context + response + EOS, context cut from the left."""
  ctx = tokenizer(format_context(ex))["input_ids"]
  resp = tokenizer(" " + ex.response)["input_ids"][: max_len // 2 - 1] + [eos_id]
  ctx = ctx[-(max_len - len(resp)):]
  return ctx + resp, [0] * len(ctx) + [1] * len(resp)


def batch_arrays(tokenizer, exchanges: Iterable[Exchange], max_len: int, eos_id: int,
                 pad_id: int) -> dict[str, np.ndarray]:
  """Right-padded LM training arrays: inputs, targets (shifted), weights, mask."""
  rows = [encode_example(tokenizer, e, max_len + 1, eos_id) for e in exchanges]
  n = len(rows)
  ids = np.full((n, max_len + 1), pad_id, np.int32)
  w = np.zeros((n, max_len + 1), np.float32)
  for i, (r, m) in enumerate(rows):
    ids[i, :len(r)], w[i, :len(m)] = r, m
  mask = np.zeros((n, max_len), bool)
  for i, (r, _) in enumerate(rows):
    mask[i, :len(r) - 1] = True
  return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": w[:, 1:], "mask": mask}


def prompt_arrays(tokenizer, exchanges: Iterable[Exchange], max_len: int, pad_id: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded generation prompts (ids, mask) of the contexts."""
  rows = [tokenizer(format_context(e))["input_ids"][-max_len:] for e in exchanges]
  ids = np.full((len(rows), max_len), pad_id, np.int32)
  mask = np.zeros((len(rows), max_len), bool)
  for i, r in enumerate(rows):
    ids[i, max_len - len(r):] = r
    mask[i, max_len - len(r):] = True
  return ids, mask
