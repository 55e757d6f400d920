"""Training: the trainer and its compiled step, evaluation, the synthetic tasks, the digits classifier's trainer."""
