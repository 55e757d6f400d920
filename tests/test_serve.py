"""tfm serve: the bundled model behind HTTP on loopback. Answers are what Translator.translate gives for the same text
alone, under load too; requests arriving together are decoded together; every bad request gets its status and a JSON
error and the server goes on; a full queue is 503, a late answer 504; stop answers what it accepted.

One server (port 0, CPU, batches of up to 4 rows, sources up to 32 tokens: 6 shapes to compile) serves most tests;
the others run small servers on the same model, whose shapes are compiled by then. Tests that need the model thread
busy hold tfm.apps.translator.LOCK, which every model call takes: what is accepted meanwhile stays queued."""
from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest

import tfm
from tfm import cli
from tfm.errors import InputError, WeightsError
from tfm.apps.serve import Server, batcher
from tfm.training.tasks import get_task
from tfm.apps.translator import LOCK

ROOT = Path(__file__).resolve().parent.parent
MAX_SRC_LEN = 32   # the dates task's sources are at most 29 tokens
PAIRS = get_task("dates").examples(200, "test", seed=0)
TEXTS = [source for source, _ in PAIRS]
TIMEOUT = 120      # seconds any one call may take: generous, the machine may be shared


@pytest.fixture(scope="module")
def translator():
  try: return tfm.Translator.bundled(device="CPU")
  except WeightsError as e: pytest.skip(str(e))


@pytest.fixture(scope="module")
def server(translator):
  with Server(translator, port=0, max_batch=4, max_src_len=MAX_SRC_LEN).start() as s: yield s


@pytest.fixture(scope="module")
def alone(translator) -> dict[str, str]:
  """Each text's translation by Translator.translate, one text per call."""
  return {t: translator.translate([t])[0] for t in dict.fromkeys(TEXTS)}


def request(server: Server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
  """(status, JSON body, headers) of one request on a fresh connection."""
  conn = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT)
  try:
    conn.request(method, path, body, headers or {})
    response = conn.getresponse()
    return response.status, json.loads(response.read()), dict(response.headers)
  finally: conn.close()


def post(server: Server, fields) -> tuple[int, dict, dict]:
  return request(server, "POST", "/translate", json.dumps(fields).encode(), {"Content-Type": "application/json"})


def wait_until(condition, timeout: float = TIMEOUT) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, "the condition did not come about in time"
    time.sleep(0.01)


# --- answers ----------------------------------------------------------------------------------------------------

def test_a_text_gets_what_translate_gives_it(server, alone):
  status, body, headers = post(server, {"q": TEXTS[0], "source": "auto", "target": "en"})
  assert status == 200 and headers["Content-Type"].startswith("application/json")
  assert body == {"translatedText": alone[TEXTS[0]]}


def test_a_list_of_texts_gets_a_list_and_scores_on_request(server, translator):
  texts, scores = zip(*[(t[0], s[0]) for t, s in (translator.translate([text], return_scores=True) for text in TEXTS[:3])])
  status, body, _ = post(server, {"q": TEXTS[:3], "source": "en", "target": "de", "scores": True})
  assert status == 200 and body["translatedText"] == list(texts)
  np.testing.assert_allclose(body["score"], scores, atol=1e-5)
  assert post(server, {"q": []})[:2] == (200, {"translatedText": []})


def test_a_form_as_libretranslates_own_client_sends_it(server, alone):
  form = urlencode({"q": TEXTS[1], "source": "en", "target": "de", "api_key": ""}).encode()
  status, body, _ = request(server, "POST", "/translate", form, {"Content-Type": "application/x-www-form-urlencoded"})
  assert status == 200 and body == {"translatedText": alone[TEXTS[1]]}


def test_200_requests_from_16_clients_each_get_their_own_answer_in_fewer_batches(server, alone):
  before = server.batcher.stats.batches
  start = time.perf_counter()
  with ThreadPoolExecutor(16) as pool: answers = list(pool.map(lambda t: post(server, {"q": t})[:2], TEXTS))
  elapsed = time.perf_counter() - start
  assert answers == [(200, {"translatedText": alone[t]}) for t in TEXTS]   # none lost, none mixed up
  assert sum(alone[s] == t for s, t in PAIRS) >= 0.98 * len(PAIRS)         # and they are the dates
  batches = server.batcher.stats.batches - before
  assert batches < len(TEXTS), "no two requests were decoded together"
  print(f"\n200 requests, 16 clients: {len(TEXTS) / elapsed:.0f} requests/s, {batches} batches")


def test_requests_arriving_together_are_one_batch(translator):
  with Server(translator, port=0, max_batch=2, batch_wait_ms=60_000, max_src_len=MAX_SRC_LEN).start() as s:
    with ThreadPoolExecutor(2) as pool: answers = list(pool.map(lambda t: post(s, {"q": t})[0], TEXTS[:2]))
    assert answers == [200, 200] and (s.batcher.stats.batches, s.batcher.stats.rows) == (1, 2)


def test_alternatives_are_the_beam_searchs_n_best(translator):
  text = "3.3.2021"   # 9 tokens: one source bucket (16), one shape to compile for beam 3
  with Server(translator, port=0, max_batch=1, max_src_len=16, beam_sizes=(1, 3)).start() as s:
    status, body, _ = post(s, {"q": text, "alternatives": 2, "beam_size": 3, "scores": True})
  src = np.array(translator.tokenizer.encode([text]), np.int32)
  ids, scores = tfm.generate(translator.model, src, beam_size=3, num_return=3, return_scores=True)
  best, *rest = translator.tokenizer.decode(ids.tolist())
  assert status == 200 and (body["translatedText"], body["alternatives"]) == (best, rest)
  np.testing.assert_allclose([body["score"], *body["alternativeScores"]], scores, atol=1e-5)


# --- health, info, the command line --------------------------------------------------------------------------------

def test_health_is_ready_only_after_warm_up(translator):
  s = Server(translator, port=0, max_batch=1, max_src_len=MAX_SRC_LEN)
  try:
    with LOCK:   # warm-up waits for the lock
      s.start(wait=False)
      status, body, headers = request(s, "GET", "/health")
      assert status == 503 and body["status"] in ("starting", "warming up") and headers["Retry-After"] == "1"
      assert post(s, {"q": TEXTS[0]})[0] == 503
    assert s.batcher.wait_ready(TIMEOUT)
    assert request(s, "GET", "/health")[:2] == (200, {"status": "ready"})
  finally: s.stop()


def test_info_names_the_model_backend_shapes_and_counts(server):
  status, info, _ = request(server, "GET", "/info")
  assert status == 200 and info["backend"] == "CPU" and info["config"]["max_len"] == 48
  assert info["batching"]["row_sizes"] == [1, 2, 4] and info["batching"]["source_buckets"] == [16, 32]
  assert info["limits"]["max_src_len"] == MAX_SRC_LEN and info["stats"]["requests"] >= 1


def test_serve_help_explains_by_example(capsys):
  with pytest.raises(SystemExit) as exit_: cli.main(["serve", "--help"])
  out = capsys.readouterr().out
  assert exit_.value.code == 0 and "POST /translate" in out and "tfm serve --model opus-mt-en-de/" in out


def test_the_client_example_translates_against_a_live_server(server, alone):
  result = subprocess.run([sys.executable, str(ROOT / "examples" / "serve_client.py"), "--url", server.url, *TEXTS[:2]],
                          capture_output=True, text=True, timeout=TIMEOUT)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [f"{t}\t{alone[t]}" for t in TEXTS[:2]]


def test_tfm_serve_answers_then_stops_on_sigterm(server, tmp_path):
  # one batch shape (1 row, 16 tokens) to warm up
  err = open(tmp_path / "stderr", "w+")
  proc = subprocess.Popen([sys.executable, "-m", "tfm.cli", "serve", "--device", "CPU", "--port", "0", "--max-batch", "1",
                           "--max-src-len", "16", "--quiet"], stdout=subprocess.PIPE, stderr=err,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
  lines: queue.Queue = queue.Queue()
  threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
  try:
    ready = lines.get(timeout=TIMEOUT)
    assert " ready in " in ready, ready
    port = int(ready.split("http://127.0.0.1:")[1].split()[0])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    conn.request("POST", "/translate", json.dumps({"q": "July 4, 1976"}), {"Content-Type": "application/json"})
    assert json.loads(conn.getresponse().read()) == {"translatedText": "1976-07-04"}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT) == 0
    assert "stopped after 1 requests" in (tmp_path / "stderr").read_text()
  finally:
    proc.kill()
    err.close()


# --- bad requests -----------------------------------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}
BAD = {
  "not-json": ("POST", "/translate", b'{"q": "3rd', JSON, 400, "the body is not valid JSON"),
  "not-an-object": ("POST", "/translate", b'["3rd of March, 2021"]', JSON, 400, "must be a JSON object"),
  "no-q": ("POST", "/translate", b'{"source": "en"}', JSON, 400, "missing field q"),
  "q-a-number": ("POST", "/translate", b'{"q": 3}', JSON, 400, "field q must be a string or a list of strings, got int"),
  "q-item-a-number": ("POST", "/translate", b'{"q": ["x", 3]}', JSON, 400, "q[1] is int, not a string"),
  "unknown-field": ("POST", "/translate", b'{"q": "x", "beam": 4}', JSON, 400, "unknown field 'beam'"),
  "bad-beam-size": ("POST", "/translate", b'{"q": "x", "beam_size": 0}', JSON, 400, "field beam_size must be an integer >= 1"),
  "unserved-beam-size": ("POST", "/translate", b'{"q": "x", "beam_size": 4}', JSON, 422, "beam_size 4 is not served here"),
  "alternatives-without-beams": ("POST", "/translate", b'{"q": "x", "alternatives": 1}', JSON, 422, "needs a beam size >= 2"),
  "html": ("POST", "/translate", b'{"q": "x", "format": "html"}', JSON, 400, "format 'html' is not served"),
  "scores-not-bool": ("POST", "/translate", b'{"q": "x", "scores": "yes"}', JSON, 400, "field scores must be true or false"),
  "too-many-texts": ("POST", "/translate", json.dumps({"q": ["1.1.2000"] * 65}).encode(), JSON, 413, "(--max-texts 64)"),
  "too-many-tokens": ("POST", "/translate", json.dumps({"q": ["1.1.2000", "1" * 40]}).encode(), JSON, 422,
                      "text 1 is 41 tokens long, more than this server takes (--max-src-len 32"),
  "unknown-character": ("POST", "/translate", b'{"q": "3rd of March, 2021!"}', JSON, 422, "character '!', which is not in the vocabulary"),
  "body-too-large": ("POST", "/translate", None, {**JSON, "Content-Length": str(2 << 20)}, 413, "(--max-body 1048576)"),
  "no-length": ("POST", "/translate", None, JSON, 411, "the request has no Content-Length"),
  "form-holding-json": ("POST", "/translate", b'{"q": "x"}', {"Content-Type": "application/x-www-form-urlencoded"}, 400,
                        "looks like JSON but was sent as a form"),
  "other-content-type": ("POST", "/translate", b"q=x", {"Content-Type": "text/plain"}, 415, "Content-Type 'text/plain' is not served"),
  "unknown-route": ("GET", "/translate/v2", None, {}, 404, "no route /translate/v2"),
  "wrong-method": ("GET", "/translate", None, {}, 405, "/translate takes POST, not GET"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_request_gets_its_status_and_a_json_error_and_the_server_goes_on(server, alone, case):
  method, path, body, headers, status, message = BAD[case]
  conn = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT)
  conn.putrequest(method, path)   # by hand: no Content-Length added unless the case gives one
  for name, value in headers.items(): conn.putheader(name, value)
  if body is not None and "Content-Length" not in headers: conn.putheader("Content-Length", str(len(body)))
  conn.endheaders(body)
  response = conn.getresponse()
  error = json.loads(response.read())
  conn.close()
  assert response.status == status and message in error["error"], error
  if status == 405: assert response.headers["Allow"] == "POST"
  assert post(server, {"q": TEXTS[0]})[:2] == (200, {"translatedText": alone[TEXTS[0]]})


def test_a_server_told_its_languages_refuses_others(translator):
  with Server(translator, port=0, max_batch=1, max_src_len=MAX_SRC_LEN, source="en", target="iso").start() as s:
    assert post(s, {"q": TEXTS[0], "source": "auto", "target": "iso"})[0] == 200
    status, body, _ = post(s, {"q": TEXTS[0], "source": "en", "target": "fr"})
    assert status == 400 and body["error"] == "target 'fr' is not served: this server translates en -> iso"


def test_a_malformed_request_line_gets_a_json_400(server):
  with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as conn:
    conn.sendall(b"GET / two-paths HTTP/1.1\r\n\r\n")
    head, _, body = conn.makefile("rb").read().partition(b"\r\n\r\n")
  assert head.startswith(b"HTTP/1.0 400 ") and "Bad request syntax" in json.loads(body)["error"]


def test_a_text_the_model_fails_on_fails_only_its_own_request(translator, monkeypatch):
  poison = translator.tokenizer.encode([TEXTS[1]])[0]
  def generate(model, src, **kw):
    if any(list(row[:len(poison)]) == poison for row in src): raise InputError("this text cannot be decoded")
    return tfm.generate(model, src, **kw)
  monkeypatch.setattr(batcher, "generate", generate)
  # batches of two, formed only once two texts have come: the two requests are decoded together first
  with Server(translator, port=0, max_batch=2, batch_wait_ms=60_000, max_src_len=MAX_SRC_LEN).start() as s:
    with ThreadPoolExecutor(2) as pool: (good, bad) = pool.map(lambda t: post(s, {"q": t})[:2], TEXTS[:2])
    assert good == (200, {"translatedText": translator.translate([TEXTS[0]])[0]})
    assert bad == (422, {"error": "this text cannot be decoded"})
    assert (s.batcher.stats.batches, s.batcher.stats.failures) == (1, 1)   # decoded: the good text alone; failed: the other


def test_a_full_queue_answers_503_with_retry_after(translator, alone):
  with Server(translator, port=0, max_batch=1, max_queue=2, max_texts=2, max_src_len=MAX_SRC_LEN).start() as s:
    with ThreadPoolExecutor(2) as pool:
      with LOCK:   # the model thread cannot decode: the first two texts fill the queue
        held = [pool.submit(post, s, {"q": t}) for t in TEXTS[:2]]
        wait_until(lambda: s.batcher.queued == 2)
        status, body, headers = post(s, {"q": TEXTS[2]})
        assert status == 503 and "the queue is full" in body["error"] and headers["Retry-After"] == "1"
      assert [f.result()[:2] for f in held] == [(200, {"translatedText": alone[t]}) for t in TEXTS[:2]]
    assert post(s, {"q": TEXTS[2]})[:2] == (200, {"translatedText": alone[TEXTS[2]]})


def test_a_request_not_answered_within_the_timeout_gets_504(translator, alone):
  with Server(translator, port=0, max_batch=1, max_src_len=MAX_SRC_LEN, timeout=0.2).start() as s:
    with LOCK: status, body, _ = post(s, {"q": TEXTS[0]})
    assert status == 504 and "did not finish within 0.2 s (--timeout)" in body["error"]
    wait_until(lambda: s.batcher.queued == 0)   # the abandoned text leaves the queue
    assert post(s, {"q": TEXTS[0]})[:2] == (200, {"translatedText": alone[TEXTS[0]]})


def refused(port: int) -> bool:
  try: socket.create_connection(("127.0.0.1", port), timeout=1).close()
  except (ConnectionRefusedError, ConnectionResetError): return True   # reset: closed while the connection was queued
  return False


def test_stop_answers_every_accepted_request_and_accepts_no_more(translator, alone):
  s = Server(translator, port=0, max_batch=1, max_src_len=MAX_SRC_LEN).start()
  with ThreadPoolExecutor(3) as pool:
    with LOCK:
      accepted = [pool.submit(post, s, {"q": t}) for t in TEXTS[:3]]
      wait_until(lambda: s.batcher.queued == 3)
      stopping = threading.Thread(target=s.stop)
      stopping.start()
      wait_until(lambda: refused(s.port))   # the listening socket is closed ...
      assert stopping.is_alive()            # ... while the accepted requests wait for the model
    stopping.join(TIMEOUT)
    assert not stopping.is_alive() and s.batcher.state == "stopped"
    assert [f.result()[:2] for f in accepted] == [(200, {"translatedText": alone[t]}) for t in TEXTS[:3]]


@pytest.mark.parametrize("field, value", [("timeout", float("inf")), ("batch_wait_ms", float("inf")), ("timeout", 1e10)])
def test_waits_too_long_for_threading_are_refused_by_name(field, value):
  from tfm.errors import ConfigError
  from tfm.apps.serve.protocol import Options
  with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')} must be"): Options(**{field: value}).check()


def test_a_multilingual_model_serves_the_languages_each_request_names():
  from pathlib import Path
  folder = Path(__file__).parent / "fixtures" / "m2m100_tiny"
  expected = json.loads((folder.parent / "m2m100_tiny.json").read_text())["translations"]
  multilingual = tfm.Translator.load(folder, device="CPU")
  with Server(multilingual, port=0, max_batch=2, max_src_len=16, target="fr").start() as s:
    # LibreTranslate's codes are mapped to the model's (en -> eng_Latn), and the model's own are taken as they are
    german = {"translatedText": expected["expected"][0]}
    assert post(s, {"q": expected["texts"][0], "source": "en", "target": "deu_Latn"})[:2] == (200, german)
    french = multilingual.translate(expected["texts"][:1], source_lang="eng_Latn", target_lang="fra_Latn")[0]
    assert post(s, {"q": expected["texts"][0], "source": "en"})[:2] == (200, {"translatedText": french})   # the server's --target
    status, body, _ = post(s, {"q": "a", "source": "auto", "target": "de"})
    assert status == 400 and body["error"].startswith("no source language: this model translates between 3 languages and detects none")
    status, body, _ = post(s, {"q": "a", "source": "en", "target": "ja"})
    assert status == 400 and body["error"] == ("target 'ja' is not a language of this model; give one of the model's codes: "
                                               "eng_Latn, fra_Latn, deu_Latn")
    codes = ["eng_Latn", "fra_Latn", "deu_Latn"]
    assert request(s, "GET", "/info")[1]["languages"] == {"source": None, "target": "fra_Latn", "codes": codes}
