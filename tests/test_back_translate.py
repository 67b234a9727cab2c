"""End to end, offline: both binaries on generated data with tiny models.

A scratch base (`adapter_tune`, method=full, exported as a Hugging Face
directory), back-translation of monolingual text with it (`back_translate`;
a real run uses a reverse-direction model, the mechanics are the same), then
adapter tuning of the base on real + synthetic pairs, and a rerun that
resumes from the finished checkpoint.
"""

import json
import os
import random
import subprocess
import sys

import pytest

CONFIG = "experiments/configs/adapter_mt_en_sw.py:runlocal"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EN = "the a cat dog house river sees eats big small green red runs sleeps near under".split()
SW = "paka mbwa nyumba mto anaona anakula kubwa ndogo kijani nyekundu anakimbia analala karibu chini ya na".split()


def _data(d):
  rnd = random.Random(0)
  en, sw = [], []
  for _ in range(120):
    idx = [rnd.randrange(len(EN)) for _ in range(rnd.randint(3, 7))]
    en.append(" ".join(EN[j] for j in idx))
    sw.append(" ".join(SW[j] for j in idx))
  (d / "p.en").write_text("\n".join(en) + "\n")
  (d / "p.sw").write_text("\n".join(sw) + "\n")
  (d / "mono.sw").write_text("\n".join(sw[:12]) + "\n")


def _run(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  return json.loads(lines[-1])


def test_base_back_translation_and_adapter_end_to_end(tmp_path):
  _data(tmp_path)
  data = [f"--config.train={tmp_path}/p:en,sw@0:100", f"--config.test={tmp_path}/p:en,sw@100:"]
  base = _run("experiments.adapter_tune", f"--config={CONFIG}", f"--workdir={tmp_path}/base", *data)
  assert base["method"] == "full" and base["train_pairs"] == 100
  assert os.path.exists(tmp_path / "base" / "model" / "source.spm")

  bt = _run("experiments.back_translate", f"--model={tmp_path}/base/model",
            f"--input={tmp_path}/mono.sw", f"--output={tmp_path}/bt.tsv", "--num_beams=2",
            "--batch_size=4", "--max_new_tokens=8")
  assert bt["pairs"] == 12
  rows = (tmp_path / "bt.tsv").read_text().splitlines()
  assert len(rows) == 12 and all(len(r.split("\t")) == 2 for r in rows)
  assert [r.split("\t")[1] for r in rows] == (tmp_path / "mono.sw").read_text().splitlines()

  tune = [f"--config={CONFIG}", f"--workdir={tmp_path}/pf", f"--config.model={tmp_path}/base/model",
          "--config.method=pfeiffer", f"--config.bt_pairs={tmp_path}/bt.tsv",
          "--config.bt_ratio=0.1", "--config.bt_tag=<BT>", *data]
  res = _run("experiments.adapter_tune", *tune)
  assert set(res) >= {"method", "bleu", "chrf", "trainable_params", "train_pairs"}
  assert res["method"] == "pfeiffer" and res["train_pairs"] == 110 and res["synthetic_pairs"] == 10
  assert 0 < res["trainable_params"] < base["trainable_params"] / 10
  assert res["base_bleu"] == base["bleu"]  # the exported base reloads to the same translations
  assert os.path.exists(tmp_path / "pf" / "adapter.safetensors")
  again = _run("experiments.adapter_tune", *tune)  # resumes from the final checkpoint
  assert again["bleu"] == res["bleu"] and again["chrf"] == res["chrf"]


def test_exported_base_loads_in_transformers(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from fsl_jax.models import marian, seq2seq  # pylint: disable=import-outside-toplevel
  from fsl_jax.proj.translation import tuning  # pylint: disable=import-outside-toplevel
  cfg = marian.tiny(vocab_size=50)
  params = seq2seq.init_params(cfg, jax.random.PRNGKey(0), std=0.3)
  tuning.export_hf(str(tmp_path), cfg, params, None)
  model = transformers.MarianMTModel.from_pretrained(str(tmp_path)).eval()
  ids = np.array([[5, 7, 9, 0]])
  dec = np.array([[cfg.pad_token_id, 3, 4]])
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(dec)).logits.numpy()
  np.testing.assert_allclose(seq2seq.forward(cfg, params, ids, None, dec), ref, atol=1e-4)
