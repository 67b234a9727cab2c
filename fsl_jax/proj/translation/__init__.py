"""Low-resource translation: base training, adapters / LoRA, back-translation
(`experiments.adapter_tune`, `experiments.back_translate`)."""
