"""Command-line tools: export a trained run for TF Serving, and query a served model."""
