"""backends.kernels: rendering a Transformer layer for every kernel language without hardware, NVRTC, kernel files."""
from __future__ import annotations
import pytest
from tinygrad import Context, Tensor
from backends import kernels


def layer() -> Tensor: return kernels.example_layer()   # one shape throughout: tinygrad compiles each new shape


@pytest.fixture(scope="module")
def cuda_kernels() -> list[kernels.Kernel]: return kernels.render(layer, "cuda")


@pytest.mark.parametrize("target, marker", [
  ("cuda", 'extern "C" __global__'), ("ptx", ".entry"), ("metal", "kernel void"), ("opencl", "__kernel void"),
  ("cpu", "float* restrict data0"), ("llvm", "define"), ("wgsl", "@compute"),
])
def test_every_kernel_renders_in_the_targets_language(target, marker):
  rendered = kernels.render(layer, target)
  assert len(rendered) >= 5   # attention, softmax, layernorm, FFN kernels
  assert all(marker in k.source and k.name in k.source for k in rendered)


def test_ptx_names_its_version_and_arch():
  assert all(".version 7.5\n.target sm_80" in k.source for k in kernels.render(layer, "ptx"))


def test_cuda_float32_matmuls_render_without_tf32_like_a_real_cuda_device(cuda_kernels):
  assert not any("mma.sync" in k.source for k in cuda_kernels)
  with Context(ALLOW_TF32=1): tf32 = kernels.render(layer, "cuda")
  assert any("mma.sync" in k.source and "tf32" in k.source for k in tf32)


def test_unknown_target_lists_the_languages():
  with pytest.raises(ValueError, match="unknown kernel target 'vulkan': expected one of cuda, ptx, metal, opencl, cpu, llvm, wgsl"):
    kernels.render(layer, "vulkan")


def test_write_kernels_writes_one_file_per_kernel(tmp_path):
  rendered = kernels.render(layer, "opencl")
  summary = kernels.write_kernels(rendered, tmp_path / "cl", "opencl")
  files = sorted((tmp_path / "cl").iterdir())
  assert summary.count == len(rendered) == len(files) and not summary.compiled
  assert all(f.suffix == ".cl" for f in files) and files[0].read_text() == rendered[0].source
  assert summary.bytes == sum(f.stat().st_size for f in files)


needs_nvrtc = pytest.mark.skipif(kernels.nvrtc_path() is None, reason=f"libnvrtc not installed: {kernels.NVRTC_PIP}")


@needs_nvrtc
def test_nvrtc_compiles_the_cuda_kernels_to_ptx(cuda_kernels):
  ptx = kernels.compile_cuda(cuda_kernels, arch="sm_80")
  assert [k.name for k in ptx] == [k.name for k in cuda_kernels]
  assert all(".target sm_80" in p.source and f".entry {p.name}(" in p.source for p in ptx)


@needs_nvrtc
def test_nvrtc_errors_name_the_kernel():
  broken = kernels.Kernel("broken", 'extern "C" __global__ void broken(float* a) { a[0] = undefined_name; }')
  with pytest.raises(kernels.CompileError, match="(?s)NVRTC could not compile kernel 'broken' for sm_80.*undefined_name"):
    kernels.compile_cuda([broken])


@needs_nvrtc
def test_write_kernels_compile_checks_cuda(tmp_path, cuda_kernels):
  summary = kernels.write_kernels(cuda_kernels, tmp_path, "cuda")
  assert summary.compiled and "compile-checked" in summary.note
  assert len(list(tmp_path.glob("*.cu"))) == len(list(tmp_path.glob("*.ptx"))) == len(cuda_kernels)
