"""Text generation and data: decoding, dialogue readers, LM tuning."""
