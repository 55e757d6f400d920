"""The `tfm serve` subcommand: its options (add_parser, which tfm.cli calls) and what it does (run)."""
from __future__ import annotations

import sys

from tfm.cli.cluster import add_arguments as add_ray_arguments
from tfm.cli.options import parse_sizes, subcommand


def add_parser(sub) -> None:
  p = subcommand(sub, "serve", "serve a model over HTTP until SIGTERM or Ctrl-C: POST /translate as LibreTranslate's API "
                 "({\"q\": TEXT or [TEXTS], \"source\": ..., \"target\": ...} -> {\"translatedText\": ...}, plus beam_size, "
                 "alternatives and scores), GET /health (200 once warmed up), GET /info. Requests arriving together are decoded "
                 "together; warm-up first compiles every batch shape (row counts up to --max-batch x --beam x source lengths)",
                 "tfm serve                                     # the bundled dates model on http://127.0.0.1:8000\n"
                 "  curl -s localhost:8000/translate -H 'Content-Type: application/json' -d '{\"q\": \"3rd of March, 2021\"}'\n"
                 "  tfm serve --model opus-mt-en-de/ --source en --target de --beam 1,4 --max-batch 8 --port 5000\n"
                 "  tfm serve --host 0.0.0.0 --max-queue 64 --timeout 10     # reachable from other machines\n"
                 "  tfm serve --ray HEAD:6379 --replicas 4 --host 0.0.0.0   # Ray Serve replicas on a cluster (docs/SCALING.md)")
  from tfm.apps.serve import Options
  d = Options()
  p.add_argument("--model", default="bundled", metavar="bundled|PATH|DIR",
                 help="the bundled dates model, a tfm .safetensors file (its NAME.vocab.json or vocab.json beside it) or a "
                      "checkpoint folder with its tokenizer (default: bundled)")
  p.add_argument("--device", default="auto", help="backend to run on, as `tfm backends` lists them, e.g. CPU or CL (default: auto)")
  p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface (default: 127.0.0.1, this machine only)")
  p.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one and prints it (default: 8000)")
  p.add_argument("--beam", default=None, metavar="N[,N...]", help="beam sizes served, each warmed up; the first is the default "
                 "of requests that name none (default: the model's setting, else 1)")
  p.add_argument("--max-batch", type=int, default=d.max_batch, metavar="N",
                 help=f"texts decoded together at most; batches are padded to 1, 2, 4, ... N rows (default: {d.max_batch})")
  p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms, metavar="MS",
                 help=f"how long a text waits for others to batch with (default: {d.batch_wait_ms:g})")
  p.add_argument("--no-batching", action="store_true", help="decode one text at a time (to measure what batching buys)")
  p.add_argument("--max-queue", type=int, default=d.max_queue, metavar="N",
                 help=f"texts waiting or decoding at most; more get 503 with Retry-After (default: {d.max_queue})")
  p.add_argument("--timeout", type=float, default=d.timeout, metavar="S",
                 help=f"seconds a request may wait for its translation, then 504 (default: {d.timeout:g})")
  p.add_argument("--max-body", type=int, default=d.max_body, metavar="BYTES", help=f"largest request body; more get 413 (default: {d.max_body})")
  p.add_argument("--max-texts", type=int, default=d.max_texts, metavar="N", help=f"texts per request; more get 413 (default: {d.max_texts})")
  p.add_argument("--max-src-len", type=int, default=None, metavar="N",
                 help="tokens per text, eos included; longer get 422 (default: the model's max_len)")
  p.add_argument("--source", default=None, metavar="CODE", help="the model's source language: requests naming another get 400 "
                 "(default: any is accepted)")
  p.add_argument("--target", default=None, metavar="CODE", help="the model's target language, likewise")
  p.add_argument("--quiet", action="store_true", help="no line per request on stderr")
  add_ray_arguments(p, "replicas")
  p.set_defaults(func=run)


def run(args) -> int:
  """`tfm serve`: load the model, warm up every batch shape, serve until SIGTERM or Ctrl-C, then answer what was accepted."""
  import signal
  import threading
  import time

  from tfm.apps.serve import Options, Server
  from tfm.apps.translator import Translator
  beams = parse_sizes(args.beam, "--beam") if args.beam else None
  options = dict(max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, batching=not args.no_batching,
                 max_queue=args.max_queue, timeout=args.timeout, max_body=args.max_body, max_texts=args.max_texts,
                 max_src_len=args.max_src_len, beam_sizes=beams, source=args.source, target=args.target)
  Options(**options).check()   # a bad flag fails before the model loads
  if args.ray is not None:
    from tfm.cli.cluster import serve
    return serve(args, options)
  def log(line: str) -> None: print(f"tfm serve: {line}", file=sys.stderr, flush=True)
  translator = Translator.open(args.model, args.device)
  server = Server(translator, args.host, args.port, name=args.model, log=log, access_log=not args.quiet, progress=True, **options)
  stop = threading.Event()
  previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    start = time.perf_counter()
    log(f"warming up {len(server.batcher.shapes)} batch shapes on {translator.model.where} "
        f"(compiled once, then loaded from the compiled-program cache)")
    server.start(wait=False)
    while not stop.is_set() and not server.batcher.wait_ready(0.2): pass
    if server.batcher.state == "failed": raise server.batcher.error
    if not stop.is_set():
      print(f"tfm serve: ready in {time.perf_counter() - start:.1f} s on {server.url} (POST /translate, GET /health, GET /info); "
            f"SIGTERM or Ctrl-C stops it", flush=True)
      stop.wait()
    log(f"stopping: answering the {server.batcher.queued} texts accepted")
  finally:
    server.stop()
    for sig, handler in previous.items(): signal.signal(sig, handler)
  stats = server.batcher.stats
  log(f"stopped after {stats.requests} requests, {stats.texts} texts in {stats.batches} batches")
  return 0
