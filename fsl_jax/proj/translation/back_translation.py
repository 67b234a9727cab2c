"""Back-translation with a reverse model (library side of experiments.back_translate)."""

from __future__ import annotations

import dataclasses

from fsl_jax.models import hf_loading
from fsl_jax.models import seq2seq_generate as sg
from fsl_jax.proj.translation import tuning
from fsl_jax.proj.translation import data as td


def run(model: str, input_path: str, output_path: str, num_beams: int = 4, batch_size: int = 32,
        max_new_tokens: int = 128, max_len: int = 128, limit: int = 0, src_lang: str = "",
        tgt_lang: str = "", progress: bool = True) -> int:
  """Writes `translation(line)<TAB>line` for every non-empty input line; returns the count."""
  targets = [line for line in td.read_lines(input_path) if line.strip()]
  if limit:
    targets = targets[:limit]
  if not targets:
    raise ValueError(f"{input_path} has no non-empty lines to back-translate.")
  cfg, params = tuning.load_model(model)
  directory = hf_loading.resolve(model, ["*.json", "*.spm", "*.model"])
  lang = {"src_lang": src_lang, "tgt_lang": tgt_lang} if src_lang else None
  tok = tuning.load_tokenizer(directory, lang)
  gen = sg.GenerationConfig(max_new_tokens=max_new_tokens, num_beams=num_beams,
                            bad_token_ids=(cfg.pad_token_id,))
  if cfg.family == "mbart" and tgt_lang:
    gen = dataclasses.replace(gen, forced_bos_token_id=tok.convert_tokens_to_ids(tgt_lang))
  sources = tuning.translate(cfg, params, tok, targets, gen, None, batch_size, max_len,
                                progress=progress)
  td.write_tsv(output_path, zip(sources, targets))
  return len(targets)
