"""The HTTP layer: the standard library's ThreadingHTTPServer (a thread per connection, HTTP/1.0, one request each),
the routes, JSON in and out, and a stop that stops accepting and answers what was accepted."""
from __future__ import annotations

import json
import socket
import socketserver
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

import numpy as np

from tfm.errors import InputError, TfmError
from tfm.generation import resolve_settings
from tfm.apps.serve.batcher import Batcher, Busy
from tfm.apps.serve.protocol import HTTPError, Options, answer, parse_body, parse_job
from tfm.apps.translator import Translator

CLIENT_TIMEOUT = 10   # seconds a client may take to send its request: a stalled one is cut off, not kept forever


class _HTTPServer(ThreadingHTTPServer):
  daemon_threads = False    # stop() joins the handler threads: every accepted request is answered first
  request_queue_size = 128  # connections the kernel holds before they are accepted
  service: Server

  def server_bind(self) -> None:
    # HTTPServer's own server_bind asks DNS for the host's name, which can take seconds on a machine without DNS
    socketserver.TCPServer.server_bind(self)
    self.server_name, self.server_port = self.server_address[:2]


class _HTTPServer6(_HTTPServer):
  address_family = socket.AF_INET6


class Handler(BaseHTTPRequestHandler):
  """One connection: route the request, answer JSON, an error as {"error": message}."""
  server: _HTTPServer
  server_version, sys_version = "tfm-serve", ""
  timeout = CLIENT_TIMEOUT

  def do_GET(self): self._route("GET")
  def do_POST(self): self._route("POST")
  def do_PUT(self): self._route("PUT")
  def do_DELETE(self): self._route("DELETE")
  def do_PATCH(self): self._route("PATCH")

  def _route(self, method: str) -> None:
    service, path = self.server.service, urlsplit(self.path).path
    routes = {"/translate": ("POST", service.translate_route), "/health": ("GET", service.health_route),
              "/info": ("GET", service.info_route)}
    try:
      if path not in routes:
        raise HTTPError(404, f"no route {path}; the routes are POST /translate, GET /health and GET /info")
      allowed, route = routes[path]
      if method != allowed: raise HTTPError(405, f"{path} takes {allowed}, not {method}", {"Allow": allowed})
      status, body, headers = route(self)
    except HTTPError as e:
      status, body, headers = e.status, {"error": e.message}, e.headers
    except Exception as e:  # a fault of the service: the caller gets a JSON 500, the server goes on
      service.log(f"internal error on {method} {path}: {type(e).__name__}: {e}")
      status, body, headers = 500, {"error": f"internal error: {type(e).__name__}: {e}"}, {}
    self._send(status, body, headers)

  def body(self, limit: int) -> bytes:
    """The request body, refused before it is read when it has no length or is over `limit` bytes."""
    length = self.headers.get("Content-Length")
    if length is None:
      raise HTTPError(411, "the request has no Content-Length; send the body with its length (chunked bodies are not served)")
    try: n = int(length)
    except ValueError: raise HTTPError(400, f"Content-Length {length!r} is not a number of bytes") from None
    if n < 0: raise HTTPError(400, f"Content-Length {n} is negative")
    if n > limit:
      self.close_connection = True
      raise HTTPError(413, f"the body is {n} bytes, more than this server takes (--max-body {limit}); send fewer texts per request")
    try: data = self.rfile.read(n)
    except TimeoutError: raise HTTPError(408, f"the body did not arrive within {CLIENT_TIMEOUT} s") from None
    if len(data) < n: raise HTTPError(400, f"the body ended after {len(data)} of its {n} bytes (Content-Length)")
    return data

  def _send(self, status: int, body: dict, headers: dict[str, str]) -> None:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    try:
      self.send_response(status)
      self.send_header("Content-Type", "application/json; charset=utf-8")
      self.send_header("Content-Length", str(len(data)))
      for name, value in headers.items(): self.send_header(name, value)
      self.end_headers()
      self.wfile.write(data)
    except OSError: pass   # the client went away: nobody to tell

  def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
    """Errors found by the standard library's parser (a bad request line, headers too long, an unknown method), as JSON."""
    self.close_connection = True
    phrase = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "error"
    self._send(code, {"error": message or explain or phrase}, {})

  def log_request(self, code="-", size="-") -> None:
    if self.server.service.access_log: super().log_request(code, size)

  def log_message(self, format: str, *args) -> None:
    self.server.service.log(f"{self.address_string()} {format % args}")


class Server:
  """The model as an HTTP service: POST /translate (LibreTranslate's API), GET /health, GET /info.

      server = Server(tfm.Translator.bundled(), port=0).start()   # port 0: any free port, then server.port
      ...                                                            # POST f"{server.url}/translate"
      server.stop()                                                  # stops accepting, answers what it accepted

  Binds when built (a port in use is a TfmError); start() warms the model up in its own thread (wait=True returns
  once every batch shape is compiled: /health says ready) and serves. The options are protocol.Options' fields.
  `log` gets a line per request (unless access_log=False) and per fault; `progress` shows warm-up on stderr.
  """

  def __init__(self, translator: Translator, host: str = "127.0.0.1", port: int = 8000, name: str = "model",
               log: Callable[[str], None] | None = None, access_log: bool = True, progress: bool = False, **options):
    default_beam = resolve_settings(translator.model, np.array([1])).beam_size
    self.options = Options(**options).resolved(translator.model.config, default_beam, tuple(translator.languages))
    self.translator, self.name, self.log, self.access_log = translator, name, log or (lambda line: None), access_log
    self.batcher = Batcher(translator, self.options, progress)
    try:
      self.httpd = (_HTTPServer6 if ":" in host else _HTTPServer)((host, port), Handler)
    except OSError as e:
      raise TfmError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port (0: any free one) or stop "
                     f"what listens there") from None
    self.httpd.service = self
    self.host, self.port = self.httpd.server_address[:2]
    self._http_thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                         name="tfm-serve-http", daemon=True)
    self._stopped = False

  @property
  def url(self) -> str: return f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}"

  def start(self, wait: bool = True) -> Server:
    """Warm up and serve; wait=True returns once warmed up (raising the warm-up's error if it failed)."""
    self.batcher.start()
    self._http_thread.start()
    if wait:
      self.batcher.wait_ready()
      if self.batcher.state == "failed":
        self.stop()   # the port and the HTTP thread are released before the error goes up
        raise self.batcher.error
    return self

  def stop(self) -> None:
    """Stop accepting connections, answer every request already accepted, then end the model thread."""
    if self._stopped: return
    self._stopped = True
    if self._http_thread.is_alive(): self.httpd.shutdown()
    self.httpd.server_close()   # closes the listening socket, then joins the handler threads
    self.batcher.stop()

  def __enter__(self) -> Server: return self
  def __exit__(self, *exc) -> None: self.stop()

  # --- the routes: (status, JSON body, extra headers) -----------------------------------------------------------

  def translate_route(self, request: Handler) -> tuple[int, dict, dict]:
    fields = parse_body(request.body(self.options.max_body), request.headers.get("Content-Type", ""))
    job = parse_job(fields, self.options)
    try:
      ticket = self.batcher.submit(job.texts, job.key)
    except InputError as e: raise HTTPError(422, str(e)) from None
    except Busy as e: raise HTTPError(503, str(e), {"Retry-After": str(e.retry_after)}) from None
    if not ticket.done.wait(self.options.timeout):
      self.batcher.cancel(ticket)
      raise HTTPError(504, f"the translation did not finish within {self.options.timeout:g} s (--timeout); the server is "
                           f"busy: try again, or send fewer texts")
    if ticket.error is not None:
      if isinstance(ticket.error, InputError): raise HTTPError(422, str(ticket.error))
      raise HTTPError(500, f"the model failed on this request: {type(ticket.error).__name__}: {ticket.error}")
    return 200, answer(job, ticket.texts, ticket.scores), {}

  def health_route(self, request: Handler) -> tuple[int, dict, dict]:
    b = self.batcher
    if b.state == "ready": return 200, {"status": "ready"}, {}
    if b.state == "failed": return 500, {"status": "failed", "error": f"{type(b.error).__name__}: {b.error}"}, {}
    return 503, {"status": b.state, "warmed": b.warmed, "shapes": len(b.shapes)}, {"Retry-After": "1"}

  def info_route(self, request: Handler) -> tuple[int, dict, dict]:
    return 200, self.info(), {}

  def info(self) -> dict:
    """The model, its backend, how requests are batched, the limits, and what the service has done."""
    model, o, b = self.translator.model, self.options, self.batcher
    return {"model": self.name, "backend": model.where, "parameters": model.num_parameters(),
            "config": model.config.to_dict(), "state": b.state,
            "batching": {"enabled": o.batching, "max_batch": o.max_batch, "batch_wait_ms": o.batch_wait_ms,
                         "row_sizes": list(b.rows), "source_buckets": list(b.buckets), "beam_sizes": list(o.beam_sizes),
                         "shapes": len(b.shapes)},
            "limits": {"max_body": o.max_body, "max_texts": o.max_texts, "max_src_len": o.max_src_len,
                       "max_queue": o.max_queue, "timeout": o.timeout},
            "languages": {"source": o.source, "target": o.target, "codes": list(o.languages)},
            "stats": {**vars(b.stats), "queued": b.queued}}
