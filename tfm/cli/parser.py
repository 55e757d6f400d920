"""The `tfm` parser: one subcommand per job, each with --help that explains its options by example (what each does is
in tfm.cli.commands; `tfm serve`'s options and run are in tfm.cli.serve)."""
from __future__ import annotations

import argparse

from tfm.cli import commands
from tfm.cli.cluster import add_arguments as add_ray_arguments
from tfm.cli.options import subcommand
from tfm.cli.serve import add_parser as add_serve   # (the serve options' defaults come from tfm.apps.serve)
from tfm.cli.transcribe import add_parser as add_transcribe


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="tfm", formatter_class=argparse.RawDescriptionHelpFormatter,
    description="The Transformer of 'Attention Is All You Need' on any backend tinygrad reaches.",
    epilog="examples:\n  tfm backends\n  tfm translate \"3rd of March, 2021\"\n  tfm compare --backends all")
  parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for add in (add_backends, add_compare, add_translate, add_transcribe, add_compile, add_cache, add_kernels, add_convert, add_tune, add_train,
              add_attention, add_classify, add_serve):
    add(sub)
  return parser


def add_backends(sub) -> None:
  p = subcommand(sub, "backends", "list every tinygrad backend: runs here, compile-only, or unavailable (with the fix)",
                  "tfm backends --timeout 30")
  from backends.probe import TIMEOUT
  p.add_argument("--timeout", type=float, default=TIMEOUT, help=f"seconds each probe may take (default: {TIMEOUT:g}, "
                 "or $TFM_PROBE_TIMEOUT)")
  p.add_argument("--cached", action="store_true", help="show the results other tfm commands reuse (kept for a day) "
                 "instead of probing every backend again")
  p.set_defaults(func=commands.cmd_backends)


def add_compare(sub) -> None:
  p = subcommand(sub, "compare", "run one model on every backend here (encoder output, logits, greedy and beam decoding), "
                  "check each against the float64 oracle and the reference backend, and time it; exits 1 when a backend "
                  "that runs is out of tolerance or decodes differently",
                  "tfm compare\n  tfm compare --model tiny --backends CPU,CL --dtype float16 --json compare.json")
  p.add_argument("--model", default=None, metavar="bundled|tiny|vit|digits|PATH|DIR",
                 help="the bundled model, the tiny config with random weights, the vit-tiny Vision Transformer with random "
                      "weights, the bundled digits classifier, a tfm .safetensors file, or a checkpoint folder (Marian, "
                      "NLLB/M2M100, BART, mBART, Pegasus, T5, ViT, Whisper) "
                      "(default: bundled when installed, else tiny)")
  p.add_argument("--backends", default="auto", metavar="auto|all|CPU,CL,...",
                 help="auto: every backend but the slow Python emulator; all: every one; or a comma-separated list, "
                      "where CPU*2 is the model split over two CPU devices (data parallel when the batch splits evenly, else tensor parallel)")
  p.add_argument("--dtype", default="float32", choices=["float32", "float16", "int8"],
                 help="compute dtype (default: float32); int8 is checked against the oracle of its dequantized weights")
  p.add_argument("--repeat", type=int, default=3, metavar="N", help="warm calls timed after the first (default: 3)")
  p.add_argument("--json", default=None, metavar="FILE", help="also write the full report as JSON (replaced atomically)")
  p.add_argument("--markdown", action="store_true", help="print the table as markdown (as in docs/BACKENDS.md)")
  p.set_defaults(func=commands.cmd_compare)


def add_translate(sub) -> None:
  p = subcommand(sub, "translate", "translate texts with the bundled model, a tfm .safetensors file or a checkpoint folder "
                  "(Marian/opus-mt, NLLB-200, M2M100, mBART, BART, Pegasus, T5): greedy decoding, or beam search with --beam; "
                  "one line out per text, from the command line or a file of texts, one per line",
                  "tfm translate \"3rd of March, 2021\" \"July 4, 1976\"\n"
                  "  tfm translate --model opus-mt-en-de/ --beam 4 --scores \"How are you?\"\n"
                  "  tfm translate --model nllb-200-distilled-600M/ --source-lang eng_Latn --target-lang fra_Latn \"Hello\"\n"
                  "  tfm translate --input dates.txt --output iso.txt --batch-size 64\n"
                  "  tfm translate --input corpus.txt --output out.txt --ray HEAD:6379 --workers 8\n"
                  "  tfm translate --stream \"3rd of March, 2021\"")
  p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to translate, batched together (or give --input)")
  p.add_argument("--model", default="bundled", metavar="bundled|PATH|DIR",
                 help="the bundled dates model, a tfm .safetensors file (its NAME.vocab.json or vocab.json beside it) or a "
                      "checkpoint folder with its tokenizer files, as transformers saves it (default: bundled)")
  p.add_argument("--source-lang", default=None, metavar="CODE", help="a multilingual model's source language: NLLB's "
                 "eng_Latn, M2M100's en, mBART's en_XX (an unknown code lists the model's)")
  p.add_argument("--target-lang", default=None, metavar="CODE", help="a multilingual model's target language, as --source-lang")
  p.add_argument("--input", metavar="FILE|-", help="translate each line of this UTF-8 file (- for standard input); blank "
                 "lines stay blank, output order is input order")
  p.add_argument("--output", metavar="FILE|-", help="write the translations here, one per input line, whole or not at all "
                 "(default: standard output)")
  p.add_argument("--beam", "--beam-size", dest="beam", type=int, default=None, metavar="N",
                 help="beam size; 1 is greedy (default: the model's generation settings, else 1)")
  p.add_argument("--n-best", type=int, default=1, metavar="N", help="print the N best translations of each text, best "
                 "first, one per line (needs --beam N or more; with --json: an n_best list)")
  p.add_argument("--max-len", type=int, default=None, metavar="N",
                 help="most tokens generated per text (default: the model's setting, else source length + 50, at most its max_len)")
  p.add_argument("--batch-size", type=int, default=32, metavar="N", help="texts per batch (default: 32); with "
                 "--batch-type tokens, padded source tokens per batch")
  p.add_argument("--batch-type", choices=("examples", "tokens"), default="examples",
                 help="what --batch-size counts (default: examples)")
  p.add_argument("--device", default="auto", help="backend to run on, as `tfm backends` lists them, e.g. CPU or CL, or several "
                 "devices of one: CPU*2, CUDA:0,CUDA:1 (default: auto)")
  p.add_argument("--parallel", default=None, choices=("data", "tensor"), help="with several devices: split the batch (data) "
                 "or the heads and FFN columns (tensor) over them (default: data, tensor for models over 2 GiB)")
  p.add_argument("--dtype", default=None, choices=("float32", "float16", "int8"),
                 help="compute dtype (default: float32, or int8 for an int8 file); int8: int8 Linear weights with "
                      "per-row scales, faster, approximate")
  p.add_argument("--scores", action="store_true", help="print each translation's score (log-prob / length) before it, tab-separated")
  p.add_argument("--json", action="store_true", help="one JSON object per input line: line, source, translation, score "
                 "(n_best with --n-best, error for a skipped line)")
  p.add_argument("--skip-bad", action="store_true", help="skip lines the model cannot take (unknown characters, too long), "
                 "reporting each on stderr and leaving its output line blank, instead of stopping before translating")
  p.add_argument("--repetition-penalty", type=float, default=None, metavar="P", help="divide the scores of tokens already "
                 "produced by P (multiply where negative); above 1 discourages repeats")
  p.add_argument("--no-repeat-ngram-size", type=int, default=None, metavar="N", help="never produce the same N tokens twice")
  p.add_argument("--prefix", default=None, metavar="TEXT", help="force every translation to start with TEXT")
  p.add_argument("--sample", action="store_true", help="draw each token at random from the model's distribution "
                 "(with --temperature, --top-k, --top-p; --seed repeats a run) instead of taking the most probable")
  p.add_argument("--temperature", type=float, default=None, metavar="T", help="sampling temperature (default: 1.0)")
  p.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K most probable tokens only")
  p.add_argument("--top-p", type=float, default=None, metavar="P", help="sample among the most probable tokens that "
                 "together reach probability P")
  p.add_argument("--seed", type=int, default=None, help="seed of --sample's random draws: the same seed, the same output")
  p.add_argument("--stream", action="store_true", help="print each translation as its tokens are decoded (greedy)")
  p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                 help="progress bar on stderr for --input (default: when stderr is a terminal)")
  add_ray_arguments(p, "workers")
  p.set_defaults(func=commands.cmd_translate)


def add_compile(sub) -> None:
  p = subcommand(sub, "compile", "compile a model's encoder and decode steps for the batch shapes you will translate, "
                  "and keep them in tfm's compiled-program cache: later `tfm translate` runs and apps start without "
                  "compiling (see `tfm cache info`)",
                  "tfm compile\n  tfm compile opus-mt-en-de/ --device CL --batch 1,8 --beam 4 --max-len 64")
  p.add_argument("model", nargs="?", default="bundled", metavar="MODEL",
                 help="bundled, a tfm .safetensors file or a checkpoint folder (default: bundled)")
  p.add_argument("--device", default="auto", help="backend to compile for, as `tfm backends` lists them, or several "
                 "devices of one, e.g. CPU*2 (default: auto)")
  p.add_argument("--parallel", default=None, choices=("data", "tensor"), help="with several devices, as tfm translate takes it")
  p.add_argument("--batch", default="1", metavar="N[,N...]", help="batch sizes (texts per call) to prepare (default: 1)")
  p.add_argument("--beam", default=None, metavar="N[,N...]",
                 help="beam sizes to prepare; 1 is greedy (default: the model's setting, else 1)")
  p.add_argument("--max-len", type=int, default=None, metavar="N",
                 help="longest source, in tokens, to prepare for (default: 64, at most the model's max_len)")
  p.set_defaults(func=commands.cmd_compile)


def add_cache(sub) -> None:
  p = subcommand(sub, "cache", "show or empty tfm's caches: compiled steps (`tfm compile`, and every run that compiles) "
                  "and backend probe results; TFM_CACHE_DIR moves them, TFM_CACHE=0 switches them off",
                  "tfm cache info\n  tfm cache clear")
  p.add_argument("action", choices=["info", "clear"], help="info: where and how big; clear: remove every entry")
  p.add_argument("--dir", default=None, metavar="FOLDER", help="a cache folder other than this environment's "
                 "(default: $TFM_CACHE_DIR, else the platform's cache folder)")
  p.set_defaults(func=commands.cmd_cache)


def add_kernels(sub) -> None:
  from backends.kernels import LANGUAGES
  p = subcommand(sub, "kernels", "write the kernels of a model's forward pass (attention, layernorm, FFN) in a kernel "
                  "language, one file per kernel, without the hardware; CUDA is also compiled to PTX when NVRTC is present",
                  "tfm kernels --target cuda --out kernels/")
  p.add_argument("--target", required=True, choices=sorted(LANGUAGES), help="kernel language to render")
  p.add_argument("--out", required=True, help="directory to write the kernel files into (created if missing)")
  p.add_argument("--config", default="tiny", help="preset of the model whose forward pass is rendered: a Transformer's (tiny, "
                 "base, ...) or a Vision Transformer's (vit-tiny, vit-s16, digits, ...) (default: tiny)")
  p.add_argument("--arch", default=None, help="architecture, e.g. sm_90 for cuda/ptx or Apple9 for metal")
  p.set_defaults(func=commands.cmd_kernels)


def add_convert(sub) -> None:
  p = subcommand(sub, "convert", "convert a checkpoint folder (Marian, NLLB/M2M100, BART, mBART, Pegasus, T5, ViT) or a "
                  "torch.nn.Transformer state dict "
                  "(.pt or .safetensors) into a tfm .safetensors file, listing how every tensor was mapped",
                  "tfm convert opus-mt-en-de/ --out en-de.safetensors\n  tfm convert transformer.pt --nhead 8 --out stacks.safetensors")
  p.add_argument("src", help="a checkpoint folder (config.json + model.safetensors) or a state dict file")
  p.add_argument("--out", required=True, help="the .safetensors file to write (replaced atomically)")
  p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "int8"],
                 help="storage dtype (default: float32); int8: Linear weights as int8 rows with float32 scales, loaded as an int8 model")
  torch_args = p.add_argument_group("torch.nn.Transformer state dicts (what the state dict does not record)")
  torch_args.add_argument("--nhead", type=int, help="number of attention heads (required for a state dict)")
  torch_args.add_argument("--norm-first", action="store_true", help="the model was built with norm_first=True")
  torch_args.add_argument("--activation", default="relu", choices=["relu", "gelu"], help="FFN activation (default: relu)")
  torch_args.add_argument("--layer-norm-eps", type=float, default=1e-5, help="LayerNorm epsilon (default: 1e-5)")
  p.set_defaults(func=commands.cmd_convert)


def add_tune(sub) -> None:
  p = subcommand(sub, "tune", "BEAM-search the kernels of a model's forward pass and decode steps (greedy batch 1, beam 4 batch 8) once "
                  "on this machine and cache those that beat tinygrad's defaults: "
                  "every later run on that backend uses the tuned kernels (TFM_TUNED=0 turns that off)",
                  "tfm tune --config base --backend CL\n  tfm tune --config model.safetensors --backend CPU --beam 2")
  p.add_argument("--config", default="base", help="a preset (base, big, tiny) or a saved model file (default: base)")
  p.add_argument("--backend", default="auto", help="backend to tune for, as `tfm backends` lists them (default: auto)")
  p.add_argument("--beam", type=int, default=2, help="BEAM search width: wider searches longer (default: 2)")
  p.add_argument("--batch", type=int, default=8, help="sequences per batch of the tuned forward pass (default: 8)")
  p.add_argument("--length", type=int, default=64, help="source and target tokens of the tuned forward pass (default: 64)")
  p.set_defaults(func=commands.cmd_tune)


def add_train(sub) -> None:
  p = subcommand(sub, "train", "train a Transformer on a synthetic task (teacher forcing, label smoothing, warmup schedule, "
                  "Adam); checkpoints go to --out every --checkpoint-every steps and --resume continues exactly where a run stopped",
                  "tfm train --task reverse --config tiny --steps 300 --out runs/reverse\n"
                  "  tfm train --task dates --config small --steps 3000 --batch-size 128 --device CPU --out runs/dates\n"
                  "  tfm train --out runs/dates --resume --steps 4000\n"
                  "  tfm train --task digits --steps 3000 --device CPU --out runs/digits    # the ViT digits classifier (scikit-learn)")
  p.add_argument("--task", default=None, choices=["dates", "copy", "reverse", "digits"],
                 help="what to learn (default: dates); digits trains a Vision Transformer on scikit-learn's load_digits "
                      "(tfm.training.digits: --config is then a vision preset, default digits)")
  p.add_argument("--config", default=None, metavar="tiny|small|base|PATH.json",
                 help="model sizes: a preset or a JSON file of TransformerConfig fields; vocab_size and the special "
                      "ids come from the task (default: small)")
  p.add_argument("--steps", type=int, default=None,
                 help="total optimizer steps, counted from the start of the run (default: 1000; 3000 for --task digits)")
  p.add_argument("--batch-size", type=int, default=None, help="examples per step (default: 64)")
  p.add_argument("--device", default="auto", help="backend to train on, as `tfm backends` lists them, e.g. CPU or CL (default: auto)")
  p.add_argument("--out", default=None, help="folder for checkpoints and the trained model (model.safetensors, vocab.json)")
  p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
  p.add_argument("--seed", type=int, default=None, help="seed of the weights, dropout and batches (default: 0)")
  p.add_argument("--eval-every", type=int, default=None, help="steps between held-out evaluations (default: 500)")
  p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: 500)")
  p.add_argument("--warmup", type=int, default=None, help="warmup steps of the learning-rate schedule (default: 400; 200 for --task digits)")
  p.add_argument("--lr-scale", type=float, default=None, help="factor on the paper's learning-rate schedule (default: 1.0); "
                 "for --task digits, on AdamW's peak rate 2e-3 (linear warmup, cosine decay)")
  p.add_argument("--eval-size", type=int, default=None, help="held-out examples per evaluation (default: 200 while training, 2000 with --evaluate)")
  p.add_argument("--evaluate", default=None, metavar="MODEL",
                 help="do not train: greedy-decode --eval-size held-out examples of --task with this saved model and "
                      "print its exact match and token accuracy")
  p.set_defaults(func=commands.cmd_train)


def add_classify(sub) -> None:
  p = subcommand(sub, "classify", "classify images with a Vision Transformer: the bundled digits classifier (8x8 greyscale, "
                  "white ink on black as scikit-learn's digits), a tfm .safetensors file of kind vit or a Hugging Face ViT "
                  "checkpoint folder; one line per image with its top-k labels and probabilities",
                  "tfm classify digit.png\n  tfm classify photo.jpg scan.png --model vit-checkpoint/ --resize --top-k 3")
  p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ... through Pillow) or .npy arrays "
                 "((H, W) or (H, W, C); uint8, or floats in [0, 1]), classified together")
  p.add_argument("--model", default="bundled", metavar="bundled|PATH|DIR",
                 help="the bundled digits classifier, a tfm .safetensors file of kind vit or a ViT checkpoint folder (default: bundled)")
  p.add_argument("--top-k", type=int, default=3, metavar="K", help="labels printed per image, most probable first (default: 3)")
  p.add_argument("--resize", action="store_true", help="resize images to the model's size (bilinear) instead of refusing "
                 "another size; colour and greyscale are always converted to the model's channels")
  p.add_argument("--device", default="auto", help="backend to run on, as `tfm backends` lists them, e.g. CPU or CL (default: auto)")
  p.set_defaults(func=commands.cmd_classify)


def add_attention(sub) -> None:
  p = subcommand(sub, "attention", "translate one text and draw its cross-attention as a PNG: source tokens across, output "
                  "tokens down, the layer's mean over heads and one panel per head; or, with --image, classify one image and "
                  "draw where the class token looks (attention rollout over the layers) over it (needs matplotlib: pip install 'tfm[viz]')",
                  "tfm attention \"3rd of March, 2021\" --out map.png\n"
                  "  tfm attention \"12.10.2030\" --layer 0 --model runs/dates/model.safetensors --out layer0.png\n"
                  "  tfm attention --image digit.png --out rollout.png")
  p.add_argument("text", metavar="TEXT", nargs="?", default=None, help="the text to translate (or give --image)")
  p.add_argument("--image", default=None, metavar="IMAGE",
                 help="an image (PNG, JPEG, ... or .npy) to classify with a Vision Transformer instead of a text; --model "
                      "is then the bundled digits classifier (default), a tfm file of kind vit or a ViT checkpoint folder")
  p.add_argument("--resize", action="store_true", help="with --image: resize it to the model's size instead of refusing another size")
  p.add_argument("--out", required=True, metavar="FILE.png", help="the PNG to write (replaced atomically)")
  p.add_argument("--layer", type=int, default=-1, metavar="N",
                 help="decoder layer, counted from 0 as in decoder.layers.N; -1 is the last (default: -1)")
  p.add_argument("--model", default="bundled", metavar="bundled|PATH|DIR",
                 help="the bundled dates model, a tfm .safetensors file (its NAME.vocab.json or vocab.json beside it) or a "
                      "checkpoint folder with its tokenizer files, as transformers saves it (default: bundled)")
  p.add_argument("--source-lang", default=None, metavar="CODE", help="a multilingual model's source language: NLLB's "
                 "eng_Latn, M2M100's en, mBART's en_XX (an unknown code lists the model's)")
  p.add_argument("--target-lang", default=None, metavar="CODE", help="a multilingual model's target language, as --source-lang")
  p.add_argument("--beam", type=int, default=None, metavar="N",
                 help="beam size of the translation; 1 is greedy (default: the model's setting, else 1)")
  p.add_argument("--device", default="auto", help="backend to run on, as `tfm backends` lists them, e.g. CPU or CL (default: auto)")
  p.set_defaults(func=commands.cmd_attention)
