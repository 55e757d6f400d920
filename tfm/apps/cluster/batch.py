"""A file of texts translated by a pool of Ray actors, each holding one Translator (its model loaded once), with what
`tfm translate --input --output` guarantees in one process: blank lines kept, bad lines named before anything is
translated (or skipped with --skip-bad), the output in input order, written whole or not at all.

    with LinePool("bundled", workers=4) as pool:             # inside ray.init(), or tfm.apps.cluster.connected()
      results = pool.translate(lines, max_batch_size=32)     # textfiles.Result per line, in order
    translate_file_on_ray("dates.txt", "iso.txt", workers=4, address="head:6379")

The driver reads the file and writes the output (one file, renamed into place); the actors take blocks of lines, each
block tagged with the index of its first line. A worker that dies mid-block (a lost machine, the OOM killer) is
restarted by Ray (the model loaded again) and its block run again: the block's results land at its index, once.
"""
from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from tinygrad.helpers import tqdm

from tfm.apps.cluster.connect import actor_options, connected, memory_mb, need_ray, unwrapped
from tfm.apps.textfiles import Result, line_problems, read_lines, refuse, report_skipped, translate_lines, write_results
from tfm.apps.translator import Translator
from tfm.errors import ConfigError, TfmError

BLOCK = 256      # lines per task: small enough to spread a file over the workers, large enough to batch well
RESTARTS = 3     # times a worker is restarted, and a block retried, before the run fails


class LineWorker:
  """One actor's state: a Translator, loaded once when the actor starts (or restarts). A load that fails is kept and
  raised by ready(), so the caller gets the TfmError itself, not an actor that died in its constructor."""

  def __init__(self, model: str, device: Any, dtype: str | None, source_lang: str | None, target_lang: str | None):
    self.translator, self.error = None, None
    try: self.translator = Translator.open(model, device, dtype, None, source_lang, target_lang)
    except Exception as e: self.error = e

  def ready(self) -> dict:
    """This worker's process id, backend, CPU threads and resident memory (MiB) once the model is loaded; the load's
    error if it failed."""
    from tinygrad.helpers import NUM_CPU_THREADS   # tinygrad-0.14: the CPU renderer's thread count
    if self.error is not None: raise self.error
    return {"pid": os.getpid(), "where": self.translator.model.where, "threads": NUM_CPU_THREADS.value, "memory_mb": memory_mb()}

  def problems(self, start: int, lines: list[str]) -> dict[int, str]:
    """Why each line of a block the model cannot take cannot be, by its index in the whole file."""
    return {start + i: why for i, why in line_problems(self.translator, lines).items()}

  def translate(self, start: int, lines: list[str], prefix: str | None, options: dict) -> tuple[int, list[Result]]:
    """A block's Results (bad lines skipped with their reason), with the index of its first line."""
    return start, translate_lines(self.translator, lines, skip_bad=True, progress=False, prefix=prefix, **options)


class LinePool:
  """`workers` actors on the Ray this process is connected to, each a LineWorker with `cpus` cores and `gpus` GPUs
  reserved (tfm.apps.cluster.connect.actor_options; `env`: more variables for them) and restarted up to `restarts`
  times when its process dies. Built, it waits until every model is loaded (`startup_s`, `workers_info`)."""

  def __init__(self, model: str = "bundled", workers: int = 2, device: Any = "auto", dtype: str | None = None,
               cpus: int = 1, gpus: float = 0, source_lang: str | None = None, target_lang: str | None = None,
               restarts: int = RESTARTS, env: dict[str, str] | None = None):
    self.ray = need_ray()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
      raise ConfigError(f"--workers must be an integer >= 1 (actors, each with the model loaded), got {workers!r}")
    if not self.ray.is_initialized():
      raise TfmError("LinePool needs a Ray connection: call ray.init() (or use tfm.apps.cluster.connected()) first")
    remote = self.ray.remote(max_restarts=restarts, max_task_retries=restarts, **actor_options(cpus, gpus, env))(LineWorker)
    start = time.perf_counter()
    self.actors = [remote.remote(model, device, dtype, source_lang, target_lang) for _ in range(workers)]
    try: self.workers_info = self.get([a.ready.remote() for a in self.actors])
    except BaseException:
      self.close()
      raise
    self.startup_s, self.blocks_done = time.perf_counter() - start, 0

  def get(self, refs):
    """ray.get, with a TfmError raised in an actor raised as itself, and a worker dead past its restarts explained."""
    try: return self.ray.get(refs)
    except (self.ray.exceptions.RayTaskError, self.ray.exceptions.RayActorError) as e: raise self._explained(e) from None

  def _explained(self, error: Exception) -> Exception:
    if isinstance(error, self.ray.exceptions.RayActorError):
      return TfmError(f"a worker died more often than it may be restarted ({error}); see its log (`ray logs`), and give "
                      f"workers more memory or fewer cores each")
    return unwrapped(self.ray, error)

  def pids(self) -> list[int]:
    """Each worker's process id now (a restarted worker has a new one)."""
    return [info["pid"] for info in self.get([a.ready.remote() for a in self.actors])]

  def translate(self, lines: list[str], skip_bad: bool = False, prefix: str | None = None, progress: bool | None = None,
                block_size: int = BLOCK, **options) -> list[Result]:
    """Each line's Result, in order, as tfm.apps.textfiles.translate_lines gives it in one process: a line the model
    cannot take raises InputError naming it before any line is translated, unless skip_bad. `options` go to
    Translator.translate (beam_size, max_batch_size, ...); options left None are left out."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
      raise ConfigError(f"block_size must be an integer >= 1 (lines per task), got {block_size!r}")
    options = {k: v for k, v in options.items() if v is not None}
    blocks = [(start, lines[start:start + block_size]) for start in range(0, len(lines), block_size)]
    if not skip_bad:
      found: dict[int, str] = {}
      for problems in self._map("problems", blocks): found.update(problems)
      refuse(found)
    results: list[Result | None] = [None] * len(lines)
    bar = tqdm(total=len(lines), desc="translate", unit="lines", disable=not progress if progress is not None else None)
    for start, block in self._map("translate", [(start, texts, prefix, options) for start, texts in blocks]):
      if any(r is not None for r in results[start:start + len(block)]): raise TfmError(f"the block at line {start + 1} came back twice")
      results[start:start + len(block)] = block
      self.blocks_done += 1
      bar.update(len(block), close=self.blocks_done == len(blocks))
    missing = next((i for i, r in enumerate(results) if r is None), None)
    if missing is not None: raise TfmError(f"line {missing + 1} was never translated: a worker's result was lost")
    return results

  def _map(self, method: str, calls: list[tuple]):
    """Each call's result, in the order they finish, the calls spread over the workers (one at a time on each)."""
    from ray.util import ActorPool
    try: yield from ActorPool(self.actors).map_unordered(lambda actor, args: getattr(actor, method).remote(*args), calls)
    except (self.ray.exceptions.RayTaskError, self.ray.exceptions.RayActorError) as e: raise self._explained(e) from None

  def close(self) -> None:
    """End the workers (their cores and memory go back to the cluster)."""
    for actor in self.actors: self.ray.kill(actor)
    self.actors = []

  def __enter__(self) -> LinePool: return self
  def __exit__(self, *exc) -> None: self.close()


def translate_file_on_ray(input: str, output: str | None, model: str = "bundled", workers: int = 2, device: Any = "auto",
                          address: str | None = None, batch_size: int = 32, skip_bad: bool = False, cpus: int = 1,
                          gpus: float = 0, as_json: bool = False, with_scores: bool = False, progress: bool | None = None,
                          err: IO[str] | None = None, dtype: str | None = None, source_lang: str | None = None,
                          target_lang: str | None = None, env: dict[str, str] | None = None, **options) -> list[Result]:
  """`tfm translate --input FILE --output FILE --ray [ADDRESS] --workers N`: the file's lines translated by a LinePool on
  the cluster at `address` (None: as tfm.apps.cluster.connect.connected decides), skipped lines reported on `err`
  (stderr), the output written as in one process (atomically; None or "-": standard output). `options` as
  LinePool.translate takes them (beam_size, num_hypotheses, prefix, ...). Returns the Results."""
  lines = read_lines(input)
  with connected(address), LinePool(model, workers, device, dtype, cpus, gpus, source_lang, target_lang, env=env) as pool:
    results = pool.translate(lines, skip_bad=skip_bad, progress=progress, max_batch_size=batch_size, **options)
  report_skipped(results, err or sys.stderr)
  n_best = options.get("num_hypotheses") or 1
  write_results(results, output, as_json=as_json, with_scores=with_scores, n_best=n_best)
  return results
