"""Evaluation of a text model on its task: greedy-decode held-out sources and score exact match and token accuracy
(what `Trainer.evaluate`, `tfm train --evaluate` and the bundled model's accuracy claim use)."""
from __future__ import annotations

import os

import numpy as np

from tfm.io import weights
from tfm.errors import ConfigError, InputError
from tfm.generation import greedy_search
from tfm.nn.transformer import Transformer
from tfm.training.tasks import encode_batch, get_task
from tfm.io.tokenizer import CharTokenizer


def evaluate(model: Transformer, tokenizer: CharTokenizer, pairs: list[tuple[str, str]], batch_size: int = 500) -> dict[str, float]:
  """Greedy-decode every source; exact match (whole target right) and token accuracy (target positions incl. eos)."""
  if not pairs: raise InputError("evaluate needs at least one (source, target) pair")
  width, src_len = max(len(t) for _, t in pairs) + 1, max(len(s) for s, _ in pairs) + 1
  rows = min(batch_size, len(pairs))
  exact = correct = total = 0
  for start in range(0, len(pairs), rows):
    chunk = pairs[start:start + rows]
    # the last chunk is topped up to `rows` so every chunk reuses the same compiled decode step
    src, _, labels = encode_batch(tokenizer, chunk + chunk[:1] * (rows - len(chunk)), src_len, width)
    ids = greedy_search(model, src, max_len=width)[:len(chunk)]
    pred = np.full(labels.shape, tokenizer.pad_id, np.int32)
    pred[:, :ids.shape[1]] = ids
    labels = labels[:len(chunk)]
    real = labels != tokenizer.pad_id
    correct += int(((pred == labels) & real).sum())
    total += int(real.sum())
    exact += sum(o == t for o, (_, t) in zip(tokenizer.decode(pred), chunk))
  return {"exact_match": exact / len(pairs), "token_accuracy": correct / total}


def evaluate_file(path: str | os.PathLike, task: str = "dates", n: int = 2000, seed: int = 0,
                  device: str | None = None) -> dict[str, float]:
  """Greedy exact match and token accuracy of a saved model on n held-out examples of its task (the task's vocabulary)."""
  model, tokenizer = weights.load(path, device=device), get_task(task).tokenizer
  if not isinstance(model, Transformer):
    raise ConfigError(f"{os.fspath(path)} holds a {type(model).__name__}, not a text model; evaluate it with --task digits")
  if model.config.vocab_size != tokenizer.vocab_size:
    raise ConfigError(f"{os.fspath(path)} has vocab_size={model.config.vocab_size}, the {task} task's vocabulary has "
                      f"{tokenizer.vocab_size}: was it trained on another task?")
  return evaluate(model, tokenizer, get_task(task).examples(n, "test", seed))
