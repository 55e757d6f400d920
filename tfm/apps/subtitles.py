"""A transcript written out: plain text, SubRip (.srt) and WebVTT (.vtt) subtitles, or JSON, each written whole or not
at all (tfm.files.write_text).

    txt    one line per segment, its text without the leading space Whisper's tokens carry
    srt    numbered cues "00:01:02,500 --> 00:01:04,000" and their text, a blank line after each
    vtt    "WEBVTT", then cues "00:01:02.500 --> 00:01:04.000" and their text
    json   {"text", "language", "duration", "segments": [{"id", "start", "end", "text"}]}, times in seconds
"""
from __future__ import annotations

import json
import os
from typing import Any

from tfm.errors import InputError
from tfm.files import write_text

FORMATS = ("txt", "srt", "vtt", "json")


def timestamp(seconds: float, decimal: str = ",") -> str:
  """Seconds -> "HH:MM:SS,mmm" (SubRip; WebVTT's decimal is "."), rounded to the millisecond."""
  ms = max(0, round(seconds * 1000))
  return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{decimal}{ms % 1000:03d}"


def cue_text(text: str) -> str:
  """A segment's text as one cue line: stripped, "-->" (which would end a cue's timing line) written as "->"."""
  return " ".join(text.split()).replace("-->", "->")


def as_dict(transcript: Any) -> dict[str, Any]:
  """What the json format holds: times rounded to the millisecond."""
  return {"text": transcript.text.strip(), "language": transcript.language, "duration": round(transcript.duration, 3),
          "segments": [{"id": n, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text.strip()}
                       for n, s in enumerate(transcript.segments)]}


def render(transcript: Any, fmt: str) -> str:
  """A tfm.apps.transcriber.Transcript in one of FORMATS, as text ending with a newline."""
  check_format(fmt)
  segments = [s for s in transcript.segments if s.text.strip()]
  if fmt == "txt": return "".join(f"{cue_text(s.text)}\n" for s in segments)
  if fmt == "json": return json.dumps(as_dict(transcript), ensure_ascii=False, indent=2) + "\n"
  if fmt == "srt":
    return "".join(f"{n}\n{timestamp(s.start)} --> {timestamp(s.end)}\n{cue_text(s.text)}\n\n" for n, s in enumerate(segments, 1))
  return "WEBVTT\n\n" + "".join(f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{cue_text(s.text)}\n\n" for s in segments)


def write(transcript: Any, path: str | os.PathLike, fmt: str | None = None) -> str:
  """Write the transcript to path (replaced atomically) in `fmt`, or the format its extension names; returns the format."""
  fmt = fmt or format_of(path)
  write_text(path, render(transcript, fmt))
  return fmt


def format_of(path: str | os.PathLike, default: str = "txt") -> str:
  """The format a file name's extension names (out.srt -> srt), `default` for any other extension."""
  ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
  return ext if ext in FORMATS else default


def check_format(fmt: str) -> str:
  if fmt not in FORMATS: raise InputError(f"unknown transcript format {fmt!r}; choose one of {', '.join(FORMATS)}")
  return fmt
