r"""FewRel 1.0 relations (Han et al. 2018) on the frozen all-MiniLM-L6-v2.

    python -m experiments.text_fewshot --config=experiments/configs/text_fewshot_fewrel.py \
        --workdir=DIR [--config.method=logreg]

The shared copy holds FewRel 1.0's val_wiki only (16 relations x 700
sentences; train_wiki's 64 are absent). Its relations are split by a seeded
permutation (fsl_jax.data.text.seeded_class_split, seed 0): 6 train, 5 val,
5 test (proj/text_fewshot/data.py FEWREL_SIZES, the sizes of
experiments/configs/protonet_text.py:fewrel); the 5 test relations are the
novel classes, so every 5-way episode holds all five: 1- and 5-shot, 15
queries, 1,000 episodes. Head
and tail entities are marked [E1] ... [/E1], [E2] ... [/E2] in the text.
Not comparable to FewRel's leaderboard (its hidden test set of 20
relations). Variants: runlocal, logreg, nearest_mean (text_common.py).
"""

from experiments.configs import text_common


def get_config(arg: str | None = None):
  c = text_common.base("fewrel", "../shared/data/text/fewrel/val_wiki.json", max_length=128)
  text_common.apply_variants(c, arg)
  return c
