"""What each `tfm` subcommand does, given its parsed arguments (tfm.cli builds the parser): one function per command,
returning the exit code. Imports are inside the functions, so that `tfm --help` and each command load only what they use."""
from __future__ import annotations

import os
import sys

from tfm.errors import TfmError


def cmd_backends(args) -> int:
  import backends
  from backends.probe import TIMEOUT
  if not args.timeout > 0:
    raise TfmError(f"--timeout must be a positive number of seconds, got {args.timeout:g}; {TIMEOUT:g} is the default")
  print(backends.format_table(backends.available(timeout=args.timeout, fresh=not args.cached)))
  return 0


def cmd_compare(args) -> int:
  from tfm import compare
  if args.model is None and not compare.BUNDLED.exists():
    print(f"tfm compare: the bundled model is not installed ({compare.BUNDLED}); comparing the tiny config with random "
          f"weights", file=sys.stderr)
  report = compare.run(compare.load_subject(args.model), args.backends, args.dtype, args.repeat)
  print(report.markdown() if args.markdown else report.table())
  if args.json: report.write_json(args.json)
  return 0 if report.ok else 1


def cmd_translate(args) -> int:
  from tfm.translator import Translator
  if args.beam is not None and args.beam < 1: raise TfmError(f"--beam must be at least 1 (1 is greedy), got {args.beam}")
  if args.max_len is not None and args.max_len < 1: raise TfmError(f"--max-len must be at least 1, got {args.max_len}")
  translator = Translator.bundled(args.device) if args.model == "bundled" else Translator.load(args.model, args.device)
  texts, scores = translator.translate(args.texts, beam_size=args.beam, max_len=args.max_len, return_scores=True)
  for text, score in zip(texts, scores): print(f"{score:.4f}\t{text}" if args.scores else text)
  return 0


def _sizes(text: str, flag: str) -> tuple[int, ...]:
  """'1,8' -> (1, 8): positive integers, or an error naming the flag."""
  try: sizes = tuple(int(x) for x in text.split(","))
  except ValueError: sizes = ()
  if not sizes or min(sizes) < 1: raise TfmError(f"{flag} takes positive integers separated by commas (e.g. 1,8), got {text!r}")
  return sizes


def cmd_compile(args) -> int:
  import time

  import numpy as np

  from tfm import cache
  from tfm.generation import prepare, resolve_settings
  batches = _sizes(args.batch, "--batch")
  if args.max_len is not None and args.max_len < 1: raise TfmError(f"--max-len must be at least 1, got {args.max_len}")
  model = _load_model(args.model, args.device)
  if not cache.info().enabled: print("tfm compile: note: TFM_CACHE=0, the compiled steps serve this process only", file=sys.stderr)
  beams = _sizes(args.beam, "--beam") if args.beam else (resolve_settings(model, np.array([1])).beam_size,)
  start = time.perf_counter()
  n = prepare(model, batches, beams, args.max_len)
  print(f"{n} compiled steps ready on {model.target or model.device} (batch {','.join(map(str, batches))}, beam "
        f"{','.join(map(str, beams))}) in {time.perf_counter() - start:.1f} s, kept in {cache.programs_dir()}")
  return 0


def _load_model(path: str, device: str):
  """The bundled model, a Marian folder's or a tfm weight file's (no vocabulary needed to compile)."""
  if path == "bundled":
    from tfm.translator import Translator
    return Translator.bundled(device).model
  if os.path.isdir(path):
    from tfm.interop.marian import from_pretrained
    return from_pretrained(path, device=device)
  from tfm.weights import load
  return load(path, device=device)


def cmd_cache(args) -> int:
  if args.dir is not None:
    if os.path.exists(args.dir) and not os.path.isdir(args.dir):
      raise TfmError(f"--dir {args.dir} is a file, not a cache folder; give the folder TFM_CACHE_DIR names")
    os.environ["TFM_CACHE_DIR"] = args.dir
  from backends.probe import saved_path
  from tfm import cache
  if args.action == "clear":
    removed = cache.clear()
    probes = saved_path().exists()
    if probes: saved_path().unlink()
    print(f"removed {removed} compiled steps" + (" and the saved probe results" if probes else "") + f" from {cache.programs_dir().parent}")
    return 0
  print(cache.info().summary())
  print(f"  probes:  {saved_path()} ({'present' if saved_path().exists() else 'none'}; `tfm backends` probes anew)")
  from tinygrad.helpers import CACHEDB
  print(f"tinygrad's kernel cache (compiled binaries, tuned kernels): {CACHEDB}")
  return 0


def cmd_kernels(args) -> int:
  from backends import kernels
  from tfm.compare import kernel_graph
  from tfm.config import TransformerConfig
  rendered = kernels.render(kernel_graph(TransformerConfig.preset(args.config)), args.target, args.arch)
  print(kernels.write_kernels(rendered, args.out, args.target, **({"arch": args.arch} if args.arch else {})))
  return 0


def cmd_convert(args) -> int:
  import os

  from tfm import weights
  from tfm.interop import convert_marian, convert_torch_transformer
  if os.path.isdir(args.src):
    if args.nhead is not None or args.norm_first:
      raise TfmError(f"{args.src} is a Marian checkpoint folder, whose config.json sets the heads and the norm placement; "
                     f"drop --nhead / --norm-first (they describe torch.nn.Transformer state dicts)")
    conv, what, loader = convert_marian(args.src), "Marian checkpoint", "tfm.load"
  else:
    if args.nhead is None:
      raise TfmError("a torch.nn.Transformer state dict does not record its number of heads: add --nhead N")
    conv = convert_torch_transformer(args.src, args.nhead, args.norm_first, args.activation, args.layer_norm_eps)
    what, loader = "torch.nn.Transformer state dict", "tfm.interop.load_stacks"
  weights.write(args.out, conv.arrays, conv.config, conv.kind, args.dtype,
                {"converted_from": os.path.basename(os.path.abspath(args.src))}, conv.generation_config)
  print(f"{args.src} ({what}) -> {args.out} ({args.dtype}, {os.path.getsize(args.out):,} bytes)")
  print(conv.summary())
  print(f"load it with {loader}({args.out!r})")
  return 0


def cmd_tune(args) -> int:
  import os

  from tfm.config import TransformerConfig
  from tfm.model import Transformer
  from tfm.tune import tune
  if args.beam < 1: raise TfmError(f"--beam must be at least 1, got {args.beam}; 2 is a good start")
  if args.batch < 1 or args.length < 1: raise TfmError(f"--batch and --length must be positive, got {args.batch} and {args.length}")
  if os.path.isfile(args.config):
    from tfm.weights import load
    model = load(args.config, device=args.backend)
  else:
    model = Transformer(TransformerConfig.preset(args.config), device=args.backend)
  if args.length > model.config.max_len:
    raise TfmError(f"--length {args.length} is longer than the model's max_len={model.config.max_len}; give a shorter --length")
  print(f"tuning the forward pass of {args.config} (batch {args.batch} x {args.length} tokens) on {model.target or model.device}")
  print(tune(model, args.batch, args.length, args.beam).summary())
  return 0


def cmd_train(args) -> int:
  from tfm.train import Trainer, TrainOptions, evaluate_file
  if args.evaluate is not None:
    n, task = args.eval_size or 2000, args.task or "dates"
    scores = evaluate_file(args.evaluate, task, n, device=args.device)
    print(f"{args.evaluate}: exact match {scores['exact_match']:.4f}, token accuracy {scores['token_accuracy']:.4f} "
          f"on {n} held-out {task} examples (greedy)")
    return 0
  given = {k: v for k, v in dict(batch_size=args.batch_size, seed=args.seed, eval_every=args.eval_every,
                                 checkpoint_every=args.checkpoint_every, warmup=args.warmup, lr_scale=args.lr_scale,
                                 eval_size=args.eval_size).items()
           if v is not None}
  if args.resume:
    if args.out is None: raise TfmError("--resume continues the run in --out: give --out FOLDER")
    fixed = [f"--{k.replace('_', '-')}" for k, v in dict(task=args.task, config=args.config, **given).items() if v is not None]
    if fixed: raise TfmError(f"{', '.join(fixed)} cannot change on --resume (the run continues exactly); give only --steps and --device")
    trainer = Trainer.resume(args.out, steps=args.steps, device=args.device)
  else:
    options = TrainOptions(**given, **({"steps": args.steps} if args.steps is not None else {}))
    trainer = Trainer(args.task or "dates", args.config or "small", options, device=args.device, out=args.out)
  print(f"training {trainer.task.name} on {trainer.model.device}: {trainer.model.num_parameters():,} parameters, "
        f"steps {trainer.step} -> {trainer.options.steps}, batch {trainer.options.batch_size}", flush=True)
  scores = trainer.run()
  print(f"step {trainer.step}: exact match {scores['exact_match']:.4f}, token accuracy {scores['token_accuracy']:.4f} "
        f"on {trainer.options.eval_size} held-out examples" + (f"; model in {args.out}" if args.out else ""))
  return 0


def cmd_attention(args) -> int:
  from tfm.attention_map import cross_attention, plot
  from tfm.translator import Translator
  if args.beam is not None and args.beam < 1: raise TfmError(f"--beam must be at least 1 (1 is greedy), got {args.beam}")
  translator = Translator.bundled(args.device) if args.model == "bundled" else Translator.load(args.model, args.device)
  amap = cross_attention(translator, args.text, beam_size=args.beam)
  plot(amap, args.out, layer=args.layer)
  print(f"{amap.text!r} -> {amap.translation!r}: cross-attention of decoder layer {args.layer % amap.weights.shape[0]} "
        f"written to {args.out}")
  return 0
