"""The backend-selection layer: which tinygrad backends exist, which run here, which to use. Never imports tfm.

    import backends
    backends.available()            # [BackendInfo(name, target, status, device, reason, accelerator), ...]
    print(backends.format_table(backends.available()))
    info = backends.select("auto")  # or "CL", "cpu:llvm", ["CUDA", "CL"], "CUDA,CL,CPU"; $TFM_DEVICE overrides "auto"

Running on the selected backend. tinygrad 0.14 chooses a device's renderer from DEV when it compiles, keyed by the
bare device name, so `Tensor(x, device="CPU:LLVM")` quietly compiles with clang on a second CPU device. Put the
tensors on `info.device_name` ("CPU" for "CPU:LLVM") and realize under `backends.use(info)`, which sets DEV to
`info.target` for the block (inside it, tinygrad's default device is `info.device_name` too):

    with backends.use(info):
      x = Tensor(data, device=info.device_name)
      y = model(x).realize()

For plain targets ("CL", "CPU", "CUDA") `device=info.target` alone works unless the environment's DEV names another
renderer for that device; `use` is what makes "CPU:LLVM", "CPU:X86" and "CUDA:PTX" mean what they say, so realize under
it always. Kernels a TinyJit captured inside `use` keep their renderer when replayed outside it.
`backends.kernels` renders kernels for any language without the hardware, and compiles CUDA with NVRTC.
"""
import os

from backends import kernels, webgpu
from backends.probe import available, probe
from backends.registry import BACKENDS, COMPILE_ONLY, NAMES, RUNS, UNAVAILABLE, BackendInfo, SelectionError, format_table, lookup
from backends.select import BackendUnavailable, select, use

# PoCL (the OpenCL of CPU-only Linux machines) prints "1 warning generated." for many of tinygrad's generated kernels
# the first time it compiles them: hundreds of lines that no user can act on. -w silences its compiler's warnings
# (errors still surface); a value the user set is kept. PoCL reads it at each build, so setting it here is in time.
os.environ.setdefault("POCL_EXTRA_BUILD_FLAGS", "-w")
# tinygrad finds Dawn only through WEBGPU_PATH (or a system library): point it at dawn-python's, before any device opens
webgpu.prepare()

__all__ = ["BACKENDS", "COMPILE_ONLY", "NAMES", "RUNS", "UNAVAILABLE", "BackendInfo", "BackendUnavailable", "SelectionError",
           "available", "format_table", "kernels", "lookup", "probe", "select", "use"]
