"""Text scenarios: dialogue readers, translation data, LM and MT tuning."""
