"""The `tfm transcribe` subcommand: its options (add_parser, which tfm.cli calls) and what it does (run)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from tfm.cli.options import subcommand
from tfm.errors import TfmError


def add_parser(sub) -> None:
  p = subcommand(sub, "transcribe", "turn speech into text with a Whisper checkpoint folder (config.json, generation_config.json, "
                  "model.safetensors, tokenizer.json, as transformers saves it; tfm bundles no Whisper model): WAV files (PCM or float, any "
                  "rate, resampled to 16 kHz) or .npy arrays of 16 kHz samples; audio longer than 30 s is read window after "
                  "window; plain text, SubRip or WebVTT subtitles, or JSON",
                  "tfm transcribe talk.wav --model whisper-tiny/\n"
                  "  tfm transcribe talk.wav --model whisper-small/ --timestamps --output talk.srt\n"
                  "  tfm transcribe interview.wav --model whisper-small/ --language de --task translate --beam-size 5\n"
                  "  tfm transcribe a.wav b.wav --model whisper-tiny/ --format vtt --output-dir subtitles/")
  p.add_argument("audio", nargs="+", metavar="AUDIO", help="WAV files or .npy arrays (1-D float samples at 16 kHz); "
                 "MP3, FLAC, Ogg, M4A: convert first with ffmpeg -i IN -ar 16000 -ac 1 OUT.wav")
  p.add_argument("--model", default=None, metavar="DIR", help="a Whisper checkpoint folder, e.g. openai/whisper-tiny "
                 "downloaded with `hf download openai/whisper-tiny --local-dir whisper-tiny` (required)")
  p.add_argument("--language", default=None, metavar="CODE", help="the language spoken, as Whisper's codes (en, de, fr, ...) or "
                 "its English name (german) (default: detected on the first 30 s)")
  p.add_argument("--task", default="transcribe", choices=("transcribe", "translate"),
                 help="transcribe in the language spoken, or translate into English (default: transcribe)")
  p.add_argument("--timestamps", action="store_true", help="cut the text into timed segments at the model's timestamp "
                 "tokens (subtitles get one cue per segment; without it, one per 30-s window)")
  p.add_argument("--beam-size", "--beam", dest="beam", type=int, default=None, metavar="N",
                 help="beam size; 1 is greedy (default: the model's generation settings, else 1)")
  p.add_argument("--max-len", type=int, default=None, metavar="N", help="most tokens generated per 30-s window "
                 "(default: the model's limit)")
  p.add_argument("--prompt", default=None, metavar="TEXT", help="text given to every window as what came before it: "
                 "names and spellings to use, a style (e.g. \"Dr. Nguyen, Kubernetes.\")")
  p.add_argument("--format", default=None, choices=("txt", "srt", "vtt", "json"),
                 help="txt: one line per segment; srt, vtt: subtitles; json: text, language, segments with start and end "
                      "in seconds (default: from --output's extension, else txt)")
  p.add_argument("--output", default=None, metavar="FILE", help="write the transcript here, whole or not at all (one "
                 "AUDIO only; default: standard output)")
  p.add_argument("--output-dir", default=None, metavar="DIR", help="write each AUDIO's transcript into DIR as "
                 "NAME.FORMAT (created when missing)")
  p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                 help="progress bar on stderr, in seconds of audio (default: when stderr is a terminal)")
  p.add_argument("--device", default="auto", help="backend to run on, as `tfm backends` lists them, e.g. CPU or CL (default: auto)")
  p.add_argument("--dtype", default=None, choices=("float32", "float16"), help="compute dtype (default: float32)")
  p.set_defaults(func=run)


NO_WHISPER = ("tfm bundles no Whisper model: download a checkpoint folder (e.g. `hf download "
              "openai/whisper-tiny --local-dir whisper-tiny`) and pass --model whisper-tiny")


def run(args) -> int:
  from tfm.apps import subtitles
  from tfm.apps.transcriber import Transcriber
  from tqdm import tqdm

  from tfm.io.audio import SAMPLE_RATE, read_audio
  if args.model is None: raise TfmError(f"--model is required: {NO_WHISPER}")
  if not os.path.isdir(args.model): raise TfmError(f"--model {args.model}: no such folder; {NO_WHISPER}")
  if args.beam is not None and args.beam < 1: raise TfmError(f"--beam-size must be at least 1 (1 is greedy), got {args.beam}")
  if args.max_len is not None and args.max_len < 1: raise TfmError(f"--max-len must be at least 1, got {args.max_len}")
  if args.output and args.output_dir: raise TfmError("give --output FILE (one AUDIO) or --output-dir DIR, not both")
  if args.output and len(args.audio) > 1:
    raise TfmError(f"--output writes one transcript, and {len(args.audio)} AUDIO files were given: use --output-dir DIR "
                   f"(each written as DIR/NAME.{args.format or 'txt'})")
  fmt = args.format or (subtitles.format_of(args.output) if args.output else "txt")
  stems = [os.path.splitext(os.path.basename(path))[0] for path in args.audio]
  if args.output_dir and len(set(stems)) < len(stems):
    twice = next(stem for stem in stems if stems.count(stem) > 1)
    raise TfmError(f"two AUDIO files are named {twice}, and --output-dir would write both to {twice}.{fmt}: rename one, "
                   f"or transcribe them separately")
  samples = [read_audio(path) for path in args.audio]   # every file checked before the model loads
  transcriber = Transcriber.load(args.model, args.device, args.dtype)
  many = len(args.audio) > 1
  found = []
  for path, stem, audio in zip(args.audio, stems, samples):
    with tqdm(total=round(len(audio) / SAMPLE_RATE, 2), desc=os.path.basename(path), unit="s", leave=False,
              disable=None if args.progress is None else not args.progress) as bar:
      transcript = transcriber.transcribe(audio, language=args.language, task=args.task, timestamps=args.timestamps,
                                          beam_size=args.beam, max_len=args.max_len, prompt=args.prompt,
                                          progress=lambda done, total: bar.update(round(done - bar.n, 2)))
    if args.output_dir:
      os.makedirs(args.output_dir, exist_ok=True)
      out = os.path.join(args.output_dir, f"{stem}.{fmt}")
      subtitles.write(transcript, out, fmt)
      print(f"{path} -> {out} ({transcript.duration:.1f} s, language {transcript.language})", file=sys.stderr)
    elif args.output:
      subtitles.write(transcript, args.output, fmt)
    elif fmt == "json" and many: found.append({"audio": path, **subtitles.as_dict(transcript)})
    else: print((f"==> {path} <==\n" if many else "") + subtitles.render(transcript, fmt), end="", flush=True)
  if found: print(json.dumps(found, ensure_ascii=False, indent=2))
  return 0
