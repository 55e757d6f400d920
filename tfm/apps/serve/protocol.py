"""The service's JSON API and its limits: POST /translate takes LibreTranslate's request (q, source, target, format,
alternatives, api_key) and answers as it does (translatedText, alternatives), so its clients work unchanged; tfm adds
beam_size and scores. Every bad body or field is an HTTPError whose message names the field and the fix."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from urllib.parse import parse_qs

from tfm.apps.serve.languages import model_code
from tfm.errors import ConfigError

LIBRETRANSLATE_FIELDS = ("q", "source", "target", "format", "alternatives", "api_key")
TFM_FIELDS = ("beam_size", "scores")
FIELDS = LIBRETRANSLATE_FIELDS + TFM_FIELDS
INT_FIELDS, BOOL_FIELDS = ("alternatives", "beam_size"), ("scores",)
EXAMPLE = '{"q": "3rd of March, 2021", "source": "auto", "target": "en"}'


class HTTPError(Exception):
  """A request the service answers with `status` and {"error": message}."""

  def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status, self.message, self.headers = status, message, headers or {}


@dataclass(frozen=True)
class Options:
  """Every knob of the service; `tfm serve` has a flag of the same name for each (max_batch is --max-batch)."""
  max_batch: int = 16          # texts decoded together at most; a batch's rows are padded to a power of two up to it
  batch_wait_ms: float = 5.0   # how long the first text of a batch waits for others to join it
  max_queue: int = 256         # texts accepted and not yet answered (waiting or decoding); more get 503
  timeout: float = 30.0        # seconds a request waits for its translation before it gets 504
  max_body: int = 1 << 20      # bytes in a request body; more get 413
  max_texts: int = 64          # texts in one request; more get 413
  max_src_len: int | None = None  # tokens in one text, eos included; more get 422 (default: the model's max_len)
  beam_sizes: tuple[int, ...] | None = None  # beam sizes served (all warmed up); the first is the default (default: the model's)
  batching: bool = True        # False decodes one text at a time (the comparison in docs/PERFORMANCE.md)
  source: str | None = None    # language codes of the model's direction: requests naming others get 400 (default: not checked);
  target: str | None = None    # for a multilingual model, the direction of requests that name none
  languages: tuple[str, ...] = ()   # a multilingual model's codes (from its tokenizer): requests choose among them

  def check(self) -> Options:
    """These options, each checked on its own (a bad one is a ConfigError naming its flag)."""
    for name in ("max_batch", "max_queue", "max_body", "max_texts"):
      value = getattr(self, name)
      if not _is_int(value) or value < 1: raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
    # finite and within what threading's waits take (they raise OverflowError past TIMEOUT_MAX)
    if not _is_number(self.timeout) or not 0 < self.timeout <= 86400:
      raise ConfigError(f"--timeout must be a positive number of seconds, at most 86400 (a day), got {self.timeout!r}")
    if not _is_number(self.batch_wait_ms) or not 0 <= self.batch_wait_ms <= 86_400_000:
      raise ConfigError(f"--batch-wait-ms must be a number of milliseconds in [0, 86400000] (a day), got {self.batch_wait_ms!r}")
    if self.max_texts > self.max_queue:
      raise ConfigError(f"--max-texts {self.max_texts} exceeds --max-queue {self.max_queue}: a request that large could never "
                        f"be queued; lower --max-texts or raise --max-queue")
    if self.max_src_len is not None and (not _is_int(self.max_src_len) or self.max_src_len < 1):
      raise ConfigError(f"--max-src-len must be an integer >= 1, got {self.max_src_len!r}")
    beams = self.beam_sizes or ()
    if any(not _is_int(b) or b < 1 for b in beams) or len(set(beams)) != len(beams):
      raise ConfigError(f"--beam takes distinct integers >= 1 (1 is greedy), got {','.join(map(str, beams))}")
    return self

  def resolved(self, config, default_beam: int, languages: tuple[str, ...] = ()) -> Options:
    """These options checked against the model (config: its TransformerConfig; languages: a multilingual model's
    codes), with the defaults filled in."""
    self.check()
    if languages:
      try: direction = {name: model_code(getattr(self, name), languages, f"--{name}") for name in ("source", "target") if getattr(self, name)}
      except LookupError as e: raise ConfigError(str(e)) from None
      return dataclasses.replace(self, languages=tuple(languages), **direction).resolved(config, default_beam)
    max_src_len = config.max_len if self.max_src_len is None else self.max_src_len
    if max_src_len > config.max_len:
      raise ConfigError(f"--max-src-len {max_src_len} is more than the model's max_len={config.max_len}; give at most {config.max_len}")
    return dataclasses.replace(self, max_src_len=max_src_len, beam_sizes=tuple(self.beam_sizes or (default_beam,)),
                               max_batch=self.max_batch if self.batching else 1, batch_wait_ms=self.batch_wait_ms if self.batching else 0)


def _is_int(x) -> bool: return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool: return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class Job:
  """A checked /translate request: its texts and how to decode them."""
  texts: list[str]
  single: bool     # q was one string: the answer's fields are single values, not lists
  beam_size: int
  n_best: int      # translations per text: the best and its alternatives
  scores: bool
  source_lang: str | None = None   # a multilingual model's languages, as it names them
  target_lang: str | None = None

  @property
  def key(self) -> tuple:
    """What texts decoded together share: beam size, n-best, languages."""
    return self.beam_size, self.n_best, self.source_lang, self.target_lang


def parse_body(body: bytes, content_type: str) -> dict:
  """The request's fields, from a JSON object or (as LibreTranslate's own client sends them) a form."""
  kind = content_type.split(";")[0].strip().lower()
  if kind in ("", "application/json"):
    try: fields = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
      raise HTTPError(400, f"the body is not valid JSON ({e}); send an object such as {EXAMPLE}") from None
    if not isinstance(fields, dict):
      raise HTTPError(400, f"the body must be a JSON object such as {EXAMPLE}, got a {type(fields).__name__}")
    return fields
  if kind == "application/x-www-form-urlencoded":
    if body.lstrip().startswith(b"{"):
      raise HTTPError(400, "the body looks like JSON but was sent as a form: send it with Content-Type: application/json")
    try: form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body), errors="strict")
    except (UnicodeDecodeError, ValueError) as e:
      raise HTTPError(400, f"the body is not a valid form ({e}); send q=...&source=...&target=... or JSON") from None
    return {name: _form_value(name, values) for name, values in form.items()}
  raise HTTPError(415, f"Content-Type {content_type!r} is not served; send application/json (or a form, "
                       f"application/x-www-form-urlencoded)")


def _form_value(name: str, values: list[str]):
  """A form field as JSON would carry it: q repeated is a list, numbers and booleans are converted."""
  if name == "q": return values[0] if len(values) == 1 else values
  if len(values) > 1: raise HTTPError(400, f"field {name} is given {len(values)} times; give it once")
  value = values[0]
  if name in INT_FIELDS:
    try: return int(value)
    except ValueError: raise HTTPError(400, f"field {name} must be an integer, got {value!r}") from None
  if name in BOOL_FIELDS:
    if value.lower() not in ("true", "false", "1", "0"): raise HTTPError(400, f"field {name} must be true or false, got {value!r}")
    return value.lower() in ("true", "1")
  return value


def parse_job(fields: dict, options: Options) -> Job:
  """Check every field of a /translate request against the service's options."""
  unknown = sorted(set(fields) - set(FIELDS))
  if unknown: raise HTTPError(400, f"unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
  if "q" not in fields: raise HTTPError(400, f"missing field q: give the text to translate, as in {EXAMPLE} (or a list of texts)")
  q = fields["q"]
  if isinstance(q, str): texts, single = [q], True
  elif isinstance(q, list):
    texts, single = q, False
    bad = next((i for i, t in enumerate(q) if not isinstance(t, str)), None)
    if bad is not None: raise HTTPError(400, f"q[{bad}] is {type(q[bad]).__name__}, not a string; q holds texts only")
  else: raise HTTPError(400, f"field q must be a string or a list of strings, got {type(q).__name__}")
  if len(texts) > options.max_texts:
    raise HTTPError(413, f"q has {len(texts)} texts, more than this server takes in one request (--max-texts {options.max_texts}); "
                         f"send them in several requests")
  for name in ("source", "target", "api_key", "format"):
    if name in fields and not isinstance(fields[name], str):
      raise HTTPError(400, f"field {name} must be a string, got {type(fields[name]).__name__}")
  languages = _languages(fields, options) if options.languages else {}
  for name in ("source", "target"):
    served = getattr(options, name)
    if not options.languages and served is not None and fields.get(name, served) not in (served, "auto" if name == "source" else served):
      raise HTTPError(400, f"{name} {fields[name]!r} is not served: this server translates {options.source or '?'} -> "
                           f"{options.target or '?'}")
  if fields.get("format", "text") != "text":
    raise HTTPError(400, f"format {fields['format']!r} is not served: tfm translates plain text (format \"text\")")
  alternatives = fields.get("alternatives", 0)
  if not _is_int(alternatives) or alternatives < 0:
    raise HTTPError(400, f"field alternatives must be an integer >= 0 (translations besides the best), got {alternatives!r}")
  n_best, served = alternatives + 1, options.beam_sizes
  if "beam_size" in fields:
    beam = fields["beam_size"]
    if not _is_int(beam) or beam < 1: raise HTTPError(400, f"field beam_size must be an integer >= 1 (1 is greedy), got {beam!r}")
    if beam not in served:
      raise HTTPError(422, f"beam_size {beam} is not served here: this server decodes with beam sizes "
                           f"{', '.join(map(str, served))} (start it with --beam to serve others)")
    if n_best > beam:
      raise HTTPError(422, f"alternatives {alternatives} needs beam_size >= {n_best} (each translation is one beam); "
                           f"ask for a larger beam_size or fewer alternatives")
  else:
    beam = served[0] if n_best <= served[0] else min((b for b in served if b >= n_best), default=None)
    if beam is None:
      raise HTTPError(422, f"alternatives {alternatives} needs a beam size >= {n_best}, and this server decodes with beam "
                           f"sizes {', '.join(map(str, served))} (start it with --beam {n_best} to serve them)")
  if not isinstance(fields.get("scores", False), bool):
    raise HTTPError(400, f"field scores must be true or false, got {fields['scores']!r}")
  return Job(texts, single, beam, n_best, fields.get("scores", False), **languages)


def _languages(fields: dict, options: Options) -> dict[str, str]:
  """A multilingual model's source and target languages for a request: its fields (mapped to the model's codes), else
  the server's --source and --target; 400 where neither names one ("auto" detects nothing: name the language)."""
  out = {}
  for name in ("source", "target"):
    code = fields.get(name)
    if code in (None, "", "auto"): code = getattr(options, name)
    if code is None:
      raise HTTPError(400, f"no {name} language: this model translates between {len(options.languages)} languages and "
                           f"detects none; give {name} (e.g. \"en\" or one of its codes: {', '.join(options.languages)})")
    try: out[f"{name}_lang"] = model_code(code, options.languages, name)
    except LookupError as e: raise HTTPError(400, str(e)) from None
  return out


def answer(job: Job, texts: list[list[str]], scores: list[list[float]]) -> dict:
  """The /translate answer: LibreTranslate's translatedText (and alternatives), plus tfm's score and alternativeScores
  when scores were asked for; single values for a single q, lists for a list."""
  def shaped(values: list): return values[0] if job.single else values
  out = {"translatedText": shaped([t[0] for t in texts])}
  if job.n_best > 1: out["alternatives"] = shaped([t[1:] for t in texts])
  if job.scores:
    out["score"] = shaped([s[0] for s in scores])
    if job.n_best > 1: out["alternativeScores"] = shaped([s[1:] for s in scores])
  return out
