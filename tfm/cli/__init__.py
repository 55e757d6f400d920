"""The `tfm` command line: one subcommand per job, each with --help that explains its options by example.

tfm.cli.parser builds the parser, tfm.cli.commands (and tfm.cli.serve) do what each subcommand says; main() runs one and
maps errors to exit codes."""
from __future__ import annotations

import os
import sys
import traceback

from backends.registry import SelectionError
from tfm.cli.parser import build_parser
from tfm.errors import TfmError

# what a user can fix: tfm's own errors, a backend that cannot be used, a path that is missing or not allowed. Any other
# exception is tfm's fault (or a library's under it): "internal error", exit 70
USER_ERRORS = (TfmError, SelectionError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    code = int(args.func(args) or 0)
    sys.stdout.flush()  # inside the try: a reader that went away fails here, not in the interpreter's exit flush
    return code
  except BrokenPipeError:
    # the reader closed the pipe (`tfm backends | head -1`): stop quietly, as command-line tools do on SIGPIPE
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141
  except USER_ERRORS as e:  # bad arguments, files, devices: the message says what to fix
    if args.debug: traceback.print_exc()
    print(f"tfm {args.command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"tfm {args.command}: interrupted", file=sys.stderr)
    return 130
  except Exception as e:  # a fault of tfm or a library under it: one line, the traceback on request
    if args.debug: traceback.print_exc()
    print(f"tfm {args.command}: internal error: {type(e).__name__}: {e} (run `tfm --debug {args.command} ...` for the "
          f"traceback)", file=sys.stderr)
    return 70  # sysexits' EX_SOFTWARE: not 1, which `tfm compare` uses for a backend out of tolerance

