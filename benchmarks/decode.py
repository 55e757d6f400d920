"""Decode benchmark: per-token latency and tokens/s of greedy and beam-4 generation (batch 1 and 8) with tfm's
KV-cache step on each backend, next to PyTorch eager with KV caches on the same weights.

    python -m benchmarks decode --backends CPU,CL --configs tiny,medium,bundled --json decode.json

Every run generates exactly --tokens tokens per hypothesis (eos is masked until then, so both sides do the same work).
per_token_ms is the median time of one whole `generate` call (encoder included) divided by the tokens generated per
row; first_s is the first call (capture, scheduling, kernel compiles); kernels is the launches per decode step.
tfm's and PyTorch's timed calls alternate, so that the load of other processes weighs on both alike.
The PyTorch side caches self-attention keys/values (concatenated per step, as Hugging Face's DynamicCache does) and
the cross-attention keys/values of the source (computed once).
"""
from __future__ import annotations

import math
import os
import statistics
import time

import numpy as np
from tinygrad import GlobalCounters

from benchmarks.common import config, load_average, print_rows, ratio, torch_or_none, torch_thread_counts
from benchmarks.forward import same_model
from tfm.generation import generate
from tfm.runtime.memory import drain
from tfm.nn.transformer import Transformer
from tfm.files import BUNDLED_MODEL
from tfm.io.weights import load

COLUMNS = ["bench", "config", "backend", "search", "batch", "tokens", "first_s", "per_token_ms", "tokens_per_s",
           "kernels", "torch_ms", "ratio", "same_ids", "load"]


def add_arguments(parser) -> None:
  parser.add_argument("--backends", default="CPU", help="comma-separated tinygrad backends (default: CPU)")
  parser.add_argument("--configs", default="tiny,medium,bundled",
                      help="tfm presets, or bundled: the trained dates model (default: tiny,medium,bundled)")
  parser.add_argument("--batches", default="1,8", help="sources per generate call (default: 1,8)")
  parser.add_argument("--beams", default="1,4", help="beam sizes; 1 is greedy (default: 1,4)")
  parser.add_argument("--src-len", type=int, default=16, help="tokens per source (default: 16)")
  parser.add_argument("--tokens", type=int, default=32, help="tokens generated per hypothesis (default: 32)")
  parser.add_argument("--reps", type=int, default=7, help="timed repetitions after warm-up; the median is reported (default: 7)")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch side even when torch is installed")


def _ints(text: str) -> list[int]: return [int(x) for x in text.split(",") if x.strip()]


def torch_decoder(torch, model: Transformer):
  """`generate(src, steps, beam)` in PyTorch eager on model's weights: (B * beam, steps) ids, best beam first."""
  from benchmarks.torch_reference import TorchTransformer
  F = torch.nn.functional
  ref, c = TorchTransformer.from_tfm(model), model.config

  def add_norm(x, sublayer, norm):
    return x + sublayer(norm(x)) if c.norm_first else norm(x + sublayer(x))

  def step(token, pos, caches, cross, mask):
    x = ref.embed(ref.tgt_embed, token, offset=pos)
    for layer, cache, (ck, cv) in zip(ref.decoder.layers, caches, cross):
      def self_attention(h, a=layer.self_attn, cache=cache):
        k, v = a.split_heads(a.k_proj(h)), a.split_heads(a.v_proj(h))
        if cache: k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        cache[:] = [k, v]
        return a.attend(h, k, v, None)
      x = add_norm(x, self_attention, layer.self_attn_layer_norm)
      x = add_norm(x, lambda h, layer=layer, ck=ck, cv=cv: layer.encoder_attn.attend(h, ck, cv, mask), layer.encoder_attn_layer_norm)
      x = add_norm(x, layer.ffn, layer.final_layer_norm)
    return F.log_softmax(ref.generator(ref.decoder.norm(x))[:, -1].float(), -1)

  @torch.no_grad()
  def generate_torch(src: np.ndarray, steps: int, beam: int) -> np.ndarray:
    src_t = torch.from_numpy(src.astype(np.int64))
    b = src_t.shape[0]
    memory = ref.encode(src_t).repeat_interleave(beam, 0)
    mask = ref.src_mask(src_t).repeat_interleave(beam, 0)
    cross = [(layer.encoder_attn.split_heads(layer.encoder_attn.k_proj(memory)),
              layer.encoder_attn.split_heads(layer.encoder_attn.v_proj(memory))) for layer in ref.decoder.layers]
    caches: list[list] = [[] for _ in ref.decoder.layers]
    token = torch.full((b * beam, 1), c.start_id, dtype=torch.long)
    scores = torch.zeros(b, beam)
    scores[:, 1:] = -1e9
    seqs = torch.zeros(b * beam, 0, dtype=torch.long)
    for pos in range(steps):
      lp = step(token, pos, caches, cross, mask)
      lp[:, c.eos_id] = -math.inf  # the same fixed-length work as the tfm side
      if beam == 1:
        token = lp.argmax(-1, keepdim=True)
      else:
        top_scores, top = (lp.view(b, beam, -1) + scores[:, :, None]).view(b, -1).topk(beam)
        origin = (top // c.vocab_size + torch.arange(b)[:, None] * beam).view(-1)
        scores, token = top_scores, (top % c.vocab_size).view(-1, 1)
        seqs = seqs[origin]
        for cache in caches: cache[:] = [cache[0][origin], cache[1][origin]]
      seqs = torch.cat([seqs, token], 1)
    return seqs.numpy()

  return generate_torch


def kernels_per_step(model: Transformer, src: np.ndarray, beam: int, tokens: int) -> float:
  """Kernel launches per decode step: the difference between a `tokens`-long and a 1-token generate, per token."""
  def count(n: int) -> int:
    GlobalCounters.reset()
    generate(model, src, max_len=n, min_len=n, beam_size=beam)
    drain(model.device)
    return GlobalCounters.kernel_count
  return (count(tokens) - count(1)) / (tokens - 1)


def interleaved(fns: list, reps: int) -> tuple[list[float], list[float]]:
  """First-call seconds and median seconds of each function, their timed calls interleaved rep by rep, so that the
  load other processes put on the machine (it changes by the minute) weighs on all of them alike."""
  first = []
  for fn in fns:
    t0 = time.perf_counter()
    fn()
    first.append(time.perf_counter() - t0)
  for fn in fns: fn()  # warm-up
  times: list[list[float]] = [[] for _ in fns]
  for _ in range(max(1, reps)):
    for fn, out in zip(fns, times):
      t0 = time.perf_counter()
      fn()
      out.append(time.perf_counter() - t0)
  return first, [statistics.median(t) for t in times]


def run(args) -> list[dict]:
  torch = torch_or_none(args)
  rows: list[dict] = []
  print_rows([], COLUMNS)
  for name in [x.strip() for x in args.configs.split(",") if x.strip()]:
    if name == "bundled" and not os.path.exists(BUNDLED_MODEL):
      print(f"the bundled model is not installed ({BUNDLED_MODEL}): skipping it")
      continue
    arrays = None
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
      if name == "bundled": model = load(BUNDLED_MODEL, device=backend)
      else: model, arrays = same_model(config(name), backend, arrays)   # the same weights on every backend
      cfg, rng = model.config, np.random.default_rng(0)
      lo = max(cfg.pad_id, cfg.bos_id, cfg.eos_id) + 1
      reference = torch_decoder(torch, model) if torch is not None else None
      for beam in _ints(args.beams):
        for batch in _ints(args.batches):
          src, n = rng.integers(lo, cfg.vocab_size, (batch, args.src_len)), args.tokens
          def ours(): return generate(model, src, max_len=n, min_len=n, beam_size=beam)
          fns = [ours]
          if reference is not None:  # PyTorch with its default threads and with one: the faster is compared
            for threads in torch_thread_counts(torch):
              def theirs(threads=threads):
                torch.set_num_threads(threads)
                return reference(src, n, beam)
              fns.append(theirs)
          first, medians = interleaved(fns, args.reps)
          row = dict(bench="decode", config=name, backend=backend, search="greedy" if beam == 1 else f"beam{beam}",
                     batch=batch, tokens=n, first_s=first[0], per_token_ms=medians[0] / n * 1e3,
                     tokens_per_s=batch * n / medians[0], kernels=kernels_per_step(model, src, beam, n), load=load_average())
          if reference is not None:
            row["torch_ms"] = min(medians[1:]) / n * 1e3
            row["ratio"] = ratio(row["per_token_ms"], row["torch_ms"])
            if beam == 1: row["same_ids"] = bool(np.array_equal(ours(), reference(src, n, beam)))
          rows.append(row)
          print_rows([row], COLUMNS, header=False)
  return rows
