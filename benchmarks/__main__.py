"""`python -m benchmarks decode|forward|train|translate|int8|steps|devices|file|vit|serve|gemm|ray|whisper|all [--backends CPU,CL] [--json FILE]`:
each benchmark is a module
`benchmarks.<name>` with `add_arguments(parser)` and `run(args) -> list[dict]` (one dict per table row)."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from tfm.files import write_text

BENCHMARKS = ("forward", "train", "decode", "memory", "startup", "translate", "int8", "steps", "devices", "file", "vit", "serve", "gemm", "ray",
              "whisper")


def _available() -> list[str]:
  here = os.path.dirname(__file__)
  return [name for name in BENCHMARKS if os.path.exists(os.path.join(here, f"{name}.py"))]


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m benchmarks", description="tfm benchmarks, side by side with PyTorch")
  parser.add_argument("--json", help="also write every row as JSON to this file (replaced atomically)")
  # --json is accepted after the benchmark's name too: python -m benchmarks decode --json out.json
  json_option = argparse.ArgumentParser(add_help=False)
  json_option.add_argument("--json", default=argparse.SUPPRESS, help="as above")
  sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
  for name in _available():
    module = importlib.import_module(f"benchmarks.{name}")
    module.add_arguments(sub.add_parser(name, parents=[json_option], help=(module.__doc__ or "").splitlines()[0]))
  p = sub.add_parser("all", parents=[json_option], help="every benchmark with its default arguments")
  p.add_argument("--backends", default="CPU,CL", help="comma-separated tinygrad backends (default: CPU,CL)")
  return parser


def write_json(path: str, rows: list[dict]) -> None:
  write_text(path, json.dumps(rows, indent=1))


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  rows: list[dict] = []
  for name in (_available() if args.bench == "all" else [args.bench]):
    module = importlib.import_module(f"benchmarks.{name}")
    if args.bench == "all":  # each benchmark's own defaults, with the backends asked for
      sub = argparse.ArgumentParser()
      module.add_arguments(sub)
      bench_args = sub.parse_args(["--backends", args.backends])
    else: bench_args = args
    command = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    rows += [{**row, "command": command} for row in module.run(bench_args)]
  if args.json: write_json(args.json, rows)
  return 0


if __name__ == "__main__":
  sys.exit(main())
