"""Few-shot dialogue response generation with a frozen GPT-2 (`experiments.prompt_tune`)."""
