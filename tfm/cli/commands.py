"""What each `tfm` subcommand does, given its parsed arguments (tfm.cli builds the parser): one function per command,
returning the exit code. Imports are inside the functions, so that `tfm --help` and each command load only what they use."""
from __future__ import annotations

import os
import sys

from tfm.cli.options import parse_sizes
from tfm.errors import TfmError


def cmd_backends(args) -> int:
  import backends
  from backends.probe import TIMEOUT
  if not args.timeout > 0:
    raise TfmError(f"--timeout must be a positive number of seconds, got {args.timeout:g}; {TIMEOUT:g} is the default")
  print(backends.format_table(backends.available(timeout=args.timeout, fresh=not args.cached)))
  return 0


def cmd_compare(args) -> int:
  from tfm.apps import compare
  from tfm.apps import subjects
  if args.model is None and not subjects.BUNDLED.exists():
    print(f"tfm compare: the bundled model is not installed ({subjects.BUNDLED}); comparing the tiny config with random "
          f"weights", file=sys.stderr)
  report = compare.run(subjects.load_subject(args.model), args.backends, args.dtype, args.repeat)
  print(report.markdown() if args.markdown else report.table())
  if args.json: report.write_json(args.json)
  return 0 if report.ok else 1


def cmd_translate(args) -> int:
  from tfm.apps import textfiles
  from tfm.apps.translator import Translator
  from tfm.cli import cluster
  if args.beam is not None and args.beam < 1: raise TfmError(f"--beam must be at least 1 (1 is greedy), got {args.beam}")
  if args.max_len is not None and args.max_len < 1: raise TfmError(f"--max-len must be at least 1, got {args.max_len}")
  if args.n_best < 1: raise TfmError(f"--n-best must be at least 1, got {args.n_best}")
  if args.batch_size < 1: raise TfmError(f"--batch-size must be at least 1, got {args.batch_size}")
  if bool(args.texts) == bool(args.input):
    raise TfmError("give texts to translate or --input FILE, not both" if args.texts else
                   "nothing to translate: give texts (tfm translate \"3rd of March, 2021\") or --input FILE (- for stdin)")
  rules = dict(repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
               sample=args.sample or None, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
  if args.stream and (args.input or args.json or args.n_best > 1 or (args.beam or 1) > 1):
    raise TfmError("--stream prints greedy (or sampled) translations of the texts given: leave out --input, --json, "
                   "--n-best and --beam")
  if args.ray is not None: return cluster.translate(args, rules)
  lines = textfiles.read_lines(args.input) if args.input else args.texts
  translator = Translator.open(args.model, args.device, args.dtype, args.parallel, args.source_lang, args.target_lang)
  if args.stream:
    for text in args.texts:
      chosen = {k: v for k, v in rules.items() if v is not None}
      for piece in translator.stream(text, max_len=args.max_len, target_prefix=args.prefix, **chosen):
        print(piece, end="", flush=True)
      print()
    return 0
  results = textfiles.translate_lines(translator, lines, skip_bad=args.skip_bad, progress=args.progress, beam_size=args.beam,
                                      max_len=args.max_len, num_hypotheses=args.n_best, max_batch_size=args.batch_size,
                                      batch_type=args.batch_type, prefix=args.prefix, **rules)
  textfiles.report_skipped(results, sys.stderr)
  textfiles.write_results(results, args.output, as_json=args.json, with_scores=args.scores, n_best=args.n_best)
  return 0


def cmd_compile(args) -> int:
  import time

  import numpy as np

  from tfm.runtime import cache
  from tfm.generation import prepare, resolve_settings
  batches = parse_sizes(args.batch, "--batch")
  if args.max_len is not None and args.max_len < 1: raise TfmError(f"--max-len must be at least 1, got {args.max_len}")
  model = _load_model(args.model, args.device, args.parallel)
  if not cache.info().enabled: print("tfm compile: note: TFM_CACHE=0, the compiled steps serve this process only", file=sys.stderr)
  beams = parse_sizes(args.beam, "--beam") if args.beam else (resolve_settings(model, np.array([1])).beam_size,)
  start = time.perf_counter()
  n = prepare(model, batches, beams, args.max_len)
  print(f"{n} compiled steps ready on {model.where} (batch {','.join(map(str, batches))}, beam "
        f"{','.join(map(str, beams))}) in {time.perf_counter() - start:.1f} s, kept in {cache.programs_dir()}")
  return 0


def _load_model(path: str, device: str, parallel: str | None = None):
  """The bundled model, a checkpoint folder's or a tfm weight file's (no vocabulary needed to compile)."""
  if path == "bundled":
    from tfm.apps.translator import Translator
    return Translator.bundled(device, parallel=parallel).model
  if os.path.isdir(path):
    from tfm.interop.folders import from_pretrained
    return from_pretrained(path, device=device, parallel=parallel)
  from tfm.io.weights import load
  model = load(path, device=device, parallel=parallel)
  _not_a_vit(model, path, "compiles translation steps")
  return model


def _not_a_vit(model, path: str, what: str) -> None:
  """Commands of the text model refuse a Vision Transformer's file with what to use instead."""
  from tfm.nn.vit import VisionTransformer
  if isinstance(model, VisionTransformer):
    raise TfmError(f"{path} holds a Vision Transformer; this command {what} of a text Transformer: use `tfm classify` or "
                   f"`tfm compare --model {path}`")


def cmd_cache(args) -> int:
  if args.dir is not None:
    if os.path.exists(args.dir) and not os.path.isdir(args.dir):
      raise TfmError(f"--dir {args.dir} is a file, not a cache folder; give the folder TFM_CACHE_DIR names")
    os.environ["TFM_CACHE_DIR"] = args.dir
  from backends.probe import saved_path
  from tfm.runtime import cache
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
  from tfm.apps.compare import kernel_graph
  from tfm.config import VISION_PRESETS, TransformerConfig, VisionConfig
  config = VisionConfig.preset(args.config) if args.config in VISION_PRESETS else TransformerConfig.preset(args.config)
  rendered = kernels.render(kernel_graph(config), args.target, args.arch)
  print(kernels.write_kernels(rendered, args.out, args.target, **({"arch": args.arch} if args.arch else {})))
  return 0


def cmd_convert(args) -> int:
  import os

  from tfm.io import weights
  from tfm.interop import convert_folder, convert_torch_transformer
  from tfm.interop.folders import model_type
  if os.path.isdir(args.src):
    if args.nhead is not None or args.norm_first:
      raise TfmError(f"{args.src} is a checkpoint folder, whose config.json sets the heads and the norm placement; "
                     f"drop --nhead / --norm-first (they describe torch.nn.Transformer state dicts)")
    conv, loader = convert_folder(args.src), "tfm.load"
    what = "ViT checkpoint" if conv.kind == "vit" else f"{model_type(args.src) or 'marian'} checkpoint"
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
  from tfm.nn.transformer import Transformer
  from tfm.apps.tune import tune
  if args.beam < 1: raise TfmError(f"--beam must be at least 1, got {args.beam}; 2 is a good start")
  if args.batch < 1 or args.length < 1: raise TfmError(f"--batch and --length must be positive, got {args.batch} and {args.length}")
  if os.path.isfile(args.config):
    from tfm.io.weights import load
    model = load(args.config, device=args.backend)
    _not_a_vit(model, args.config, "tunes the kernels")
  else:
    model = Transformer(TransformerConfig.preset(args.config), device=args.backend)
  if args.length > model.config.max_len:
    raise TfmError(f"--length {args.length} is longer than the model's max_len={model.config.max_len}; give a shorter --length")
  print(f"tuning the forward pass of {args.config} (batch {args.batch} x {args.length} tokens) and its decodes on {model.target or model.device}")
  print(tune(model, args.batch, args.length, args.beam).summary())
  return 0


def cmd_train(args) -> int:
  if args.task == "digits": return _train_digits(args)
  from tfm.training.evaluation import evaluate_file
  from tfm.training.trainer import Trainer, TrainOptions
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


def _train_digits(args) -> int:
  """`tfm train --task digits`: the Vision Transformer on scikit-learn's digits (tfm.training.digits), not the text trainer:
  the options that describe text runs (checkpoints, resuming, held-out sizes) do not apply."""
  import dataclasses

  from tfm.training.digits import DigitsTrainer, VisionTrainOptions, accuracy, digits_split
  unused = [f"--{k.replace('_', '-')}" for k, v in dict(resume=args.resume or None, checkpoint_every=args.checkpoint_every,
                                                         eval_size=args.eval_size).items() if v is not None]
  if unused: raise TfmError(f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to --task digits: a run is "
                            f"minutes and its held-out split is fixed (360 images); leave {'it' if len(unused) == 1 else 'them'} out")
  if args.evaluate is not None:
    from tfm.apps.classifier import Classifier
    split = digits_split()
    model = Classifier.load(args.evaluate, args.device).model
    score = accuracy(model, split.test_images, split.test_labels)
    print(f"{args.evaluate}: accuracy {score:.4f} ({round(score * len(split.test_labels))}/{len(split.test_labels)}) on the "
          f"held-out digits (load_digits, tfm.training.digits.digits_split)")
    return 0
  given = {k: v for k, v in dict(steps=args.steps, batch_size=args.batch_size, seed=args.seed, eval_every=args.eval_every,
                                 warmup=args.warmup).items() if v is not None}
  options = VisionTrainOptions(**given)
  if args.lr_scale is not None: options = dataclasses.replace(options, lr=options.lr * args.lr_scale)
  trainer = DigitsTrainer(args.config or "digits", options, device=args.device)
  print(f"training a ViT on the digits on {trainer.model.device}: {trainer.model.num_parameters():,} parameters, "
        f"{options.steps} steps of {options.batch_size} images", flush=True)
  score = trainer.run()
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    trainer.save(os.path.join(args.out, "model.safetensors"))
  print(f"step {trainer.step}: held-out accuracy {score:.4f} on {len(trainer.split.test_labels)} digits" +
        (f"; model in {os.path.join(args.out, 'model.safetensors')}" if args.out else ""))
  return 0


def cmd_classify(args) -> int:
  from tfm.apps.classifier import Classifier
  if args.top_k < 1: raise TfmError(f"--top-k must be at least 1, got {args.top_k}")
  classifier = Classifier.open(args.model, args.device)
  for image, predictions in zip(args.images, classifier.classify(args.images, top_k=args.top_k, resize=args.resize)):
    print(f"{image}: " + ", ".join(f"{p.label} ({p.probability:.1%})" for p in predictions))
  return 0


def _image_attention(args) -> int:
  from tfm.apps.classifier import Classifier
  from tfm.apps.image_attention import image_attention, plot
  if args.text is not None: raise TfmError("give a TEXT or --image, not both")
  if args.layer != -1 or args.beam is not None:   # the rollout runs through every layer, and nothing is decoded
    raise TfmError("--layer and --beam apply to a translation's cross-attention; --image draws the rollout over all layers")
  classifier = Classifier.open(args.model, args.device)
  att = image_attention(classifier, args.image, resize=args.resize)
  plot(att, args.out)
  top = att.class_map.argmax()
  print(f"{args.image}: {att.prediction.label} ({att.prediction.probability:.1%}); the class token's rollout over "
        f"{att.weights.shape[0]} layers written to {args.out} (most on patch row {top // att.class_map.shape[1]}, "
        f"column {top % att.class_map.shape[1]})")
  return 0


def cmd_attention(args) -> int:
  if args.image is not None: return _image_attention(args)
  from tfm.apps.attention_map import cross_attention, plot
  from tfm.apps.translator import Translator
  if args.text is None: raise TfmError("give the TEXT to translate (or --image IMAGE for a Vision Transformer)")
  if args.beam is not None and args.beam < 1: raise TfmError(f"--beam must be at least 1 (1 is greedy), got {args.beam}")
  translator = Translator.open(args.model, args.device)
  amap = cross_attention(translator, args.text, beam_size=args.beam)
  plot(amap, args.out, layer=args.layer)
  print(f"{amap.text!r} -> {amap.translation!r}: cross-attention of decoder layer {args.layer % amap.weights.shape[0]} "
        f"written to {args.out}")
  return 0
