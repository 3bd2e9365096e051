"""Training and evaluation machinery: solver, checkpointing, training logs and the evaluation metrics
(`rankseg_fast.engine.metrics`)."""
