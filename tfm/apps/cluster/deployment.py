"""`tfm serve --ray`: the LibreTranslate API of tfm.apps.serve as a Ray Serve deployment of N replicas, each a
Translator warmed up once. The protocol is tfm.apps.serve.protocol's (parse_body, parse_job, answer: one implementation,
two hosts); Ray Serve's proxy takes the HTTP, spreads requests over the replicas, and `@serve.batch` gathers the texts
arriving together at a replica into one model call, padded to a shape warm-up compiled (tfm.apps.serve.batcher).

    from ray import serve
    serve.run(deployment("bundled", replicas=2, max_batch=8), route_prefix="/")   # inside ray.init()
    # POST http://127.0.0.1:8000/translate  {"q": "3rd of March, 2021"}  ->  {"translatedText": "2021-03-03"}

What tfm serve's own options mean here: max_batch and batch_wait_ms are @serve.batch's; max_body, max_texts,
max_src_len, beam_sizes, source and target as in tfm serve; max_queue is Ray Serve's max_queued_requests per replica;
timeout is the proxy's request_timeout_s (serve_on_ray sets it).
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from tfm.apps.cluster.connect import actor_options, connected, need_ray
from tfm.apps.serve.batcher import decode_padded, encode, row_sizes, source_buckets
from tfm.apps.serve.protocol import HTTPError, Options, answer, parse_body, parse_job
from tfm.apps.translator import Translator
from tfm.errors import ConfigError, InputError
from tfm.generation import keep_sessions, resolve_settings

APP = "tfm"


class Replica:
  """One replica's state: a Translator, the service's options resolved against its model, and one thread that makes every
  model call (warm-up first: every row count x beam size x source bucket), as tfm serve's model thread does."""

  def __init__(self, model: str, device: Any, options: Options, dtype: str | None = None):
    self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="tfm-serve-model")
    self.translator = self.model_thread.submit(Translator.open, model, device, dtype).result()
    default_beam = resolve_settings(self.translator.model, np.array([1])).beam_size
    self.options = options.resolved(self.translator.model.config, default_beam, tuple(self.translator.languages))
    self.rows = row_sizes(self.options.max_batch)
    self.buckets = source_buckets(self.options.max_src_len, self.translator.model.config.max_len)
    self.name, self.encoding = model, threading.Lock()
    self.model_thread.submit(self._warm_up).result()

  def _warm_up(self) -> None:
    shapes = [(r, b, n) for b in self.options.beam_sizes for r in self.rows for n in self.buckets]
    keep_sessions(self.translator.model, len(shapes))
    for rows, beam, length in shapes:
      self.translator.warmup(batch_sizes=(rows,), beam_sizes=(beam,), source_lengths=(length,), progress=False)

  async def __call__(self, request):
    """Ray Serve's entry: route a starlette request; every error as {"error": message} with its status."""
    from starlette.responses import JSONResponse
    path = request.url.path.rstrip("/") or "/"
    routes = {"/translate": ("POST", self.translate_route), "/health": ("GET", self.health_route), "/info": ("GET", self.info_route)}
    try:
      if path not in routes: raise HTTPError(404, f"no route {path}; the routes are POST /translate, GET /health and GET /info")
      method, route = routes[path]
      if request.method != method: raise HTTPError(405, f"{path} takes {method}, not {request.method}", {"Allow": method})
      status, body = 200, await route(request)
    except HTTPError as e: status, body, headers = e.status, {"error": e.message}, e.headers
    else: headers = {}
    return JSONResponse(body, status_code=status, headers=headers)

  async def translate_route(self, request) -> dict:
    body = await request.body()
    if len(body) > self.options.max_body:
      raise HTTPError(413, f"the body is {len(body)} bytes, more than this server takes (--max-body {self.options.max_body}); "
                           f"send fewer texts per request")
    job = parse_job(parse_body(body, request.headers.get("content-type", "")), self.options)
    try:
      with self.encoding: ids = encode(self.translator, job.texts, job.key, self.options.max_src_len)
    except InputError as e: raise HTTPError(422, str(e)) from None
    results = await asyncio.gather(*(self.decode((job.key, row)) for row in ids))
    failed = next((r for r in results if isinstance(r, Exception)), None)
    if isinstance(failed, InputError): raise HTTPError(422, str(failed))
    if failed is not None: raise HTTPError(500, f"the model failed on this request: {type(failed).__name__}: {failed}")
    return answer(job, [texts for texts, _ in results], [scores for _, scores in results])

  async def health_route(self, request) -> dict: return {"status": "ready"}   # a replica takes requests once warmed up

  async def info_route(self, request) -> dict:
    model, o = self.translator.model, self.options
    return {"model": self.name, "backend": model.where, "parameters": model.num_parameters(), "config": model.config.to_dict(),
            "host": "ray serve", "batching": {"max_batch": o.max_batch, "batch_wait_ms": o.batch_wait_ms, "row_sizes": list(self.rows),
                                              "source_buckets": list(self.buckets), "beam_sizes": list(o.beam_sizes)},
            "limits": {"max_body": o.max_body, "max_texts": o.max_texts, "max_src_len": o.max_src_len},
            "languages": {"source": o.source, "target": o.target, "codes": list(o.languages)}}

  async def decode(self, item: tuple) -> tuple | Exception:
    """One text's (translations, scores): the deployment replaces this with @serve.batch over decode_items."""
    return (await self.decode_items([item]))[0]

  async def decode_items(self, items: list[tuple]) -> list[tuple | Exception]:
    """(key, ids) items gathered by @serve.batch, decoded a key at a time in batches of at most max_batch rows on the
    model thread; if a batch fails, its texts one by one, so that a text the model fails on fails only its own request
    (its result is the exception)."""
    out: list = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for i, (key, _) in enumerate(items): groups.setdefault(key, []).append(i)
    for key, members in groups.items():
      for start in range(0, len(members), self.options.max_batch):
        chunk = members[start:start + self.options.max_batch]
        try: found = await self._decoded(key, [items[i][1] for i in chunk])
        except Exception as e: found = [e] if len(chunk) == 1 else [await self._alone(key, items[i][1]) for i in chunk]
        for i, result in zip(chunk, found): out[i] = result
    return out

  async def _decoded(self, key: tuple, ids: list[list[int]]) -> list[tuple]:
    loop = asyncio.get_running_loop()
    _, found = await loop.run_in_executor(self.model_thread, decode_padded, self.translator, ids, key, self.rows, self.buckets,
                                          self.encoding)
    return found

  async def _alone(self, key: tuple, ids: list[int]) -> tuple | Exception:
    try: return (await self._decoded(key, [ids]))[0]
    except Exception as e: return e

def deployment(model: str = "bundled", device: Any = "auto", replicas: int = 1, cpus: int = 1, gpus: float = 0,
               dtype: str | None = None, env: dict[str, str] | None = None, **options):
  """The Ray Serve application of the service: `replicas` Replicas, each with `cpus` cores (tinygrad's CPU threads follow)
  and `gpus` GPUs reserved, `env` more environment variables for them; `options` are tfm serve's (protocol.Options),
  checked here. Run it with ray.serve.run(app, route_prefix="/")."""
  need_ray()
  from ray import serve
  o = Options(**options).check()
  if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
    raise ConfigError(f"--replicas must be an integer >= 1 (copies of the model serving requests), got {replicas!r}")
  wait = o.batch_wait_ms / 1000 if o.batching else 0

  class TfmTranslate(Replica):
    @serve.batch(max_batch_size=o.max_batch if o.batching else 1, batch_wait_timeout_s=wait)
    async def decode(self, items: list[tuple]) -> list:
      return await self.decode_items(items)

  served = serve.deployment(TfmTranslate, name="TfmTranslate", num_replicas=replicas, max_queued_requests=o.max_queue,
                            ray_actor_options=actor_options(cpus, gpus, env))
  return served.bind(model, device, o, dtype)


def serve_on_ray(model: str = "bundled", device: Any = "auto", host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
                 address: str | None = None, cpus: int = 1, gpus: float = 0, stop: threading.Event | None = None,
                 ready: Callable[[str], None] | None = None, **options) -> None:
  """`tfm serve --ray [ADDRESS] --replicas N`: the deployment run on the cluster at `address` (as connected() decides),
  its HTTP proxy on host:port, until `stop` is set; `ready(url)` is called once every replica is warmed up. The
  application is deleted before it returns (a cluster this call started is shut down)."""
  if port == 0:
    raise ConfigError("--port 0 (any free port) is not served on Ray: its HTTP proxies listen on one port on every machine; "
                      "give one, e.g. --port 8000")
  timeout = options.get("timeout", Options.timeout)
  with connected(address):
    from ray import serve
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": timeout})
    try:
      serve.run(deployment(model, device, replicas, cpus, gpus, **options), name=APP, route_prefix="/")
      if ready is not None: ready(f"http://{f'[{host}]' if ':' in host else host}:{port}")
      (stop or threading.Event()).wait()
    finally: serve.delete(APP)
