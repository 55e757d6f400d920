"""Write tests/fixtures/whisper_transcribe.json: what transformers makes of Whisper ids and audio with the tiny Whisper
checkpoint of tests/fixtures/whisper_tokens (tests/make_whisper_fixtures.py), so that tests/test_transcribe.py checks
tfm's tokenizer, segments and long-audio windows without transformers.

    /work/venv-bench/bin/python tests/make_transcribe_fixtures.py     # torch 2.13, transformers 5.25

- decode: hand-made id sequences and WhisperTokenizer.decode(ids, skip_special_tokens=True) of each (special tokens,
  timestamps, an <|endoftext|> in the middle, characters split over several byte-level tokens);
- split: hand-made sequences of one window (timestamps paired, single, missing; a window cut inside a segment) and the
  segments and seek step WhisperForConditionalGeneration's long-form generate cuts from them (its _retrieve_segment),
  each segment's text decoded as above;
- long: signals longer than the checkpoint's window (32 frames, 0.32 s: 45 s is about 140 windows, as 45 minutes would
  be with a real checkpoint's 30 s) through generate(return_timestamps=True, return_segments=True), greedy, with the
  language detected and with a given language: every segment's start, end and ids, and the text of all
  ids. The features are the extractor's numpy (float64) path over the whole signal, as the pipeline computes them
  for long audio.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import tokenizers
import torch
import transformers
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer
from transformers.models.whisper.generation_whisper import WhisperGenerationMixin

HERE = os.path.dirname(os.path.abspath(__file__))
FOLDER = os.path.join(HERE, "fixtures", "whisper_tokens")
OUT = os.path.join(HERE, "fixtures", "whisper_transcribe.json")
VERSIONS = {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}
SPECIALS = ["<|startoftranscript|>", "<|en|>", "<|de|>", "<|fr|>", "<|es|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
MAX_NEW = 12
# (signal of tests/audio_signals.py, generate's settings): 45 s with the language detected, 1 s translated from German;
# greedy (beam search decodes each window as tfm.generation.whisper does, checked by tests/test_whisper.py)
LONG = (("chirp_45s", dict(language=None, task="transcribe", num_beams=1)), ("noise_1s", dict(language="de", task="translate", num_beams=1)))
sys.path.insert(0, HERE)
from audio_signals import signal  # noqa: E402


def main() -> None:
  tok = WhisperTokenizer(tokenizer_file=os.path.join(FOLDER, "tokenizer.json"), extra_special_tokens=SPECIALS)
  tb = tok.convert_tokens_to_ids("<|0.00|>")
  assert tb == tok.all_special_ids[-1] + 1, "timestamps must follow <|notimestamps|>"
  sot, en, no_ts, eot = (tok.convert_tokens_to_ids(t) for t in ("<|startoftranscript|>", "<|en|>", "<|notimestamps|>", "<|endoftext|>"))
  words = tok.encode(" the cat sat", add_special_tokens=False)
  accents = tok.encode(" café über naïve 東京", add_special_tokens=False)
  decode_cases = [words, [sot, en, no_ts] + words, [tb + 3] + words + [tb + 40, tb + 40] + accents + [tb + 90], words + [eot] + accents,
                  accents, accents[:-1], []]
  decoded = [{"ids": ids, "text": tok.decode(ids, skip_special_tokens=True)} for ids in decode_cases]

  a, b = words, accents
  split_cases = [  # (ids, seek in frames, frames of audio in the window)
    ([tb] + a + [tb + 10, tb + 10] + b + [tb + 14], 0, 32),          # a single timestamp at the end: the window is done
    ([tb] + a + [tb + 6, tb + 6] + b + [tb + 11, tb + 11] + a, 0, 32),  # cut inside the third segment: seek to 0.22 s
    ([tb + 1] + a + [tb + 5, tb + 5] + b + [tb + 9, tb + 9], 64, 32),  # ends on a pair
    (a + b, 96, 32),                                                  # no timestamps: one segment, the whole window
    (a + b, 96, 21),                                                  # ... of the last, shorter window
    ([tb + 2] + a + [tb + 8], 32, 32),                                # one pair-less segment ending at its last timestamp
    ([tb] + a, 10, 27),                                               # only <|0.00|>: ends with the window
  ]
  split = []
  for ids, seek, frames in split_cases:
    segments, step = WhisperGenerationMixin._retrieve_segment(
      seek_sequence=torch.tensor(ids, dtype=torch.long), seek_outputs=[None], time_offset=torch.tensor([seek], dtype=torch.float64) * 0.02 / 2,
      timestamp_begin=tb, seek_num_frames=torch.tensor([frames]), time_precision=0.02, time_precision_features=0.01, input_stride=2,
      prev_idx=0, idx=0, return_token_timestamps=False, decoder_input_ids=torch.zeros((1, 3), dtype=torch.long))
    split.append({"ids": ids, "seek": seek, "frames": frames, "step": int(step),
                  "segments": [segment(tok, s) for s in segments]})

  model = WhisperForConditionalGeneration.from_pretrained(FOLDER).eval()
  with open(os.path.join(FOLDER, "generation_config.json"), encoding="utf-8") as f:   # from_pretrained drops Whisper's fields
    for key, value in json.load(f).items(): setattr(model.generation_config, key, value)
  extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
  long = []
  for name, settings in LONG:
    features = extractor._np_extract_fbank_features(signal(name)[None].astype(np.float64), "cpu").astype(np.float32)
    with torch.no_grad():
      out = model.generate(torch.from_numpy(features), return_timestamps=True, return_segments=True, max_new_tokens=MAX_NEW,
                           **settings)
    with torch.no_grad():   # the language it decoded as: detected on the first window where not given
      first = model.detect_language(torch.from_numpy(features[:, :, :2 * model.config.max_source_positions]))
    language = settings["language"] or tok.convert_ids_to_tokens(int(first[0]))[2:-2]
    segments = [segment(tok, s) for s in out["segments"][0]]
    ids = [i for s in segments for i in s["ids"]]
    long.append({"signal": name, "settings": settings, "language": language, "segments": segments, "text": tok.decode(ids, skip_special_tokens=True)})
    print(name, settings, len(segments), "segments", [(s["start"], s["end"], len(s["ids"])) for s in segments][:8])
  with open(OUT, "w", encoding="utf-8") as f:
    json.dump({"timestamp_begin": tb, "decode": decoded, "split": split, "max_new_tokens": MAX_NEW,
               "long": long, "versions": VERSIONS}, f, ensure_ascii=False, indent=1)


def segment(tok, s: dict) -> dict:
  ids = [int(i) for i in s["tokens"]]
  return {"start": float(s["start"]), "end": float(s["end"]), "ids": ids, "text": tok.decode(ids, skip_special_tokens=True)}


if __name__ == "__main__":
  main()
