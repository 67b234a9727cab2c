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

Bad input is a `DataError` naming the file: not UTF-8 or not JSON (with the
line, blank lines counted), a field of the wrong type (the JSONL line, or the
SGD dialogue and turn), or no exchanges at all (an empty file).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Iterable, Sequence

import numpy as np

from fsl_jax.data.sources import DataError, read_text, text_lines

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
  raise DataError(f"Unknown speaker {s!r}; expected USER or SYSTEM.")


def _load_json(path: str):
  """A JSON file, or DataError naming the file and the line of the error."""
  text = read_text(path)
  if not text.strip():
    raise DataError(f"{path} is empty: expected SGD dialogues JSON.")
  try:
    return json.loads(text)
  except json.JSONDecodeError as err:
    msg = f"{path}:{err.lineno} is not valid JSON ({err.msg}, column {err.colno})."
    raise DataError(msg) from None


def _sgd_turns(dialogue: dict, where: str) -> list[tuple[str, str]]:
  turns = dialogue.get("turns")
  if not isinstance(turns, list):
    raise DataError(f"{where} has no 'turns' list.")
  out = []
  for j, t in enumerate(turns):
    if not (isinstance(t, dict) and isinstance(t.get("speaker"), str)
            and isinstance(t.get("utterance"), str)):
      raise DataError(f"{where}, turn {j}: each turn needs string 'speaker' (USER or SYSTEM) "
                      f"and 'utterance'.")
    try:
      out.append((_speaker(t["speaker"]), t["utterance"].strip()))
    except DataError as err:
      raise DataError(f"{where}, turn {j}: {err}") from None
  return out


def read_sgd(path: str, max_context_turns: int = 0) -> list[Exchange]:
  """Exchanges from an SGD folder (`dialogues_*.json`) or one such file."""
  files = (sorted(glob.glob(os.path.join(path, "dialogues_*.json")))
           if os.path.isdir(path) else [path])
  if not files or not os.path.exists(files[0]):
    raise FileNotFoundError(f"No SGD dialogues_*.json under {path!r}. Download the "
                            f"dstc8-schema-guided-dialogue repository and pass its dev/ folder.")
  out = []
  for f in files:
    dialogues = _load_json(f)
    if not isinstance(dialogues, list) or not all(isinstance(d, dict) for d in dialogues):
      raise DataError(f"{f} is not SGD dialogues JSON (a list of objects with 'turns').")
    for k, d in enumerate(dialogues):
      turns = _sgd_turns(d, f"{f}: dialogue {k} ({d.get('dialogue_id', 'no id')})")
      for i, (spk, text) in enumerate(turns):
        if spk != "system" or i == 0:
          continue
        ctx = turns[:i][-max_context_turns:] if max_context_turns > 0 else turns[:i]
        out.append(Exchange(tuple(ctx), text, d.get("dialogue_id", "")))
  if not out:
    raise DataError(f"{path} holds no SYSTEM turn after another turn: no exchanges to learn from.")
  return out


def _jsonl_exchange(line: str, where: str, n: int) -> Exchange:
  """One JSONL line (already known non-blank); `where` is 'path:line'."""
  try:
    row = json.loads(line)
  except json.JSONDecodeError as err:
    raise DataError(f"{where} is not valid JSON ({err.msg}, column {err.colno}).") from None
  if not isinstance(row, dict) or "context" not in row or "response" not in row:
    raise DataError(f"{where}: each line needs a JSON object with 'context' and 'response' keys.")
  ctx, response = row["context"], row["response"]
  if not isinstance(response, str):
    raise DataError(f"{where}: 'response' must be a string, got {type(response).__name__}.")
  if isinstance(ctx, str):
    turns = [("customer", ctx.strip())]
  elif isinstance(ctx, list) and ctx and all(isinstance(t, str) for t in ctx):
    k = len(ctx)  # alternate, ending with the customer
    turns = [("customer" if (k - 1 - j) % 2 == 0 else "system", t.strip())
             for j, t in enumerate(ctx)]
  else:
    raise DataError(f"{where}: 'context' must be a string or a non-empty list of strings, got "
                    f"{json.dumps(ctx)[:60]}.")
  return Exchange(tuple(turns), response.strip(), str(row.get("id", n)))


def read_jsonl(path: str) -> list[Exchange]:
  """Exchanges from JSONL; errors name the file and line (blank lines counted)."""
  out = [_jsonl_exchange(line, f"{path}:{n}", n)
         for n, line in enumerate(text_lines(read_text(path)), 1) if line.strip()]
  if not out:
    raise DataError(f"{path} is empty: expected one JSON object per line, "
                    '{"context": str | [str, ...], "response": str}.')
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
