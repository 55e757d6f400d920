"""The synthetic tasks: every date format the issue names, ISO targets checked against the standard library's parser,
held-out splits disjoint from training, and the character tokenizer they share."""
import datetime
import re

import numpy as np
import pytest

from tfm.errors import InputError, WeightsError
from tfm.training.tasks import DATE_FORMATS, FIRST_DATE, LAST_DATE, WEEKDAYS, format_date, get_task, held_out, ordinal
from tfm.io.tokenizer import CharTokenizer

# independent readers for every format: datetime.strptime patterns (names match case-insensitively there)
STRPTIME = ("%d %B %Y", "%B %d, %Y", "%b %d %Y", "%b %d, %Y", "%d %b %Y", "%d of %B, %Y", "%d of %B %Y",
            "%A, %B %d, %Y", "%a, %d %b %Y", "%Y/%m/%d", "%Y-%m-%d", "%d.%m.%Y", "%Y년 %m월 %d일", "%Y. %m. %d.")


def parse(text: str) -> datetime.date:
  """The date a source string names, read without tfm: ordinal suffixes dropped, then the first pattern that fits."""
  plain = re.sub(r"\b(\d{1,2})(st|nd|rd|th)\b", r"\1", text)
  dates = set()
  for pattern in STRPTIME:
    try: dates.add(datetime.datetime.strptime(plain, pattern).date())
    except ValueError: continue
  assert len(dates) == 1, f"{text!r} reads as {dates or 'nothing'}"
  return dates.pop()


@pytest.fixture(scope="module")
def dates():
  return get_task("dates")


def test_every_format_of_the_issue_is_produced(dates):
  d = datetime.date(2021, 3, 3)
  written = {format_date(d, f) for f in DATE_FORMATS}
  for text in ("3 March 2021", "March 3, 2021", "Mar 3 2021", "3rd of March, 2021", "Wednesday, March 3, 2021",
               "2021/03/03", "03.03.2021", "2021년 3월 3일"):
    assert text in written


def test_numeric_dates_are_day_first():
  assert format_date(datetime.date(2021, 4, 5), "{dd}.{mm}.{Y}") == "05.04.2021"


def test_ordinals():
  assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 30, 31)] == \
    ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "30th", "31st"]


@pytest.mark.parametrize("split", ["train", "test"])
def test_targets_are_the_iso_date_the_source_names(dates, split):
  formats_seen = set()
  for source, target in dates.examples(3000, split, seed=1):
    d = parse(source)
    assert target == d.isoformat()
    for i, day in enumerate(WEEKDAYS):  # a weekday, when written, is the date's own
      if re.search(rf"\b{day[:3]}", source, re.IGNORECASE): assert d.weekday() == i, source
    assert len(source) <= dates.max_source_len and len(target) == dates.max_target_len
    formats_seen.add(re.sub(r"[0-9]", "9", source.lower()))
  assert len(formats_seen) > 2 * len(DATE_FORMATS)  # names and digit counts vary within every format


def test_sources_use_every_format_and_both_cases(dates):
  sources = [s for s, _ in dates.examples(2000, "train", seed=2)]
  assert any(s.islower() and any(c.isalpha() for c in s) for s in sources)
  assert any("년" in s for s in sources) and any(re.fullmatch(r"\d\d\.\d\d\.\d{4}", s) for s in sources)


def test_dates_span_1900_to_2099(dates):
  assert FIRST_DATE == datetime.date(1900, 1, 1) and LAST_DATE == datetime.date(2099, 12, 31)
  every = dates.dates["train"] + dates.dates["test"]
  assert len(every) == (LAST_DATE - FIRST_DATE).days + 1 == len(set(every))
  assert min(every) == FIRST_DATE and max(every) == LAST_DATE


def test_held_out_dates_never_appear_in_training(dates):
  train, test = set(dates.dates["train"]), set(dates.dates["test"])
  assert not train & test
  assert 0.08 < len(test) / (len(train) + len(test)) < 0.12
  assert {t for _, t in dates.examples(3000, "train", seed=3)}.isdisjoint(d.isoformat() for d in test)
  assert {t for _, t in dates.examples(1000, "test", seed=3)} <= {d.isoformat() for d in test}


def test_examples_are_reproducible(dates):
  assert dates.examples(50, "test", seed=7) == dates.examples(50, "test", seed=7)
  assert dates.examples(50, "test", seed=7) != dates.examples(50, "test", seed=8)


@pytest.mark.parametrize("name, transform", [("copy", lambda s: s), ("reverse", lambda s: s[::-1])])
def test_string_tasks(name, transform):
  task = get_task(name)
  train, test = task.examples(500, "train", seed=0), task.examples(500, "test", seed=0)
  assert all(t == transform(s) for s, t in train + test)
  assert {s for s, _ in train}.isdisjoint(s for s, _ in test)
  assert all(held_out(s) for s, _ in test) and not any(held_out(s) for s, _ in train)
  assert max(len(s) for s, _ in train) == task.max_source_len


def test_unknown_task_and_split_are_named():
  with pytest.raises(InputError, match="unknown task 'sort'.*copy, reverse, dates"): get_task("sort")
  with pytest.raises(InputError, match="split='dev'"): get_task("copy").examples(3, "dev")


def test_every_source_encodes(dates):
  pairs = dates.examples(500, "train", seed=4)
  ids = dates.tokenizer.encode([s for s, _ in pairs])
  assert dates.tokenizer.decode(ids) == [s for s, _ in pairs]
  assert all(max(row) < dates.tokenizer.vocab_size for row in ids)


# --- CharTokenizer ---

def test_char_tokenizer_round_trip_and_specials(tmp_path):
  tok = CharTokenizer("ab년")
  assert tok.vocab_size == 6 and (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.encode(["ab년", ""]) == [[3, 4, 5, 2], [2]]
  assert tok.decode([[1, 3, 5, 2, 4, 4], [0, 4, 0]]) == ["a년", "b"]  # stops at eos, drops bos and pad
  assert tok.decode(np.array([[3, 4, 2]])) == ["ab"]
  tok.save(tmp_path / "v.json")
  assert CharTokenizer.load(tmp_path / "v.json").chars == tok.chars


def test_char_tokenizer_rejects_bad_input(tmp_path):
  tok = CharTokenizer("ab")
  with pytest.raises(InputError, match="character '!'.*not in the vocabulary"): tok.encode(["a!"])
  with pytest.raises(InputError, match=r"wrap a single text as \[text\]"): tok.encode("ab")
  with pytest.raises(InputError, match="token id 9 out of range"): tok.decode([[9]])
  with pytest.raises(InputError, match="appears twice"): CharTokenizer("aba")
  (tmp_path / "bad.json").write_text('{"type": "sentencepiece"}')
  with pytest.raises(WeightsError, match="not a character vocabulary"): CharTokenizer.load(tmp_path / "bad.json")
  (tmp_path / "broken.json").write_text('{"type": ')
  with pytest.raises(WeightsError, match="invalid JSON"): CharTokenizer.load(tmp_path / "broken.json")
