"""Tables as text, the two ways tfm prints them: aligned columns for a terminal, and markdown for the docs.
Rows are lists of strings, the header first. (Here, at the bottom of the layers, so that every part can use them.)"""
from __future__ import annotations


def aligned(rows: list[list[str]], sep: str = " | ", right: bool = False) -> str:
  """Columns padded to their widest cell, joined by sep; the last column is left unpadded (it may be long prose)."""
  widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
  def pad(text: str, width: int) -> str: return text.rjust(width) if right else text.ljust(width)
  return "\n".join(sep.join([*(pad(r[c], widths[c]) for c in range(len(widths))), r[-1]]).rstrip() for r in rows)


def markdown(rows: list[list[str]]) -> str:
  """A markdown table: the first row is the header; a | inside a cell is escaped."""
  def line(row: list[str]) -> str: return "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
  return "\n".join([line(rows[0]), "|" + "---|" * len(rows[0]), *(line(r) for r in rows[1:])])
