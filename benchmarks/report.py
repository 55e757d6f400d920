"""Write benchmark results (the JSON files `python -m benchmarks ... --json FILE` writes) into docs/PERFORMANCE.md.

    python -m benchmarks.report forward.json train.json [--doc docs/PERFORMANCE.md]

The measured tables go between the `<!-- measured:start -->` and `<!-- measured:end -->` lines of the document, so the
analysis written around them stays; a missing document is created with just the tables. The write is atomic.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import sys

from backends.tables import markdown
from tfm.files import write_text

START, END = "<!-- measured:start -->", "<!-- measured:end -->"
COLUMNS = ["config", "shape", "backend", "mode", "first_s", "median_ms", "ratio", "cpu_ms", "cpu_ratio", "max_abs_diff",
           "kernels", "gflops", "cores", "load"]
HEADINGS = {"first_s": "first call (s)", "median_ms": "median (ms)", "ratio": "tfm / PyTorch", "cpu_ms": "CPU time (ms)",
            "cpu_ratio": "CPU time tfm / PyTorch", "max_abs_diff": "max abs diff", "tuned": "tuned kernels found",
            "gflops": "GFLOP/s", "cores": "cores busy", "load": "load avg", "weights_mb": "weights (MiB)",
            "peak_mb": "peak added (MiB)", "peak_ratio": "peak / weights", "load_s": "load (s)",
            "cold_s": "fresh process, empty caches (s)", "warm_s": "fresh process, warm caches (s)",
            "rps": "requests/s", "p50_ms": "p50 latency (ms)", "p99_ms": "p99 latency (ms)", "mean_batch": "mean batch",
            "same": "same answers"}


def machine() -> str:
  """CPU model, core count, OS and library versions, as one line."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration): pass
  versions = []
  for name in ("tinygrad", "torch"):
    try: versions.append(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError: pass
  try: system = platform.freedesktop_os_release().get("PRETTY_NAME")
  except (OSError, AttributeError): system = None  # not Linux, or Python < 3.10
  return (f"{cpu}, {os.cpu_count()} cores, {system or platform.system()} (kernel {platform.release()}), "
          f"Python {platform.python_version()}, {', '.join(versions)}")


def cell(value) -> str:
  if value is None: return "-"
  if isinstance(value, float):
    if value == 0: return "0"
    return f"{value:.2e}" if abs(value) < 1e-3 else f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
  return str(value)


def markdown_table(rows: list[dict], columns: list[str] = COLUMNS) -> str:
  present = [c for r in rows for c in r if c not in ("bench", "command", "torch_ms")]
  columns = [c for c in columns if c in present] + [c for c in dict.fromkeys(present) if c not in columns]
  return markdown([[HEADINGS.get(c, c) for c in columns]] + [[cell(r.get(c)) for c in columns] for r in rows])


def render(results: dict[str, list[dict]], date: str | None = None) -> str:
  """The measured section: date, machine, then one table per benchmark with the command that produced it."""
  out = [START, f"Measured {date or datetime.date.today().isoformat()} on: {machine()}.", ""]
  for bench, rows in results.items():
    commands = sorted({r["command"] for r in rows if r.get("command")})
    out += [f"### {bench}", ""] + [f"`{c}`" for c in commands] + ([""] if commands else []) + [markdown_table(rows), ""]
  return "\n".join(out + [END])


def update(doc: str, section: str) -> None:
  """Replace the measured section of doc (or create doc), atomically: a crash never leaves half a document."""
  if os.path.exists(doc):
    with open(doc, encoding="utf-8") as f: text = f.read()
    if START in text and END in text:
      text = text[:text.index(START)] + section + text[text.index(END) + len(END):]
    else: text = text.rstrip("\n") + "\n\n" + section + "\n"
  else: text = "# Performance\n\n" + section + "\n"
  write_text(doc, text)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
  parser.add_argument("results", nargs="+", help="JSON files written by `python -m benchmarks ... --json FILE`")
  parser.add_argument("--doc", default="docs/PERFORMANCE.md", help="document to update (default: docs/PERFORMANCE.md)")
  parser.add_argument("--date", help="date to print (default: today)")
  args = parser.parse_args(argv)
  results: dict[str, list[dict]] = {}
  for path in args.results:
    with open(path, encoding="utf-8") as f: rows = json.load(f)
    for r in rows: results.setdefault(r.get("bench", "results"), []).append(r)
  update(args.doc, render(results, args.date))
  print(f"wrote {sum(map(len, results.values()))} rows to {args.doc}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
