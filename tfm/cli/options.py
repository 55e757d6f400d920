"""What the `tfm` parser's pieces share: a subcommand with its help and example, and size lists such as --beam 1,4."""
from __future__ import annotations

import argparse

from tfm.errors import TfmError


def subcommand(sub, name: str, help: str, example: str) -> argparse.ArgumentParser:
  return sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                        formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_sizes(text: str, flag: str) -> tuple[int, ...]:
  """'1,8' -> (1, 8): positive integers, or an error naming the flag."""
  try: sizes = tuple(int(x) for x in text.split(","))
  except ValueError: sizes = ()
  if not sizes or min(sizes) < 1: raise TfmError(f"{flag} takes positive integers separated by commas (e.g. 1,8), got {text!r}")
  return sizes
