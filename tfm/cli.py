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
  # each command module adds its parser here; keep them in the order of the docs
  return parser


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
