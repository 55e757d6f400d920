"""`tfm translate --ray` and `tfm serve --ray`: their flags (add_arguments, which the two parsers call) and what they do."""
from __future__ import annotations

import sys

from tfm.errors import TfmError


def add_arguments(p, workers: str) -> None:
  """--ray [ADDRESS], the number of actors (--workers or --replicas, as `workers` names it) and each one's share."""
  p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                 help=f"run on a Ray cluster, as --{workers} actors each holding the model (pip install 'tfm[ray]'); ADDRESS: "
                      f"the head's HOST:6379 or ray://HOST:10001 (default: $RAY_ADDRESS, the cluster `ray start` began here, "
                      f"else a new one on this machine); docs/SCALING.md")
  p.add_argument(f"--{workers}", type=int, default=2 if workers == "workers" else 1, metavar="N",
                 help=f"with --ray: actors, each with the model loaded once (default: {2 if workers == 'workers' else 1})")
  p.add_argument("--cpus-per-worker", type=int, default=1, metavar="N",
                 help="with --ray: cores each actor reserves; tinygrad's CPU kernels run on that many threads (default: 1)")
  p.add_argument("--gpus-per-worker", type=float, default=0, metavar="N",
                 help="with --ray: GPUs each actor reserves, a fraction shares one (default: 0); pair with --device CUDA")


def translate(args, rules: dict) -> int:
  """`tfm translate --input FILE --ray`: the file through a pool of actors, written as without --ray."""
  from tfm.apps.cluster import translate_file_on_ray
  if not args.input or args.stream:
    raise TfmError("--ray translates a file: give --input FILE (and --output FILE), without texts or --stream")
  if args.parallel is not None: raise TfmError("--parallel splits a model over one machine's devices; with --ray, leave it out")
  translate_file_on_ray(args.input, args.output, args.model, args.workers, args.device, args.ray or None, args.batch_size,
                        args.skip_bad, args.cpus_per_worker, args.gpus_per_worker, as_json=args.json, with_scores=args.scores,
                        progress=args.progress, dtype=args.dtype, source_lang=args.source_lang, target_lang=args.target_lang,
                        beam_size=args.beam, max_len=args.max_len, num_hypotheses=args.n_best, batch_type=args.batch_type,
                        prefix=args.prefix, **rules)
  return 0


def serve(args, options: dict) -> int:
  """`tfm serve --ray`: the deployment on the cluster until SIGTERM or Ctrl-C."""
  import signal
  import threading

  from tfm.apps.cluster import serve_on_ray
  stop, previous = threading.Event(), {}
  def ready(url: str) -> None:
    # set once Ray is up: ray.init installs a handler of its own that prints a stack on SIGTERM
    previous.update({sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)})
    print(f"tfm serve: ready on {url} with {args.replicas} replica(s) on Ray (POST /translate, GET /health, GET /info); "
          f"SIGTERM or Ctrl-C stops it", flush=True)
  try:
    print(f"tfm serve: starting {args.replicas} replica(s) on Ray, each warming up its batch shapes", file=sys.stderr, flush=True)
    serve_on_ray(args.model, args.device, args.host, args.port, args.replicas, args.ray or None, args.cpus_per_worker,
                 args.gpus_per_worker, stop, ready, **options)
  finally:
    for sig, handler in previous.items(): signal.signal(sig, handler)
  return 0
