"""Generation settings: every knob of one decode, resolved from the call's arguments, the model's generation_config
(Hugging Face's generation_config.json keys, which an imported checkpoint carries) and the defaults, and checked."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfm.errors import InputError
from tfm.nn.transformer import Transformer


@dataclass(frozen=True)
class Timestamps:
  """Whisper's timestamp rules (tfm.generation.rules.timestamps): the id of <|notimestamps|>, after which come the
  timestamp tokens <|0.00|>, <|0.02|>, ...; and how far (in timestamp tokens) the first one may go, None for no limit."""
  no_timestamps_id: int
  max_initial_index: int | None = None

  @property
  def begin(self) -> int: return self.no_timestamps_id + 1   # the id of <|0.00|>


@dataclass(frozen=True)
class GenerationSettings:
  """Every knob of one `generate` call, resolved from its arguments, the model's generation_config and defaults."""
  max_len: int
  beam_size: int = 1
  length_penalty: float = 1.0
  early_stopping: bool | str = True
  min_len: int = 0
  num_return: int = 1
  forced_eos_id: int | None = None
  forced_bos_id: int | None = None   # the first output token (NLLB and M2M100 choose the target language so)
  suppress_ids: tuple[int, ...] = ()
  begin_suppress_ids: tuple[int, ...] = ()   # never the first output token (begin_suppress_tokens: Whisper's)
  start_id: int = 1
  timestamps: Timestamps | None = None   # Whisper's timestamp rules (host-side: tfm.generation.rules.timestamps)
  # the rules that depend on each hypothesis, and sampling: tfm.generation.rules
  repetition_penalty: float = 1.0
  no_repeat_ngram_size: int = 0
  bad_words: tuple[tuple[int, ...], ...] = ()   # sequences of two or more tokens (single ones are suppress_ids)
  sample: bool = False
  temperature: float = 1.0
  top_k: int = 0          # 0: no top-k cut
  top_p: float = 1.0
  seed: int | None = None


# what Hugging Face's GenerationConfig assumes for keys a generation_config.json leaves out
HF_DEFAULTS = {"max_new_tokens": 20, "min_length": 0, "num_beams": 1, "length_penalty": 1.0, "early_stopping": False,
               "num_return_sequences": 1}
# settings that change greedy or beam results and that tfm does not implement, with their no-op values
UNSUPPORTED = {"num_beam_groups": 1, "diversity_penalty": 0.0, "encoder_no_repeat_ngram_size": 0, "renormalize_logits": False,
               "exponential_decay_length_penalty": None,
               "sequence_bias": None, "force_words_ids": None, "constraints": None}


def _from_generation_config(model: Transformer) -> dict[str, Any]:
  """Defaults from `model.generation_config`: a dict in Hugging Face's generation_config.json keys, which an imported
  checkpoint carries (tfm.from_pretrained sets it). Keys it leaves out take Hugging Face's defaults, so the model
  decodes as it does there; a model without one gets tfm's defaults."""
  gc = getattr(model, "generation_config", None)
  if gc is None: return {}
  ignored = [f"{k}={gc[k]!r}" for k, off in UNSUPPORTED.items() if gc.get(k) not in (None, off)]
  if ignored: warnings.warn(f"the model's generation_config sets {', '.join(ignored)}, which tfm.generate does not implement: "
                            f"decoding without them", stacklevel=4)
  gc = {k: v for k, v in gc.items() if v is not None}
  if "max_length" in gc: gc.setdefault("max_new_tokens", int(gc["max_length"]) - 1)  # theirs counts the start token
  gc = {**HF_DEFAULTS, **gc}
  out: dict[str, Any] = {"beam_size": int(gc["num_beams"]), "length_penalty": float(gc["length_penalty"]),
                         "early_stopping": gc["early_stopping"], "num_return": int(gc["num_return_sequences"])}
  out["max_len"] = int(gc["max_new_tokens"])
  out["min_len"] = int(gc["min_new_tokens"]) if "min_new_tokens" in gc else max(0, int(gc["min_length"]) - 1)
  if "forced_eos_token_id" in gc:  # an id, or a list of them (tfm forces the first)
    forced = gc["forced_eos_token_id"]
    out["forced_eos_id"] = int(forced[0] if isinstance(forced, (list, tuple)) else forced)
  if "forced_bos_token_id" in gc: out["forced_bos_id"] = int(gc["forced_bos_token_id"])
  if "decoder_start_token_id" in gc: out["start_id"] = int(gc["decoder_start_token_id"])
  single = [ids[0] for ids in gc.get("bad_words_ids") or [] if len(ids) == 1]
  out["suppress_ids"] = tuple(sorted(set(single) | set(gc.get("suppress_tokens") or [])))
  out["begin_suppress_ids"] = tuple(sorted(set(gc.get("begin_suppress_tokens") or [])))
  out["bad_words"] = tuple(tuple(int(i) for i in ids) for ids in gc.get("bad_words_ids") or [] if len(ids) > 1)
  out["repetition_penalty"] = float(gc.get("repetition_penalty", 1.0))
  out["no_repeat_ngram_size"] = int(gc.get("no_repeat_ngram_size", 0))
  if gc.get("do_sample"):   # Hugging Face's sampling defaults: top_k 50
    out.update(sample=True, temperature=float(gc.get("temperature", 1.0)), top_k=int(gc.get("top_k", 50)),
               top_p=float(gc.get("top_p", 1.0)))
  return out

def resolve_settings(model: Transformer, src_lengths: np.ndarray, **given: Any) -> GenerationSettings:
  """Arguments given (not None) win over the model's generation_config, which wins over the defaults."""
  config = model.config
  values: dict[str, Any] = {"start_id": config.start_id}
  values.update(_from_generation_config(model))
  if "max_len" in values: values["max_len"] = min(values["max_len"], config.max_len)  # the decoder has no more positions
  values.update({k: v for k, v in given.items() if v is not None})
  # the paper's output budget (section 6.1): input length + 50
  values.setdefault("max_len", min(int(src_lengths.max()) + 50, config.max_len))
  return check(GenerationSettings(**values), config)

def check(s: GenerationSettings, config) -> GenerationSettings:
  """s itself, when every setting is valid for a model of this config; else an InputError naming the setting."""
  def is_int(x) -> bool: return isinstance(x, (int, np.integer)) and not isinstance(x, bool)
  if not is_int(s.max_len) or not 1 <= s.max_len <= config.max_len:
    raise InputError(f"max_len={s.max_len!r} must be an integer in [1, {config.max_len}]: the decoder has positions "
                     f"for config.max_len={config.max_len} tokens")
  if not is_int(s.beam_size) or s.beam_size < 1:
    raise InputError(f"beam_size={s.beam_size!r} must be an integer >= 1 (1 is greedy decoding)")
  if not is_int(s.num_return) or not 1 <= s.num_return <= s.beam_size:
    raise InputError(f"num_return={s.num_return!r} must be an integer in [1, beam_size={s.beam_size}]: "
                     f"each returned hypothesis is one of the beams; raise beam_size to return more")
  if not is_int(s.min_len) or s.min_len < 0:
    raise InputError(f"min_len={s.min_len!r} must be an integer >= 0")
  if s.early_stopping not in (True, False, "never"):
    raise InputError(f"early_stopping={s.early_stopping!r} must be True, False or 'never'")
  if not isinstance(s.length_penalty, (int, float)) or not math.isfinite(s.length_penalty):
    raise InputError(f"length_penalty={s.length_penalty!r} must be a finite number (1.0 averages log-probs per token)")
  if not isinstance(s.repetition_penalty, (int, float)) or not s.repetition_penalty > 0:
    raise InputError(f"repetition_penalty={s.repetition_penalty!r} must be > 0 (1.0: none; above 1 discourages repeats)")
  if not is_int(s.no_repeat_ngram_size) or s.no_repeat_ngram_size < 0:
    raise InputError(f"no_repeat_ngram_size={s.no_repeat_ngram_size!r} must be an integer >= 0 (0: off)")
  if not isinstance(s.temperature, (int, float)) or not s.temperature > 0:
    raise InputError(f"temperature={s.temperature!r} must be > 0 (1.0 samples from the model's distribution)")
  if not is_int(s.top_k) or s.top_k < 0: raise InputError(f"top_k={s.top_k!r} must be an integer >= 0 (0: no cut)")
  if not isinstance(s.top_p, (int, float)) or not 0 < s.top_p <= 1:
    raise InputError(f"top_p={s.top_p!r} must be in (0, 1] (1.0: no nucleus cut)")
  if not s.sample and (s.temperature != 1.0 or s.top_k or s.top_p != 1.0):
    raise InputError(f"temperature={s.temperature}, top_k={s.top_k}, top_p={s.top_p} shape sampling: pass sample=True "
                     f"(--sample) to sample, or leave them out for greedy or beam search")
  if s.sample and s.beam_size > 1:
    raise InputError(f"sampling draws one hypothesis per source: use beam_size=1 (got {s.beam_size}), or beam search without sample")
  if s.seed is not None and not is_int(s.seed): raise InputError(f"seed={s.seed!r} must be an integer")
  for name, ids in (("forced_eos_id", [] if s.forced_eos_id is None else [s.forced_eos_id]),
                    ("forced_bos_id", [] if s.forced_bos_id is None else [s.forced_bos_id]), ("suppress_ids", s.suppress_ids),
                    ("begin_suppress_ids", s.begin_suppress_ids),
                    ("start_id", [s.start_id])):
    bad = [i for i in ids if not is_int(i) or not 0 <= i < config.vocab_size]
    if bad: raise InputError(f"{name} has token id {bad[0]!r}, out of range for vocab_size={config.vocab_size}")
  if s.timestamps is not None:
    t = s.timestamps
    if not is_int(t.no_timestamps_id) or not 0 <= t.no_timestamps_id < config.vocab_size - 1:
      raise InputError(f"timestamps: no_timestamps_id={t.no_timestamps_id!r} must be a token id below vocab_size - 1 = "
                       f"{config.vocab_size - 1}: the timestamp tokens come after it")
    if t.max_initial_index is not None and (not is_int(t.max_initial_index) or t.max_initial_index < 0):
      raise InputError(f"timestamps: max_initial_index={t.max_initial_index!r} must be an integer >= 0, or None for no limit")
  for words in s.bad_words:
    if len(words) < 2 or not all(is_int(i) and 0 <= i < config.vocab_size for i in words):
      raise InputError(f"bad_words entry {words!r} must be two or more token ids in [0, {config.vocab_size - 1}] "
                       f"(single tokens: suppress_ids)")
  return s


FREE, MIN_LEN, FORCED_EOS, FORCED_BOS, BEGIN = range(5)   # the rule of an output position: which row of bias applies
FORCED = (FORCED_EOS, FORCED_BOS)   # rows that replace the scores (0 at the forced token, -inf elsewhere); others add


def forced(rule) -> bool: return rule in FORCED


def rule_arrays(s: GenerationSettings, config) -> tuple[np.ndarray, np.ndarray]:
  """The contents of Session.rules and Session.bias for settings s: per output position its rule, and per rule a row of
  log-prob biases (as Hugging Face's logits processors set them): FREE adds bias[0] (-inf for suppressed tokens),
  MIN_LEN also masks eos, BEGIN (the first free position, begin_suppress_ids: after a forced first token, the second)
  also masks those; FORCED_EOS and FORCED_BOS
  replace the scores by a row that is 0 at the forced token and -inf elsewhere. Where several fall on one position the
  forced eos wins over the forced first token, which wins over the others, as there."""
  rules = np.full(config.max_len, FREE, np.int32)
  rules[:s.min_len] = MIN_LEN
  bias = np.zeros((5, config.vocab_size), np.float32)
  bias[:, list(s.suppress_ids)] = -np.inf
  bias[MIN_LEN, config.eos_id] = -np.inf
  begin = 0 if s.forced_bos_id is None else 1
  if s.begin_suppress_ids and begin < s.max_len:
    rules[begin] = BEGIN
    bias[BEGIN, list(s.begin_suppress_ids)] = -np.inf
    if s.min_len > begin: bias[BEGIN, config.eos_id] = -np.inf
  for rule, (position, token) in ((FORCED_BOS, (0, s.forced_bos_id)), (FORCED_EOS, (s.max_len - 1, s.forced_eos_id))):
    if token is None: continue
    rules[position] = rule   # the eos, set last, wins
    bias[rule] = -np.inf
    bias[rule, token] = 0.0
  return rules, bias
