"""Generation: greedy and beam search over the Transformer, with KV caches and one compiled decode step.

The encoder runs once per batch and each decoder layer's cross-attention keys and values are projected once per
source; decoder self-attention keys and values live in per-layer caches, so a step costs one target position. The
step is captured once with TinyJit over a bound symbolic position and replayed for every position. Greedy decoding
keeps its state on the device; beam search reads each step's log-probs back and keeps the hypotheses on the host.
Rows of a batch finish independently: a finished row is padded out (its result is frozen) and decoding stops when
every row has finished.

Conventions follow Hugging Face `generate` where they apply, so imported Marian models translate as they do there:
- ids: a numpy int32 array (B * num_return, T) without the decoder start token, with eos where one was produced,
  right-padded with pad_id to the longest returned row; source i's hypotheses are rows i*num_return.. (best first).
- scores: sum of the tokens' log-probabilities (after the rules below) / length ** length_penalty, eos counted.
- max_len counts generated tokens (Hugging Face's max_length counts the start token too: it is max_len + 1).
- min_len: eos is masked until min_len tokens have been generated (min_new_tokens).
- forced_eos_id: at the last allowed step only eos may be chosen (forced_eos_token_id).
- forced_bos_id: the first output token is this one, with log-prob 0 (forced_bos_token_id: a target language).
- suppress_ids: tokens that are never generated (single-token bad_words_ids; Marian suppresses its pad).
- begin_suppress_ids: tokens never generated first (begin_suppress_tokens; after a forced first token, never second).
- an audio model (Whisper, config.n_mels) decodes from log-mel features (batch, n_mels, frames) instead of source ids.
- beam search: the top 2 * beam_size continuations per source each step, finished hypotheses kept when they rank in
  the top beam_size, early_stopping True (stop once beam_size hypotheses are done), False (stop when the best live
  beam cannot beat the worst kept one at its current length) or "never" (at max_len, for length_penalty > 0).

- repetition_penalty, no_repeat_ngram_size, bad_words (sequences), target_prefix, and sampling (temperature, top_k,
  top_p, seed): the rules that depend on each hypothesis run on the host (rules.py), on the logits read back from a
  logits step in greedy decoding and sampling, on the log-probs in beam search, as Hugging Face applies them.
- decoder_prompt: the decoder's first inputs, fed unscored (transformers' decoder_input_ids); outputs count from after it.
- whisper (tfm.generation.whisper): Whisper's decoding of a 30 s window: its prompt, language detection, timestamps.
- generate_tokens: greedy decoding that yields each step's tokens as they come (streaming).

Modules: settings (the knobs and their checks), session (device buffers, KV caches, compiled steps; `prepare`
compiles ahead of time), inputs (sources, prefixes and prompts checked), search (greedy and beam search, and the
functions below), rules (the host-side rules, Whisper's timestamps, sampling), batching (id lists padded into batches),
whisper (Whisper's decoding of a 30 s window). The compiled steps are tfm.runtime.replay's; `forget_sessions`
drops a model's compiled sessions.
"""
from tfm.generation.search import beam_search, generate, generate_tokens, greedy_search, incremental_logprobs, lengths_to_eos
from tfm.generation.session import SOURCE_BUCKET, forget_sessions, keep_sessions, prepare, sessions_of
from tfm.generation.settings import GenerationSettings, Timestamps, resolve_settings
from tfm.generation.whisper import (WhisperOutput, WhisperSegment, WhisperTokens, detect_language, whisper_generate, whisper_segments,
                                    whisper_tokens)

__all__ = ["GenerationSettings", "SOURCE_BUCKET", "Timestamps", "WhisperOutput", "WhisperSegment", "WhisperTokens", "beam_search", "detect_language",
           "forget_sessions", "generate", "generate_tokens", "greedy_search", "incremental_logprobs", "keep_sessions", "lengths_to_eos",
           "prepare", "resolve_settings", "sessions_of", "whisper_generate", "whisper_segments",
           "whisper_tokens"]
