"""Write tests/fixtures/whisper_tokens/ and whisper_tokens.json: a tiny random Whisper checkpoint whose vocabulary has
Whisper's special-token layout, and what transformers' WhisperForConditionalGeneration.generate decodes with it, so
tests/test_whisper.py checks tfm.generation.whisper without transformers.

    /work/venv-bench/bin/python tests/make_whisper_fixtures.py     # torch 2.13, transformers 5.25, tokenizers

The vocabulary is Whisper's in miniature: a byte-level BPE of 300 tokens (256 bytes and 44 merges learnt from a few
lines), then <|endoftext|>, <|startoftranscript|>, four languages (en de fr es), <|translate|>, <|transcribe|>,
<|startoflm|>, <|startofprev|>, <|nospeech|>, <|notimestamps|> and the 1501 timestamps <|0.00|> .. <|30.00|> (1813
tokens); tokenizer.json holds it. generation_config.json has the fields real checkpoints carry (lang_to_id,
task_to_id, no_timestamps_token_id, suppress_tokens, begin_suppress_tokens, max_initial_timestamp_index,
is_multilingual, prev_sot_token_id). Sizes: 8 mel bins, 32 frames (16 encoder positions), d_model 32, 4 heads, FFN 64,
2 + 2 layers, 48 decoder positions. Every weight is random (tests/make_fixtures.perturb); the timestamp and eos rows
of the (tied) embedding are then scaled so that text, timestamps and eos all compete: decodes hold timestamps, end
before max_new_tokens in some rows, and differ between tasks and with and without timestamps.

Each case is one generate() call over the 30 s window (force_unique_generate_call: no seek to a later window) with
return_dict_in_generate: ids are the generated tokens (the decoder prompt and the eos cut off, padding removed); beam
scores are sequences_scores; greedy scores are tfm's: the sum of the generated tokens' log-probs (log_softmax of the
raw logits, eos included) / length ** length_penalty (1.0). Cases with timestamps also keep the segments generate
returns for the same decode (return_segments): start, end and tokens per segment. english_only: the greedy decode of the
same checkpoint told it is English-only (no language or task tokens).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys

import numpy as np
import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import WhisperConfig, WhisperForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as fixtures  # noqa: E402  (beside this script)

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
FOLDER = os.path.join(HERE, "whisper_tokens")
VERSIONS = {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}
REGULAR = 300
LANGUAGES = ["en", "de", "fr", "es"]
SPECIALS = (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{code}|>" for code in LANGUAGES] +
            ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"])
TIMESTAMPS = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
LINES = ["the cat sat on the mat and the dog sat on the log", "we read books in the garden at night",
         "hello world, this is a tiny whisper", "der Hund und die Katze", "le chat et le chien", "el perro y el gato",
         "speech to text in thirty seconds", "one two three four five six seven eight nine ten"]
MAX_NEW = 20


def tokenizer() -> Tokenizer:
  """Byte-level BPE (GPT-2's pre-tokenizer, as Whisper's) of REGULAR tokens, then the special tokens and timestamps."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=REGULAR, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(LINES, trainer)
  assert tok.get_vocab_size() == REGULAR, tok.get_vocab_size()
  tok.add_special_tokens(SPECIALS)
  tok.add_tokens(TIMESTAMPS)
  assert tok.token_to_id("<|0.00|>") == REGULAR + len(SPECIALS) and tok.get_vocab_size() == REGULAR + len(SPECIALS) + 1501
  return tok


def main() -> None:
  rng = np.random.default_rng([2027, 7])
  shutil.rmtree(FOLDER, ignore_errors=True)
  os.makedirs(FOLDER)
  tok = tokenizer()
  tok.save(os.path.join(FOLDER, "tokenizer.json"))
  ids = {t: tok.token_to_id(t) for t in SPECIALS}
  eot, sot, no_ts = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]
  space = tok.token_to_id("Ġ")
  suppress = [tok.token_to_id(c) for c in "#()*+/<=>@[]^_`{|}~"] + [ids[t] for t in ("<|translate|>", "<|transcribe|>",
                                                                                  "<|startoflm|>", "<|startofprev|>", "<|nospeech|>")]
  config = WhisperConfig(vocab_size=tok.get_vocab_size(), num_mel_bins=8, d_model=32, encoder_layers=2, decoder_layers=2,
                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                         max_source_positions=16, max_target_positions=48, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
                         decoder_start_token_id=sot, suppress_tokens=suppress, begin_suppress_tokens=[space, eot],
                         attn_implementation="eager")
  torch.manual_seed(0)
  model = WhisperForConditionalGeneration(config).eval()
  fixtures.perturb(dict(model.named_parameters()), rng)
  with torch.no_grad():   # timestamps and eos compete with text (see the module doc)
    embed = model.model.decoder.embed_tokens.weight
    embed[no_ts + 1:] *= TIMESTAMP_SCALE
    embed[eot] *= EOS_SCALE
  g = model.generation_config
  g.lang_to_id = {f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES}
  g.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
  g.no_timestamps_token_id, g.prev_sot_token_id = no_ts, ids["<|startofprev|>"]
  g.max_initial_timestamp_index, g.is_multilingual, g.max_length = 10, True, 48
  g.suppress_tokens, g.begin_suppress_tokens = suppress, [space, eot]
  model.save_pretrained(FOLDER)
  features = rng.standard_normal((3, 8, 32)).astype(np.float32)
  prompt = [ids["<|startofprev|>"]] + tok.encode(" the cat").ids
  cases = []
  for language in (["en", "de", "fr"], None):
    for task in ("transcribe", "translate"):
      for timestamps in (False, True):
        for beams, penalty in ((1, 1.0), (4, 0.6)):
          if language is None and (timestamps, beams) not in ((False, 1), (True, 4)): continue
          cases.append(decode(model, features, dict(language=language, task=task, return_timestamps=timestamps, num_beams=beams,
                                                    length_penalty=penalty)))
  cases.append(decode(model, features, dict(language="en", task="transcribe", return_timestamps=False, num_beams=1,
                                            length_penalty=1.0), prompt))
  english_only = english_only_decode(model, features)
  with torch.no_grad():
    logits = model(input_features=torch.from_numpy(features), decoder_input_ids=torch.full((3, 1), sot)).logits[:, -1]
  languages = list(g.lang_to_id.values())
  lang_logp = torch.log_softmax(logits[:, languages], -1)
  detected = [(LANGUAGES[int(i)], float(lang_logp[r, i].exp())) for r, i in enumerate(lang_logp.argmax(-1))]
  out = {"features": features.tolist(), "max_new_tokens": MAX_NEW, "prompt_ids": prompt, "detected": detected, "cases": cases,
         "english_only": english_only,
         "versions": VERSIONS}
  with open(os.path.join(HERE, "whisper_tokens.json"), "w", encoding="utf-8") as f: json.dump(out, f)
  for c in cases: print(c["settings"], c.get("prompt_ids") is not None, c["languages"], [len(i) for i in c["ids"]], c["ids"][0][:12])
  print("detected", detected)


def decode(model, features: np.ndarray, settings: dict, prompt: list[int] | None = None) -> dict:
  """One generate() call: the generated ids (prompt, eos and padding cut off) and scores, as the module doc says."""
  g, eot = model.generation_config, model.generation_config.eos_token_id
  with torch.no_grad():
    out = model.generate(torch.from_numpy(features), max_new_tokens=MAX_NEW, return_dict_in_generate=True, output_scores=True,
                         output_logits=True, force_unique_generate_call=True,
                         prompt_ids=None if prompt is None else torch.tensor(prompt), **settings)
  seqs = out.sequences.numpy()
  start = (len(prompt) if prompt else 0) + (3 if settings["return_timestamps"] else 4)
  code = {v: k[2:-2] for k, v in g.lang_to_id.items()}
  languages = [code[int(row[start - (2 if settings["return_timestamps"] else 3)])] for row in seqs]
  ids, scores = [], []
  for r, row in enumerate(seqs):
    gen = [int(t) for t in row[start:]]
    ended = eot in gen
    gen = gen[:gen.index(eot) + 1] if ended else gen
    if settings["num_beams"] == 1:
      logp = [float(torch.log_softmax(step[r].double(), -1)[t]) for step, t in zip(out.logits, gen)]
      scores.append(sum(logp) / len(gen) ** 1.0)
    ids.append(gen[:-1] if ended else gen)
  if settings["num_beams"] > 1: scores = out.sequences_scores.tolist()
  case = {"settings": settings, "prompt_ids": prompt, "languages": languages, "ids": ids, "scores": scores}
  if settings["return_timestamps"]:   # the same decode cut into segments: [start, end, tokens (timestamps included)] per row
    with torch.no_grad():
      cut = model.generate(torch.from_numpy(features), max_new_tokens=MAX_NEW, force_unique_generate_call=True, return_segments=True,
                           prompt_ids=None if prompt is None else torch.tensor(prompt), **settings)
    case["segments"] = [[[float(x["start"]), float(x["end"]), x["tokens"].tolist()] for x in row] for row in cut["segments"]]
  return case


def english_only_decode(model, features: np.ndarray) -> dict:
  """Greedy generate() as an English-only checkpoint decodes (is_multilingual false, no lang_to_id nor task_to_id): the
  prompt is <|startoftranscript|> <|notimestamps|>."""
  english = copy.deepcopy(model.generation_config)
  del english.lang_to_id, english.task_to_id
  english.is_multilingual = False
  kept, model.generation_config = model.generation_config, english   # generate fills what a given config lacks from this one
  with torch.no_grad():
    out = model.generate(torch.from_numpy(features), max_new_tokens=MAX_NEW, return_dict_in_generate=True, output_logits=True,
                         force_unique_generate_call=True)
  model.generation_config = kept
  eot, ids, scores = english.eos_token_id, [], []
  for r, row in enumerate(out.sequences.numpy()):
    assert row[:2].tolist() == [english.decoder_start_token_id, english.no_timestamps_token_id], row[:4]
    gen = [int(t) for t in row[2:]]
    gen = gen[:gen.index(eot) + 1] if eot in gen else gen
    scores.append(sum(float(torch.log_softmax(step[r].double(), -1)[t]) for step, t in zip(out.logits, gen)) / len(gen))
    ids.append(gen[:-1] if gen[-1] == eot else gen)
  return {"ids": ids, "scores": scores}


TIMESTAMP_SCALE, EOS_SCALE = 0.5, 6.0

if __name__ == "__main__":
  main()
