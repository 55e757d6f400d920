"""Whisper's tokenizer, for reading what the model wrote: a checkpoint folder's tokenizer.json (byte-level BPE) with the
special tokens around it (<|endoftext|>, <|startoftranscript|>, the languages, the tasks, <|notimestamps|>) and, from
<|0.00|> on, one timestamp token per 0.02 s of the 30-second window.

decode gives the text of generated ids: special and timestamp tokens dropped, as transformers' WhisperTokenizer
decode(..., skip_special_tokens=True) gives it. split cuts one window's ids at its timestamp tokens into segments
(start, end, text), and says where the next window starts, as WhisperForConditionalGeneration.generate does for audio
longer than one window: a segment is the text between a start and an end timestamp; where the window ends inside a
segment, that segment is left for the next window, which starts at the last complete segment's end.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from tfm.errors import InputError, WeightsError
from tfm.io.subwords import Pipeline

TIME_PRECISION = 0.02   # seconds per timestamp token: one encoder position (two 10 ms frames)
FRAMES_PER_POSITION = 2
EOT, SOT, NO_TIMESTAMPS = "<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"
LANGUAGE = re.compile(r"<\|([a-z]{2,3})\|>")
# Whisper's languages by English name (the names its tokenizer gives them, and their common other names) -> code
NAMES = dict(pair.split(":") for pair in (
  "english:en chinese:zh german:de spanish:es russian:ru korean:ko french:fr japanese:ja portuguese:pt turkish:tr polish:pl "
  "catalan:ca dutch:nl arabic:ar swedish:sv italian:it indonesian:id hindi:hi finnish:fi vietnamese:vi hebrew:he ukrainian:uk "
  "greek:el malay:ms czech:cs romanian:ro danish:da hungarian:hu tamil:ta norwegian:no thai:th urdu:ur croatian:hr bulgarian:bg "
  "lithuanian:lt latin:la maori:mi malayalam:ml welsh:cy slovak:sk telugu:te persian:fa latvian:lv bengali:bn serbian:sr "
  "azerbaijani:az slovenian:sl kannada:kn estonian:et macedonian:mk breton:br basque:eu icelandic:is armenian:hy nepali:ne "
  "mongolian:mn bosnian:bs kazakh:kk albanian:sq swahili:sw galician:gl marathi:mr punjabi:pa sinhala:si khmer:km shona:sn "
  "yoruba:yo somali:so afrikaans:af occitan:oc georgian:ka belarusian:be tajik:tg sindhi:sd gujarati:gu amharic:am yiddish:yi "
  "lao:lo uzbek:uz faroese:fo haitian_creole:ht pashto:ps turkmen:tk nynorsk:nn maltese:mt sanskrit:sa luxembourgish:lb "
  "myanmar:my tibetan:bo tagalog:tl malagasy:mg assamese:as tatar:tt hawaiian:haw lingala:ln hausa:ha bashkir:ba javanese:jw "
  "sundanese:su cantonese:yue burmese:my valencian:ca flemish:nl haitian:ht letzeburgesch:lb pushto:ps panjabi:pa "
  "moldavian:ro moldovan:ro sinhalese:si castilian:es mandarin:zh").split())


def language_code(language: str) -> str:
  """A language as people name it ("German", "haitian creole") or as Whisper codes it ("de") -> its code; any other
  string as given (lower-cased), for the model to accept or refuse with the codes it knows."""
  key = language.strip().lower()
  return NAMES.get(key.replace(" ", "_"), key)


@dataclass(frozen=True)
class Segment:
  """A stretch of a transcript: its start and end in seconds from the start of the audio, its text and token ids."""
  start: float
  end: float
  text: str
  ids: tuple[int, ...] = ()


class WhisperTokenizer:
  """The tokenizer of a Whisper checkpoint folder (tokenizer.json), for decoding: `decode` for text, `split` for
  timed segments. `timestamp_begin` is the id of <|0.00|>: token t >= timestamp_begin stands for
  (t - timestamp_begin) x 0.02 s into its window."""

  def __init__(self, pieces: Pipeline, name: str = "tokenizer.json"):
    self.pieces = pieces
    ids = {}
    for token in (EOT, SOT, NO_TIMESTAMPS):
      ids[token] = pieces.token_id(token)
      if ids[token] is None:
        raise WeightsError(f"{name} has no {token} token: it is not a Whisper tokenizer; use the tokenizer.json saved with "
                           f"the Whisper checkpoint")
    self.eot_id, self.sot_id, self.no_timestamps_id = ids[EOT], ids[SOT], ids[NO_TIMESTAMPS]
    first = pieces.token_id("<|0.00|>")
    self.timestamp_begin = first if first is not None else self.no_timestamps_id + 1   # older files leave them out
    self.special_ids = set(pieces.specials.values()) | set(ids.values())
    self.languages = {m.group(1): i for token, i in sorted(pieces.specials.items(), key=lambda kv: kv[1])
                      if (m := LANGUAGE.fullmatch(token))}

  @classmethod
  def from_dir(cls, folder: str | os.PathLike) -> WhisperTokenizer:
    """The tokenizer.json of a Whisper checkpoint folder, as transformers' save_pretrained writes it."""
    folder = os.fspath(folder)
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
      raise WeightsError(f"{folder} has no tokenizer.json: download it with the Whisper checkpoint's other files "
                         f"(transformers' WhisperProcessor.save_pretrained writes it)")
    return cls(Pipeline.from_file(path, clean_up=False), path)

  @property
  def vocab_size(self) -> int: return self.pieces.size

  def is_timestamp(self, i: int) -> bool: return i >= self.timestamp_begin

  def encode(self, text: str) -> list[int]:
    """A text's ids without special tokens (a prompt, or what a transcript should begin with)."""
    if not isinstance(text, str): raise InputError(f"encode takes a str, got {type(text).__name__}")
    return self.pieces.encode([text])[0]

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text: special tokens (<|endoftext|> too) and timestamps dropped, as transformers' decode(ids,
    skip_special_tokens=True) drops them."""
    row = self._checked(ids)
    return self.pieces.decode([i for i in row if i not in self.special_ids and i < self.timestamp_begin])

  def _checked(self, ids: Iterable[int]) -> list[int]:
    row = [int(i) for i in ids]
    bad = next((i for i in row if not 0 <= i < self.vocab_size), None)
    if bad is not None: raise InputError(f"token id {bad} out of range for vocab_size={self.vocab_size} (ids must be in [0, {self.vocab_size - 1}])")
    return row

  def split(self, ids: Sequence[int], offset: float = 0.0, frames: int = 3000) -> tuple[list[Segment], int]:
    """One window's generated ids (eot stripped) -> its segments (text decoded, ids with their timestamps), and how many
    of the window's 10 ms frames they cover: where the next window starts (see `cut`). `offset`: the window's start in
    seconds; `frames`: the frames of audio it held (3000 for a full 30-second window)."""
    row = self._checked(ids)
    pieces, covered = cut(row, self.timestamp_begin, frames)
    return [Segment(offset + a * TIME_PRECISION, offset + b * TIME_PRECISION, self.decode(row[lo:hi]), tuple(row[lo:hi]))
            for a, b, lo, hi in pieces], covered


def cut(ids: Sequence[int], timestamp_begin: int, frames: int = 3000) -> tuple[list[tuple[int, int, int, int]], int]:
  """Where one window's generated ids (eot stripped) split into segments, as WhisperForConditionalGeneration.generate
  splits them when it reads long audio: per segment (start, end) in timestamp steps of 0.02 s from the window's start
  and the (first, stop) indices of its ids; and the frames of the `frames` the window held that they cover, where the
  next window starts.

    ... <|t0|> text <|t1|><|t1|> text <|t2|>            a single timestamp at the end: no more speech; the whole
                                                        window is covered
    ... <|t1|><|t1|> text <|t2|><|t2|> unfinished text   the window ends inside a segment: it is dropped, and the
                                                        next window starts at t2
    text without a pair of timestamps                   one segment over the whole window (ending at its last
                                                        timestamp, where there is one but <|0.00|>)
  """
  stamps = [i >= timestamp_begin for i in ids]
  single_ending = stamps[-2:] == [False, True]
  ends = [i + 1 for i in range(len(ids) - 1) if stamps[i] and stamps[i + 1]]   # after each pair <|a|><|b|>: b starts the next
  if not ends:
    last = next((ids[i] for i in reversed(range(len(ids))) if stamps[i]), timestamp_begin)
    return [(0, last - timestamp_begin if last != timestamp_begin else frames // FRAMES_PER_POSITION, 0, len(ids))], frames
  if single_ending: ends.append(len(ids))
  else: ends[-1] += 1   # the last segment keeps its closing pair, which shows it was complete
  pieces, begin = [], 0
  for n, stop in enumerate(ends):
    close = ids[stop - 2] if n == len(ends) - 1 and not single_ending else ids[stop - 1]
    pieces.append((ids[begin] - timestamp_begin, close - timestamp_begin, begin, stop))
    begin = stop
  return pieces, frames if single_ending else (ids[begin - 2] - timestamp_begin) * FRAMES_PER_POSITION
