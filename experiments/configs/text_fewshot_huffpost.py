r"""HuffPost headlines (41 topics) on the frozen all-MiniLM-L6-v2, Bao et al. 2020's novel classes.

    python -m experiments.text_fewshot --config=experiments/configs/text_fewshot_huffpost.py \
        --workdir=DIR [--config.method=logreg]

5-way 1- and 5-shot, 15 queries, 1,000 episodes over the 16 test classes
(labels 25-40, 900 headlines each) of Bao et al.'s class split
(fsl_jax.data.text.BAO_CLASS_SPLITS). Also serves Reuters (Bao's 11 test
classes) and HWU64 / Liu54 (every class, no class split encoded) with
--config.data.name=reuters|hwu64|liu54 (data.path is the folder holding
NAME.json). Variants: runlocal, logreg, nearest_mean (text_common.py).
"""

from experiments.configs import text_common


def get_config(arg: str | None = None):
  c = text_common.base("huffpost", "../shared/data/text/huffpost_reuters_hwu64_liu54",
                       max_length=64)
  text_common.apply_variants(c, arg)
  return c
