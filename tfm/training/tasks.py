"""Synthetic sequence-to-sequence tasks with their own character vocabulary: the bundled model's data and the tests'.

    copy      "hbdga"             -> "hbdga"
    reverse   "hbdga"             -> "agdbh"
    dates     "3rd of March, 2021" -> "2021-03-03"   (and "2021년 3월 3일", "03.03.2021", ... -> the same)

Every task splits its examples into "train" and "test" by a hash of the underlying item (the string for copy and
reverse, the calendar date for dates), so no held-out date is ever seen in training, in any format.
"""
from __future__ import annotations

import datetime
import hashlib
import string
from typing import Callable

import numpy as np

from tfm.errors import InputError
from tfm.io.tokenizer import CharTokenizer

SPLITS = ("train", "test")
TEST_FRACTION = 10  # one item in TEST_FRACTION is held out


def held_out(key: str) -> bool:
  """The split of an item, fixed by a hash of its key: True for the held-out (test) split."""
  return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % TEST_FRACTION == 0


def _check_split(split: str) -> None:
  if split not in SPLITS: raise InputError(f"split={split!r} is not a split; choose one of {', '.join(SPLITS)}")


class Task:
  """A source -> target task: `sample(rng, split)` draws one (source, target) pair of strings."""
  name: str
  tokenizer: CharTokenizer
  max_source_len: int  # characters, eos not included
  max_target_len: int

  def sample(self, rng: np.random.Generator, split: str = "train") -> tuple[str, str]: raise NotImplementedError

  def examples(self, n: int, split: str = "test", seed: int = 0) -> list[tuple[str, str]]:
    """n pairs drawn with a fixed seed: the same list on every call and every machine."""
    _check_split(split)
    rng = np.random.default_rng(seed)
    return [self.sample(rng, split) for _ in range(n)]


class StringTask(Task):
  """Random strings over a small alphabet, mapped by `transform`: the copy and reverse tasks."""

  def __init__(self, name: str, transform: Callable[[str], str], alphabet: str = "abcdefghij", min_len: int = 1, max_len: int = 8):
    self.name, self.transform, self.alphabet, self.min_len = name, transform, alphabet, min_len
    self.max_source_len = self.max_target_len = max_len
    self.tokenizer = CharTokenizer(alphabet)

  def sample(self, rng: np.random.Generator, split: str = "train") -> tuple[str, str]:
    # rejection keeps the two splits disjoint; with one string in ten held out it ends within a few draws
    while True:
      n = int(rng.integers(self.min_len, self.max_source_len + 1))
      text = "".join(self.alphabet[i] for i in rng.integers(0, len(self.alphabet), n))
      if held_out(text) == (split == "test"): return text, self.transform(text)


# --- dates ----------------------------------------------------------------------------------------------------

FIRST_DATE, LAST_DATE = datetime.date(1900, 1, 1), datetime.date(2099, 12, 31)
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def ordinal(n: int) -> str:
  """1 -> "1st", 2 -> "2nd", 3 -> "3rd", 11 -> "11th", 22 -> "22nd"."""
  suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
  return f"{n}{suffix}"


def _fields(d: datetime.date) -> dict[str, str]:
  month, weekday = MONTHS[d.month - 1], WEEKDAYS[d.weekday()]
  return dict(Y=f"{d.year:04d}", m=str(d.month), mm=f"{d.month:02d}", d=str(d.day), dd=f"{d.day:02d}", th=ordinal(d.day),
              Month=month, Mon=month[:3], Weekday=weekday, Wkd=weekday[:3])


# Day-first wherever the day and month are both numbers ("03.03.2021" is 3 March); "{Y}/{mm}/{dd}" is year-first.
DATE_FORMATS = (
  "{d} {Month} {Y}",              # 3 March 2021
  "{Month} {d}, {Y}",             # March 3, 2021
  "{Mon} {d} {Y}",                # Mar 3 2021
  "{Mon} {d}, {Y}",               # Mar 3, 2021
  "{d} {Mon} {Y}",                # 3 Mar 2021
  "{th} of {Month}, {Y}",         # 3rd of March, 2021
  "{th} of {Month} {Y}",          # 3rd of March 2021
  "{Month} {th}, {Y}",            # March 3rd, 2021
  "{Weekday}, {Month} {d}, {Y}",  # Wednesday, March 3, 2021
  "{Wkd}, {d} {Mon} {Y}",         # Wed, 3 Mar 2021
  "{Y}/{mm}/{dd}",                # 2021/03/03
  "{Y}-{mm}-{dd}",                # 2021-03-03
  "{dd}.{mm}.{Y}",                # 03.03.2021
  "{d}.{m}.{Y}",                  # 3.3.2021
  "{Y}년 {m}월 {d}일",             # 2021년 3월 3일
  "{Y}. {m}. {d}.",               # 2021. 3. 3.
)
NAMED_FORMATS = tuple(f for f in DATE_FORMATS if "Mon" in f or "Month" in f or "th" in f)
LOWERCASE_RATE = 0.2  # month and weekday names also come in lower case ("3rd of march, 2021")


def format_date(d: datetime.date, fmt: str) -> str:
  """A date written in one of DATE_FORMATS."""
  return fmt.format(**_fields(d))


class DatesTask(Task):
  """Dates written many ways -> ISO 8601 YYYY-MM-DD, for every day from 1900-01-01 to 2099-12-31."""
  name = "dates"

  def __init__(self):
    days = [FIRST_DATE + datetime.timedelta(days=i) for i in range((LAST_DATE - FIRST_DATE).days + 1)]
    self.dates = {split: [d for d in days if held_out(d.isoformat()) == (split == "test")] for split in SPLITS}
    # one year writes every month, weekday and day in every format; only the (always four) year digits vary
    year = [datetime.date(2021, 1, 1) + datetime.timedelta(days=i) for i in range(365)]
    texts = [format_date(d, f) for d in year for f in DATE_FORMATS]
    self.tokenizer = CharTokenizer(sorted(set("".join(texts) + "".join(texts).lower() + string.digits)))
    self.max_source_len = max(len(t) for t in texts)
    self.max_target_len = len("YYYY-MM-DD")

  def sample(self, rng: np.random.Generator, split: str = "train") -> tuple[str, str]:
    _check_split(split)
    dates = self.dates[split]
    d = dates[int(rng.integers(len(dates)))]
    fmt = DATE_FORMATS[int(rng.integers(len(DATE_FORMATS)))]
    text = format_date(d, fmt)
    if fmt in NAMED_FORMATS and rng.random() < LOWERCASE_RATE: text = text.lower()
    return text, d.isoformat()


TASKS: dict[str, Callable[[], Task]] = {
  "copy": lambda: StringTask("copy", lambda s: s),
  "reverse": lambda: StringTask("reverse", lambda s: s[::-1]),
  "dates": DatesTask,
}


def get_task(name: str) -> Task:
  """The task called `name`: one of copy, reverse, dates."""
  if name not in TASKS: raise InputError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
  return TASKS[name]()


def encode_batch(tokenizer: CharTokenizer, pairs: list[tuple[str, str]], src_len: int, tgt_len: int) -> tuple[np.ndarray, ...]:
  """(source, target) texts -> padded src (B, src_len), decoder input bos + target (B, tgt_len), labels target + eos.

  Fixed widths keep every batch the same shape: the one the compiled train step was built for.
  """
  src = np.full((len(pairs), src_len), tokenizer.pad_id, np.int32)
  tgt_in, labels = src[:, :tgt_len].copy(), src[:, :tgt_len].copy()
  for i, (s, t) in zip(range(len(pairs)), zip(tokenizer.encode([p[0] for p in pairs]), tokenizer.encode([p[1] for p in pairs]))):
    if len(s) > src_len or len(t) > tgt_len:
      raise InputError(f"example {pairs[i]!r} is {len(s)} -> {len(t)} tokens with eos, longer than {src_len} -> {tgt_len}")
    src[i, :len(s)], labels[i, :len(t)] = s, t
    tgt_in[i, :len(t)] = [tokenizer.bos_id] + t[:-1]
  return src, tgt_in, labels
