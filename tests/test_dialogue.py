"""Dialogue readers, role-token formatting and the response-only loss mask."""

import json

import numpy as np
import pytest

from fsl_jax.proj.dialogue import data as dialogue


class CharTok:
  """A stand-in tokenizer: one id per character (role tags are one token)."""

  def __call__(self, text):
    ids, i = [], 0
    while i < len(text):
      for tag, tid in ((dialogue.CUSTOMER, 1000), (dialogue.SYSTEM, 1001)):
        if text.startswith(tag, i):
          ids.append(tid)
          i += len(tag)
          break
      else:
        ids.append(ord(text[i]))
        i += 1
    return {"input_ids": ids}


def _sgd_file(tmp_path):
  d = [{"dialogue_id": "1_0", "services": ["Banks_1"], "turns": [
      {"speaker": "USER", "utterance": "Check my balance."},
      {"speaker": "SYSTEM", "utterance": "Which account?"},
      {"speaker": "USER", "utterance": "Savings."},
      {"speaker": "SYSTEM", "utterance": "You have $500."}]}]
  path = tmp_path / "dialogues_001.json"
  path.write_text(json.dumps(d))
  return tmp_path


def test_read_sgd_and_format(tmp_path):
  ex = dialogue.read_sgd(str(_sgd_file(tmp_path)))
  assert [e.response for e in ex] == ["Which account?", "You have $500."]
  assert dialogue.format_context(ex[1]) == (
      "<customer> Check my balance. <system> Which account? <customer> Savings. <system>")
  short = dialogue.read_sgd(str(tmp_path), max_context_turns=1)
  assert dialogue.format_context(short[1]) == "<customer> Savings. <system>"
  with pytest.raises(FileNotFoundError, match="dialogues_"):
    dialogue.read_sgd(str(tmp_path / "nothing"))


def test_read_jsonl(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_text(json.dumps({"context": ["hi", "hello", "a table"], "response": "For how many?"})
                  + "\n" + json.dumps({"context": "my card is lost", "response": "Sorry!"}) + "\n")
  ex = dialogue.read(str(path))
  assert dialogue.format_context(ex[0]) == "<customer> hi <system> hello <customer> a table <system>"
  assert ex[1].context == (("customer", "my card is lost"),) and ex[1].response == "Sorry!"
  path.write_text(json.dumps({"prompt": "x"}) + "\n")
  with pytest.raises(ValueError, match="'context' and 'response'"):
    dialogue.read(str(path))


def test_loss_only_on_response_and_eos(tmp_path):
  ex = dialogue.read_sgd(str(_sgd_file(tmp_path)))[0]
  tok = CharTok()
  arrays = dialogue.batch_arrays(tok, [ex], max_len=64, eos_id=7, pad_id=0)
  ids = np.concatenate([arrays["inputs"][0, :1], arrays["targets"][0]])
  w = arrays["weights"][0]
  scored = "".join(chr(t) for t, m in zip(arrays["targets"][0], w) if m and t != 7)
  assert scored == " Which account?"
  assert arrays["targets"][0][np.nonzero(w)[0][-1]] == 7  # EOS is scored
  assert ids[0] == 1000 and 1001 in ids  # role tokens
  assert arrays["mask"][0].sum() == w.nonzero()[0][-1] + 1
  # Too long: the response keeps at most half the window, the context the rest.
  arrays = dialogue.batch_arrays(tok, [ex], max_len=20, eos_id=7, pad_id=0)
  assert arrays["weights"][0].sum() == 21 // 2 and arrays["mask"][0].all()
  assert arrays["inputs"][0, 0] != 1000  # context cut from the left


def test_prompts_left_padded(tmp_path):
  ex = dialogue.read_sgd(str(_sgd_file(tmp_path)))
  ids, mask = dialogue.prompt_arrays(CharTok(), ex, max_len=40, pad_id=0)
  assert ids.shape == (2, 40) and mask[0, -1] and not mask[0, 0]
  assert ids[0, -1] == 1001  # ends with <system>
  assert mask[1].all()  # the long context is cut from the left to fit


def test_split_by_dialogue_is_disjoint(shared_dir):
  ex = dialogue.read_sgd(str(shared_dir / "data/dialogue/sgd_dev"), max_context_turns=3)
  assert len(ex) > 4000
  train, evals = dialogue.split_by_dialogue(ex, 300, 100, seed=0)
  assert len(train) == 300 and len(evals) == 100
  assert not {e.dialogue_id for e in train} & {e.dialogue_id for e in evals}
  assert all(len(e.context) <= 3 and e.context[-1][0] == "customer" for e in train)
