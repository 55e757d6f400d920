"""Vision Transformer forward pass: logits (B, classes) of the same weights in tfm (eager and TinyJit) on each backend
and in transformers' ViTForImageClassification (PyTorch eager), with the tfm/PyTorch time ratio and the largest logit
difference between them.

    python -m benchmarks vit --backends CPU,CL --preset vit-s16 --batch 8      # ViT-S/16 at 224 x 224, 1000 classes

With transformers installed the weights are a ViTForImageClassification's random initialisation (seed 0), saved with
save_pretrained into a temporary folder and imported by tfm.from_pretrained, so both frameworks run the same checkpoint;
without it, tfm's own random initialisation and tfm alone.
"""
from __future__ import annotations

import tempfile

import numpy as np
from tinygrad import Device, Tensor, TinyJit

from benchmarks.common import Timing, load_average, measure, print_rows, ratio, timed_torch, torch_or_none, torch_thread_counts
from benchmarks.forward import counted
from tfm.io import weights
from tfm.config import VISION_PRESETS, VisionConfig
from tfm.nn.vit import VisionTransformer

COLUMNS = ["bench", "config", "shape", "backend", "mode", "first_s", "median_ms", "torch_ms", "ratio", "cpu_ms", "cpu_ratio",
           "max_abs_diff", "kernels", "gflops", "cores", "load"]


def add_arguments(parser) -> None:
  parser.add_argument("--backends", default="CPU,CL", help="comma-separated tinygrad backends (default: CPU,CL)")
  parser.add_argument("--preset", default="vit-s16", choices=sorted(VISION_PRESETS), help="ViT size (default: vit-s16)")
  parser.add_argument("--batch", type=int, default=8, help="images per batch (default: 8)")
  parser.add_argument("--reps", type=int, default=3, help="timed repetitions after warm-up; the median is reported (default: 3)")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch side even when torch is installed")


def hf_checkpoint(config: VisionConfig, folder: str) -> None:
  """A ViTForImageClassification of this config with transformers' random initialisation (seed 0), saved in folder."""
  import torch
  from transformers import ViTConfig, ViTForImageClassification
  torch.manual_seed(0)
  hf = ViTConfig(hidden_size=config.d_model, num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
                 intermediate_size=config.d_ff, image_size=config.image_size, patch_size=config.patch_size,
                 num_channels=config.num_channels, num_labels=config.num_labels, layer_norm_eps=config.layer_norm_eps,
                 hidden_act="gelu", attn_implementation="eager")
  ViTForImageClassification(hf).eval().save_pretrained(folder)


def torch_row(torch, folder: str, pixels: np.ndarray, args, base: dict, threads: int) -> dict:
  """transformers' ViT eager on the checkpoint with `threads` intra-op threads."""
  from transformers import ViTForImageClassification
  model = ViTForImageClassification.from_pretrained(folder, attn_implementation="eager").eval()
  x = torch.from_numpy(pixels)

  def forward():
    with torch.inference_mode(): return model(pixel_values=x).logits
  return timed_torch(torch, forward, threads, args.reps, base)


def run(args) -> list[dict]:
  config = VisionConfig.preset(args.preset)
  rng = np.random.default_rng(0)
  pixels = rng.uniform(-1, 1, (args.batch, config.num_channels, config.image_size, config.image_size)).astype(np.float32)
  base = dict(bench="vit", config=args.preset, shape=f"{args.batch}x{config.num_channels}x{config.image_size}x{config.image_size}")
  rows: list[dict] = []
  torch = torch_or_none(args)
  with tempfile.TemporaryDirectory(prefix="tfm-vit-bench-") as folder:
    torch_logits = torch_ms = torch_cpu_ms = None
    if torch is not None:
      from tfm.interop.vit import convert_vit
      hf_checkpoint(config, folder)
      arrays = convert_vit(folder).arrays
      torch_rows = [torch_row(torch, folder, pixels, args, base, n) for n in torch_thread_counts(torch)]
      torch_logits = torch_rows[0]["logits"]
      for r in torch_rows: r.pop("logits")
      torch_ms, torch_cpu_ms = min(r["median_ms"] for r in torch_rows), min(r["cpu_ms"] for r in torch_rows)
      rows += torch_rows
      print_rows(torch_rows, COLUMNS, header=False)
    else:
      Tensor.manual_seed(0)
      arrays = weights.state_arrays(VisionTransformer(config, device="CPU"))
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
      model = weights.build(config, arrays, "the benchmark's weights", backend)
      dev = Device[model.device]
      x = model.pixels(pixels)

      def eager():
        out = model(pixels)
        dev.synchronize()
        return out

      forward = TinyJit(lambda p: model.run_classifier(p).realize())

      def jitted():
        with model.on_device(): out = forward(x)
        dev.synchronize()
        return out

      for mode, fn in (("eager", eager), ("jit", jitted)):
        load = load_average()
        t: Timing = measure(fn, args.reps, warmup=2 if mode == "jit" else 1)   # the jit captures on its second call
        kernels, ops = counted(model, fn)
        diff = None if torch_logits is None else float(np.abs(fn().numpy() - torch_logits).max())
        rows.append({**base, "backend": backend, "mode": mode, "first_s": t.first_s, "median_ms": t.median_s * 1e3,
                     "torch_ms": torch_ms, "ratio": ratio(t.median_s * 1e3, torch_ms), "cpu_ms": t.cpu_s * 1e3,
                     "cpu_ratio": ratio(t.cpu_s * 1e3, torch_cpu_ms), "max_abs_diff": diff, "kernels": kernels,
                     "gflops": ops / t.median_s / 1e9, "cores": t.cores, "load": load})
        print_rows(rows[-1:], COLUMNS, header=False)
  print("\nratio = tfm median / the faster PyTorch median, cpu_ratio = the same for CPU time per call;\n"
        "load = 1-minute load average when the row started")
  print_rows(rows, COLUMNS)
  return rows
