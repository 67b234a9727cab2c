"""Parameter-efficient tuning on frozen bases: masks, LoRA, prompts, adapters."""
