"""End-to-end runs of experiments/prompt_tune.py (tiny random-init GPT-2)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fsl_jax.peft import freeze
from fsl_jax.peft import io as peft_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments/configs/prompt_tune_dialogue.py")


def _run(workdir, *overrides):
  cmd = [sys.executable, "-m", "experiments.prompt_tune", f"--config={CONFIG}:runlocal",
         f"--workdir={workdir}", *overrides]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stdout  # exactly one JSON line on stdout
  return json.loads(lines[0])


def _tiny_data(tmp_path):
  """A JSONL data set and a byte-level tokenizer: no ../shared needed."""
  transformers = pytest.importorskip("transformers")
  keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
  chars = {b: chr(b) for b in keep}
  chars.update({b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in keep)})
  vocab_map = {chars[b]: b for b in range(256)}
  vocab_map["<|endoftext|>"] = 256
  tok = transformers.GPT2TokenizerFast(vocab=vocab_map, merges=[], unk_token="<|endoftext|>",
                                       bos_token="<|endoftext|>", eos_token="<|endoftext|>")
  tok.save_pretrained(tmp_path / "tok")
  with open(tmp_path / "data.jsonl", "w") as f:
    for i in range(60):
      city = ["Paris", "Rome", "Oslo"][i % 3]
      f.write(json.dumps({"id": f"d{i}", "context": ["hi", "hello, how can I help?",
                                                     f"a cab to {city}"],
                          "response": f"Booking a cab to {city}."}) + "\n")
  return str(tmp_path / "data.jsonl"), str(tmp_path / "tok")


def _run_in_process(workdir, **overrides):
  from experiments.configs import prompt_tune_dialogue  # pylint: disable=import-outside-toplevel
  from fsl_jax.proj.dialogue import trainer  # pylint: disable=import-outside-toplevel
  config = prompt_tune_dialogue.get_config("runlocal")
  config.update(overrides)
  return trainer.train_and_evaluate(config, str(workdir))


def test_resume_matches_uninterrupted_run(tmp_path):
  data, tok = _tiny_data(tmp_path)
  common = dict(data=data, tokenizer=tok, method="lora", max_len=48, prompt_len=40,
                max_new_tokens=6)
  straight = _run_in_process(tmp_path / "a", num_steps=4, **common)
  _run_in_process(tmp_path / "b", num_steps=2, **common)  # "interrupted" after step 2
  resumed = _run_in_process(tmp_path / "b", num_steps=4, **common)
  assert resumed["steps"] == 4 and resumed["method"] == "lora"
  a, meta = peft_io.load_tree(str(tmp_path / "a/tuned.safetensors"))
  b, _ = peft_io.load_tree(str(tmp_path / "b/tuned.safetensors"))
  fa, fb = freeze.flatten_with_paths(a), freeze.flatten_with_paths(b)
  assert fa.keys() == fb.keys() and any(k.startswith("new_rows") for k in fa)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k])
  assert meta["spec"]["method"] == "lora"
  assert straight["bleu"] == resumed["bleu"]
  assert straight["trainable_params"] == resumed["trainable_params"] > 0
  with pytest.raises(ValueError, match="use a new --workdir"):
    _run_in_process(tmp_path / "b", num_steps=4, **{**common, "method": "prompt"})


def test_binary_on_sgd_dialogues(shared_dir, tmp_path):
  """The real command line, offline: SGD dev dialogues, the real GPT-2 tokenizer."""
  res = _run(tmp_path / "run", f"--config.data={shared_dir}/data/dialogue/sgd_dev",
             f"--config.tokenizer={shared_dir}/data/tokenizers/gpt2")
  assert set(res) >= {"method", "bleu", "trainable_params", "examples"}
  assert res["method"] == "prompt" and res["examples"] == 16
  assert 0.0 <= res["bleu"] <= 100.0
  samples = [json.loads(l) for l in open(tmp_path / "run" / "samples.jsonl")]
  assert len(samples) == 16 and all(s["reference"] for s in samples)
  assert samples[0]["context"].startswith("<customer>")
