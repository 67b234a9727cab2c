r"""CLINC150 intents (Larson et al. 2019) on the frozen all-MiniLM-L6-v2.

    python -m experiments.text_fewshot --config=experiments/configs/text_fewshot_clinc.py \
        --workdir=DIR [--config.method=logreg]

Episodic (default): 5-way 1- and 5-shot, 15 queries, 1,000 episodes over the
150 intents of the test split (30 utterances each; 'oos' is not a class). All
150 intents are novel to the frozen encoder: it was trained on none of them,
and no split of CLINC150 is used for training.

`:oos`: the generalized out-of-scope benchmark: 10 training utterances of
each of the 150 intents enrolled, the whole test split classified (4,500
in-scope + 1,000 oos), the rejection threshold chosen on the val split
(3,000 in-scope + 100 oos) alone.

`:seeded`: episodes over 50 novel intents instead, the intents split 50/50/50
by a seeded permutation (seed 0) after merging each intent's train, val and
test rows (150 each): the split experiments/configs/protonet_text.py:clinc150
meta-trains on, so frozen and meta-trained rows share their test intents.
Other variants: runlocal, logreg, nearest_mean (text_common.py).
"""

from experiments.configs import text_common


def get_config(arg: str | None = None):
  c = text_common.base("clinc150", "../shared/data/text/clinc150", max_length=64)
  c.oos_label = "oos"
  words = text_common.apply_variants(c, arg, extra=("oos", "seeded"))
  if {"oos", "seeded"} <= words:
    raise ValueError("oos and seeded: the out-of-scope benchmark keeps CLINC150's own splits.")
  if "seeded" in words:
    c.data.class_split, c.data.class_sizes = "seeded", "train=50,val=50,test=50"
  if "oos" in words:
    c.setting = "generalized"
    c.shots = (10,)
  return c
