"""The `tfm` command line: one subcommand per job, each with --help that explains its options by example."""
from __future__ import annotations

import argparse
import sys
import traceback

from tfm.errors import TfmError


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="tfm", formatter_class=argparse.RawDescriptionHelpFormatter,
    description="The Transformer of 'Attention Is All You Need' on any backend tinygrad reaches.",
    epilog="examples:\n  tfm backends\n  tfm translate \"3rd of March, 2021\"\n  tfm compare --backends all")
  parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  add_backends(sub)
  add_kernels(sub)
  return parser


def _command(sub, name: str, help: str, example: str) -> argparse.ArgumentParser:
  return sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                        formatter_class=argparse.RawDescriptionHelpFormatter)


def add_backends(sub) -> None:
  p = _command(sub, "backends", "list every tinygrad backend: runs here, compile-only, or unavailable (with the fix)",
               "tfm backends --timeout 30")
  p.add_argument("--timeout", type=float, default=20.0, help="seconds each probe may take (default: 20)")
  p.set_defaults(func=cmd_backends)


def cmd_backends(args) -> int:
  import backends
  print(backends.format_table(backends.available(timeout=args.timeout)))
  return 0


def add_kernels(sub) -> None:
  from backends.kernels import LANGUAGES
  p = _command(sub, "kernels", "write the kernels of a model's forward pass (attention, layernorm, FFN) in a kernel "
               "language, one file per kernel, without the hardware; CUDA is also compiled to PTX when NVRTC is present",
               "tfm kernels --target cuda --out kernels/")
  p.add_argument("--target", required=True, choices=sorted(LANGUAGES), help="kernel language to render")
  p.add_argument("--out", required=True, help="directory to write the kernel files into (created if missing)")
  p.add_argument("--config", default="tiny", help="preset of the model whose forward pass is rendered (default: tiny)")
  p.add_argument("--arch", default=None, help="architecture, e.g. sm_90 for cuda/ptx or Apple9 for metal")
  p.set_defaults(func=cmd_kernels)


def cmd_kernels(args) -> int:
  import numpy as np

  from backends import kernels
  from tfm.config import TransformerConfig
  from tfm.model import Transformer
  # one layer of each stack is every kernel kind the model has; more layers repeat the same kernels
  config = TransformerConfig.preset(args.config, n_encoder_layers=1, n_decoder_layers=1)
  src, tgt = np.full((1, 8), 5), np.full((1, 8), 6)

  def forward():
    model = Transformer(config, device=None)  # built on the NULL device render() sets: nothing runs or is allocated
    source = model.ids(src, "src")
    return model.run_decoder(model.ids(tgt, "tgt"), model.run_encoder(source), model.padding_mask(source))
  rendered = kernels.render(forward, args.target, args.arch)
  print(kernels.write_kernels(rendered, args.out, args.target, **({"arch": args.arch} if args.arch else {})))
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return int(args.func(args) or 0)
  except (TfmError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as e:
    if args.debug: traceback.print_exc()
    print(f"tfm {args.command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"tfm {args.command}: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
