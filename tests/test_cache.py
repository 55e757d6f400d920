"""The compiled-program cache: a new process relaunches what an earlier one compiled, with the same results; damaged,
foreign and stale entries are rebuilt, never trusted; the cache can be switched off and keeps to its size bound.
Also the saved probe results, and decoding from a worker thread."""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import textwrap
import types
import warnings

import numpy as np
import pytest
from tinygrad import Tensor

import tfm
from tfm.runtime import cache
from tfm.runtime.memory import download, to_device, upload
from tfm.runtime.replay import CompiledStep

PYTHON = sys.executable
probe_mod = importlib.import_module("backends.probe")   # `backends.probe` is the function
SRC = np.array([[5, 9, 12, 33, 2, 0], [7, 8, 9, 10, 11, 2]], dtype=np.int32)


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("TFM_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.delenv("TFM_CACHE", raising=False)
  return tmp_path / "cache"


def run(args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
  proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


# --- one step, in process ------------------------------------------------------------------------------------------

def doubling_step(cache_key: dict | None):
  """A compiled step out = 2 * x + 1 over named buffers, and those buffers."""
  x, out = to_device(np.arange(6, dtype=np.float32).reshape(2, 3), "CPU"), to_device(np.zeros((2, 3), np.float32), "CPU")
  def fn(): out.assign(x * 2 + 1).realize()
  return CompiledStep(fn, None, contextlib.nullcontext, cache_key, lambda: {"x": x, "out": out},
                      "CPU"), x, out


def test_a_stored_step_is_relaunched_on_other_buffers_of_the_same_names(cache_dir):
  key = {"test": "doubling"}
  first, _, out = doubling_step(key)
  first()
  assert first.jit.captured is not None and cache.info().entries == 1
  again, x, out = doubling_step(key)   # new buffers under the same names, as a new process has
  upload(x, np.full((2, 3), 10, np.float32))
  again()
  assert again.jit.captured is None, "the step was captured again instead of relaunched"
  np.testing.assert_array_equal(download(out), np.full((2, 3), 21, np.float32))


def test_an_entry_that_cannot_be_rebuilt_is_dropped_with_a_warning_and_compiled_again(cache_dir):
  key = {"test": "unusable"}
  step, _, _ = doubling_step(key)
  cache.store(cache.key_for(key, "CPU"), b"not a pickle")
  with pytest.warns(cache.CacheWarning, match="could not be restored"): step()
  assert step.jit.captured is not None
  assert cache.lookup(cache.key_for(key, "CPU")) is not None, "the rebuilt step was not stored in its place"


@pytest.mark.parametrize("damage, why", [
  (lambda data: data[:len(data) // 2], "truncated|checksum"),
  (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "checksum"),
  (lambda data: b"something else entirely", "not a tfm cache entry"),
])
def test_a_damaged_entry_is_dropped_with_a_warning(cache_dir, damage, why):
  key = cache.key_for({"test": "damaged"}, "CPU")
  cache.store(key, b"payload" * 100)
  (path,) = (cache_dir / "programs").iterdir()
  path.write_bytes(damage(path.read_bytes()))
  with pytest.warns(cache.CacheWarning, match=why): assert cache.lookup(key) is None
  assert not path.exists()


def test_an_entry_made_under_another_key_is_not_used(cache_dir):
  mine, theirs = cache.key_for({"test": "mine"}, "CPU"), cache.key_for({"test": "theirs"}, "CPU")
  cache.store(theirs, b"their kernels")
  (path,) = (cache_dir / "programs").iterdir()
  path.rename(cache._path(cache._encode(mine)))   # a file where mine should be, holding another key's entry
  with pytest.warns(cache.CacheWarning, match="another model, backend or version"): assert cache.lookup(mine) is None


def test_the_key_changes_with_the_backend_and_tinygrads_settings():
  from tinygrad import Context
  base = cache.key_for({"step": "x"}, "CPU")
  assert cache.key_for({"step": "x"}, "CL") != base
  with Context(NOOPT=1): assert cache.key_for({"step": "x"}, "CPU") != base
  with Context(DEBUG=2): assert cache.key_for({"step": "x"}, "CPU") == base   # output only: entries still serve


def test_tfm_cache_0_switches_it_off(cache_dir, monkeypatch):
  monkeypatch.setenv("TFM_CACHE", "0")
  key = cache.key_for({"test": "off"}, "CPU")
  cache.store(key, b"payload")
  assert cache.lookup(key) is None and not (cache_dir / "programs").exists()


def test_the_least_recently_used_entries_go_past_the_size_bound(cache_dir, monkeypatch):
  keys = [cache.key_for({"test": "bound", "i": i}, "CPU") for i in range(4)]
  for i, key in enumerate(keys):
    cache.store(key, bytes(4000))
    os.utime(cache._path(cache._encode(key)), (1000 + i, 1000 + i))   # entry 0 is the least recently used
  size = cache._path(cache._encode(keys[0])).stat().st_size
  monkeypatch.setenv("TFM_CACHE_MAX_MB", str(3.5 * size / 2**20))   # room for three of the four
  cache.store(keys[3], bytes(4000))   # a store trims the cache
  assert cache.lookup(keys[0]) is None and all(cache.lookup(k) is not None for k in keys[1:])
  assert cache.info().bytes <= cache.max_bytes()


def test_a_cpu_kernel_split_over_cores_runs_its_slices_on_each_core_with_the_same_result(cache_dir, monkeypatch):
  """tinygrad 0.14 calls a THREAD-split CPU kernel's slices one after the other on one thread; a replayed step runs
  them at once, the calling thread and a helper each taking slices, and computes the same numbers."""
  import threading

  from tfm.runtime import cores
  if cores.CORES.helpers < 1: pytest.skip("one core: nothing to split over")
  rng = np.random.default_rng(0)
  a, w = rng.standard_normal((32, 256), dtype=np.float32), rng.standard_normal((1024, 256), dtype=np.float32)
  x, weight, out = to_device(a, "CPU"), to_device(w, "CPU"), to_device(np.zeros((32, 1024), np.float32), "CPU")
  step = CompiledStep(lambda: out.assign(x @ weight.T).realize(), None, contextlib.nullcontext)
  step()   # the capture, computed by tinygrad
  expected = download(out)
  np.testing.assert_allclose(expected, a @ w.T, rtol=1e-4, atol=1e-4)
  assert any(cores.core_slot(launch[0]) is not None for launch in step.launches), "no kernel was split over cores"
  threads, call = set(), cores.CORES.run
  def recorded(runtime, bufs, vals, slot, slices):
    def fxn(*args):   # the program, noting each slice's thread
      threads.add(threading.current_thread().name)
      return runtime.fxn(*args)
    call(types.SimpleNamespace(fxn=fxn), bufs, vals, slot, slices)
  monkeypatch.setattr(cores.CORES, "run", recorded)
  upload(out, np.zeros((32, 1024), np.float32))
  step()   # replayed: the slices on both threads
  assert len(threads) == 2 and threading.current_thread().name in threads, threads
  assert np.array_equal(download(out), expected)   # the same slices, so the same bits
  monkeypatch.setenv("TFM_CORES", "0")
  threads.clear()
  step()
  assert not threads   # switched off: tinygrad's own call, slices in turn


def test_an_eager_call_runs_a_split_kernels_slices_on_each_core_with_the_same_result(monkeypatch):
  """With tfm's patch (installed by the first model compiled for CPU), a kernel realized eagerly, outside any replayed
  step, runs its slices on the calling thread and a helper at once, with tinygrad's numbers; undone, in turn again."""
  import threading

  from tinygrad import Tensor

  from tfm.runtime import cores, patches
  if cores.CORES.helpers < 1: pytest.skip("one core: nothing to split over")
  rng = np.random.default_rng(1)
  a, w = rng.standard_normal((48, 256), dtype=np.float32), rng.standard_normal((1024, 256), dtype=np.float32)
  x, weight = Tensor(a, device="CPU").realize(), Tensor(w, device="CPU").realize()
  installed = patches.cpu_slices_at_once()
  threads, call = set(), cores.CORES.run
  def recorded(runtime, bufs, vals, slot, slices):
    def fxn(*args):
      threads.add(threading.current_thread().name)
      return runtime.fxn(*args)
    call(types.SimpleNamespace(fxn=fxn), bufs, vals, slot, slices)
  monkeypatch.setattr(cores.CORES, "run", recorded)
  try:
    assert installed
    at_once = (x @ weight.T).numpy()
    assert len(threads) == 2 and threading.current_thread().name in threads, threads
  finally: patches.restore_cpu_slices()
  threads.clear()
  in_turn = (x * 1 @ weight.T).numpy()   # another graph, the same product: compiled and run as tinygrad runs it
  assert not threads
  np.testing.assert_allclose(at_once, a @ w.T, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(at_once, in_turn, rtol=0, atol=1e-5)


# --- whole models, across processes --------------------------------------------------------------------------------

DECODE = textwrap.dedent("""
  import json, sys
  import numpy as np
  import tfm
  from tfm.runtime import cache
  model = tfm.load(sys.argv[1], device="CPU")
  src = np.array(json.loads(sys.argv[2]), dtype=np.int32)
  greedy, greedy_scores = tfm.generate(model, src, max_len=8, return_scores=True)
  beam, beam_scores = tfm.generate(model, src, beam_size=3, max_len=8, return_scores=True)
  print(json.dumps({"greedy": greedy.tolist(), "beam": beam.tolist(), "scores": [*map(float, greedy_scores), *map(float, beam_scores)],
                    "hits": cache.stats.hits, "misses": cache.stats.misses}))
""")


def test_a_new_process_decodes_from_the_compiled_steps_tfm_compile_stored(tiny_model, tmp_path, cache_dir):
  path = str(tmp_path / "tiny.safetensors")
  tfm.save(tiny_model, path)
  env = {"TFM_CACHE_DIR": str(cache_dir)}
  run([PYTHON, "-m", "tfm.cli", "compile", path, "--device", "CPU", "--batch", "2", "--beam", "1,3", "--max-len", "8"], env)
  assert cache.info().entries >= 4   # two encoder passes (1 and 3 beams) and their decode steps
  out = json.loads(run([PYTHON, "-c", DECODE, path, json.dumps(SRC.tolist())], env).stdout.splitlines()[-1])
  assert out["misses"] == 0 and out["hits"] == 4, "the new process compiled steps instead of relaunching them"
  uncached = json.loads(run([PYTHON, "-c", DECODE, path, json.dumps(SRC.tolist())], {"TFM_CACHE": "0"}).stdout.splitlines()[-1])
  assert out["greedy"] == uncached["greedy"] and out["beam"] == uncached["beam"]
  assert out["scores"] == uncached["scores"]   # the same kernels in the same order: the same floats


def test_tfm_cache_info_and_clear(cache_dir):
  cache.store(cache.key_for({"test": "cli"}, "CPU"), b"payload")
  info = run([PYTHON, "-m", "tfm.cli", "cache", "info"], {"TFM_CACHE_DIR": str(cache_dir)}).stdout
  assert str(cache_dir / "programs") in info and "entries: 1 compiled steps" in info
  assert "removed 1 compiled steps" in run([PYTHON, "-m", "tfm.cli", "cache", "clear"], {"TFM_CACHE_DIR": str(cache_dir)}).stdout
  assert cache.info().entries == 0


THREADS = textwrap.dedent("""
  import threading, tfm
  translator = tfm.Translator.bundled(device="CPU")   # the main thread builds the Translator
  result = {"main": translator.translate(["3rd of March, 2021"])}   # and translates: it opens the cache database
  def work():
    try: result["worker"] = translator.translate(["July 4, 1976", "12.10.2030"])   # a new shape: compiles here
    except Exception as e: result["error"] = repr(e)
  worker = threading.Thread(target=work)
  worker.start(); worker.join()
  print(result)
""")


def test_a_translator_that_translated_in_the_main_thread_translates_in_a_worker_thread(tmp_path):
  # the case, with Translator used directly: a fresh tinygrad kernel cache and compiling in this process
  # (PARALLEL=0), so both threads open the cache database (tinygrad 0.14 alone: ProgrammingError in the worker)
  env = {"CACHEDB": str(tmp_path / "tinygrad.db"), "PARALLEL": "0", "TFM_CACHE": "0"}
  out = run([PYTHON, "-c", THREADS], env).stdout
  assert "{'main': ['2021-03-03'], 'worker': ['1976-07-04', '2030-10-12']}" in out, out


# --- saved probe results -------------------------------------------------------------------------------------------

def test_probe_results_are_reused_by_a_new_process_until_the_environment_changes(cache_dir, monkeypatch):
  calls = []
  def probed(b, timeout):
    calls.append(b.name)
    return probe_mod.BackendInfo(b.name, b.target, probe_mod.RUNS, device="a test device")
  monkeypatch.setattr(probe_mod, "_probe_subprocess", probed)
  monkeypatch.setattr(probe_mod, "_results", {})
  assert probe_mod.probe("CPU").device == "a test device" and calls == ["CPU"]
  monkeypatch.setattr(probe_mod, "_results", {})   # a new process: nothing in memory, the saved result on disk
  assert probe_mod.probe("CPU").device == "a test device" and calls == ["CPU"]
  probe_mod.probe("CPU", fresh=True)
  assert calls == ["CPU", "CPU"]
  monkeypatch.setattr(probe_mod, "_results", {})
  monkeypatch.setattr(probe_mod, "_environment", lambda: "a compiler was installed since")
  probe_mod.probe("CPU")
  assert calls == ["CPU", "CPU", "CPU"]


def test_a_probe_that_timed_out_is_not_saved(cache_dir, monkeypatch):
  monkeypatch.setattr(probe_mod, "_results", {})
  monkeypatch.setattr(probe_mod, "_probe_subprocess", lambda b, timeout: probe_mod.BackendInfo(
    b.name, b.target, probe_mod.UNAVAILABLE, reason="probe timed out after 1 s (a hung driver?)"))
  probe_mod.probe("CL")
  assert "CL" not in probe_mod._saved()


def test_loading_builds_no_kernel(tiny_model, tmp_path):
  from tinygrad.helpers import GlobalCounters
  path = tmp_path / "tiny.safetensors"
  tfm.save(tiny_model, path)
  before = GlobalCounters.kernel_count
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    model = tfm.load(path, device="CPU")
  assert GlobalCounters.kernel_count == before, "tfm.load ran kernels (random initialisation, or a copy per weight)"
  assert isinstance(model.generator.weight, Tensor) and model.generator.weight.uop.is_realized
