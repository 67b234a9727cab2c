"""Few-shot text classification on a frozen sentence encoder (`experiments.text_fewshot`).

- `encoders`: encoders by name ('minilm', 'random_tiny', a checkpoint directory), batched
  embedding, the on-disk embedding cache.
- `methods`: the classifiers of embeddings by name (simpleshot, logreg, nearest_mean).
- `data`: the data sets by `data.name` as named splits (CLINC150, HuffPost / Reuters /
  HWU64 / Liu54, FewRel, a user's CSV).
- `runner`: episodic and generalised evaluation, CLINC150-style out-of-scope rejection.
"""
