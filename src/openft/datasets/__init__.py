"""Training-data formats: validation (used by the worker and `openft data check`) and reading (used by
the trainer). Pure Python, no torch, so every process can import it."""
