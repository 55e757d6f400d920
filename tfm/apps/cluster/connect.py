"""Reaching Ray, the one library tfm runs on past one machine: imported only here and only when asked for (so `import
tfm` never needs it), a cluster joined or started for the length of a block, and the options that give each actor its
share of a machine: its cores (tinygrad's CPU thread count follows them), its GPUs, its environment."""
from __future__ import annotations

import contextlib
import os

from tfm.errors import ConfigError, TfmError

INSTALL = "pip install 'tfm[ray]'"
# tinygrad splits a CPU kernel over NUM_CPU_THREADS threads, all the machine's cores by default: an actor given one
# core that kept the default would fight every other actor on its machine for all of them
THREADS_VARIABLE = "NUM_CPU_THREADS"   # tinygrad-0.14: read once, when tinygrad is imported
# tinygrad-0.14: kernels compile in a pool of PARALLEL spawned processes; when Ray ends an actor, the pool's idle workers
# can die holding the pool's queue lock and the actor's exit then waits on it forever (an orphan process left behind).
# PARALLEL=0 compiles in the actor's own process: slower warm-up with several cores, once per machine (the cache keeps it)
COMPILE_POOL = {"PARALLEL": "0"}


def need_ray():
  """The ray module, or a TfmError that says how to install it."""
  try:
    import ray
  except ImportError as e:
    raise TfmError(f"running on a Ray cluster needs Ray, which is not installed here ({e}); {INSTALL}") from None
  return ray


@contextlib.contextmanager
def connected(address: str | None = None, **init):
  """Ray, joined for the block: the Ray this process already runs (left running), else the cluster at `address`
  ("host:port" of the head, "ray://host:10001", "auto"), else (None) RAY_ADDRESS, the cluster `ray start` began on this
  machine, or a new local one, as ray.init decides; one this block started is shut down after it. `init` goes to ray.init."""
  ray = need_ray()
  if ray.is_initialized():
    yield ray
    return
  try: ray.init(address=address or None, **init)
  except ConnectionError as e:
    raise TfmError(f"cannot reach a Ray cluster at {address or 'auto'} ({e}); start one with `ray start --head` and give "
                   f"its address (--ray HOST:6379), or leave the address out to start one on this machine") from None
  try: yield ray
  finally: ray.shutdown()


def actor_options(cpus: int = 1, gpus: float = 0, env: dict[str, str] | None = None) -> dict:
  """ray.remote options of one actor that holds a model: `cpus` cores reserved (and tinygrad's CPU kernels split over
  that many threads), `gpus` GPUs reserved (a fraction shares one), `env` more environment variables for it (TFM_*,
  tinygrad's). A bad number is a ConfigError naming the flag."""
  if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
    raise ConfigError(f"--cpus-per-worker must be an integer >= 1 (the cores each worker reserves), got {cpus!r}")
  if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or gpus < 0 or (gpus > 1 and gpus != int(gpus)):
    raise ConfigError(f"--gpus-per-worker must be a fraction in [0, 1] or a whole number of GPUs, got {gpus!r}")
  variables = {THREADS_VARIABLE: str(cpus), **COMPILE_POOL, **{k: str(v) for k, v in (env or {}).items()}}
  return {"num_cpus": cpus, "num_gpus": gpus, "runtime_env": {"env_vars": variables}}


def unwrapped(ray, error: Exception) -> Exception:
  """The TfmError a Ray task raised, as the caller would have got it in one process; other errors as Ray gave them."""
  cause = getattr(error, "cause", None) if isinstance(error, ray.exceptions.RayTaskError) else None
  return cause if isinstance(cause, TfmError) else error


def memory_mb() -> float:
  """This process's resident memory, in MiB (Linux: /proc; elsewhere its peak, from getrusage)."""
  try:
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except OSError:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
