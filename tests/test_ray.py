"""tfm on a Ray cluster: a file through a pool of actors gives exactly what one process gives (blank lines, order, bad
lines), also when a worker's process is killed mid-run; the LibreTranslate API on Ray Serve replicas answers every
request right. One local cluster of 2 CPUs, started here, serves every test; where Ray is not installed they are skipped.

The bundled dates model on CPU, each actor with 1 core (and 1 tinygrad thread). Compiling a batch shape takes seconds
and translating these files a fraction of one, so the files are made to need few shapes: dates of at most 16 tokens,
2,048 lines with every 8th blank, so that the batches of 32 (in one process, in blocks of 256) have 32 rows.
The steps the actors compile are kept in the suite's compiled-program cache: later pools, restarted workers and the
Serve replicas (batches of 1 or 2 such dates) load them."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import tfm
from tfm import cli
from tfm.apps import textfiles
from tfm.errors import InputError, TfmError, WeightsError
from tfm.training.tasks import get_task

LINES = 2048        # dates, every 8th line left blank: the 2,000 lines and more
MAX_SRC_LEN = 16    # tokens of a date, eos included: two thirds of the dates task's sources
TIMEOUT = 120       # seconds any one request may take: the machine may be shared
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")   # Ray Serve's own use of pydantic's deprecated Field arguments


def dates(n: int) -> list[str]:
  """n lines: dates of 9 to 16 tokens (one source bucket), every 8th line blank."""
  short = (s for s, _ in get_task("dates").examples(4 * n, "test", seed=11) if 9 <= len(s) + 1 <= MAX_SRC_LEN)
  return ["" if i % 8 == 7 else next(short) for i in range(n)]


@pytest.fixture(scope="module")
def ray():
  ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'tfm[ray]'")
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  yield ray
  ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
  path = tmp_path_factory.mktemp("ray") / "dates.txt"
  path.write_text("".join(line + "\n" for line in dates(LINES)), encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def expected(corpus, tmp_path_factory) -> str:
  """The file's translation by textfiles.translate_lines in this one process, as `tfm translate --input` writes it."""
  try: translator = tfm.Translator.bundled(device="CPU")
  except WeightsError as e: pytest.skip(str(e))
  out = tmp_path_factory.mktemp("ray") / "expected.txt"
  textfiles.write_results(textfiles.translate_lines(translator, textfiles.read_lines(str(corpus)), progress=False), str(out))
  return out.read_text(encoding="utf-8")


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
  from tfm.apps.cluster import need_ray
  monkeypatch.setitem(sys.modules, "ray", None)   # import ray raises ImportError
  with pytest.raises(TfmError, match=r"pip install 'tfm\[ray\]'"): need_ray()


def test_import_tfm_does_not_import_ray():
  import subprocess
  code = "import sys, tfm, tfm.apps.cluster, tfm.cli.parser; print('ray' in sys.modules)"
  assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_file_through_two_actors_is_exactly_the_one_process_output(ray, corpus, expected, tmp_path):
  from tfm.apps.cluster import translate_file_on_ray
  out = tmp_path / "iso.txt"
  results = translate_file_on_ray(str(corpus), str(out), workers=2, device="CPU", batch_size=32)
  assert out.read_text(encoding="utf-8") == expected
  assert len(results) == LINES and results[7].translations == [] and results[0].translations


def test_a_worker_killed_mid_run_is_restarted_and_no_line_is_lost_or_repeated(ray, corpus, expected, tmp_path):
  from tfm.apps.cluster import LinePool
  lines = textfiles.read_lines(str(corpus))
  with LinePool("bundled", workers=2, device="CPU", cpus=1) as pool:
    assert [info["threads"] for info in pool.workers_info] == [1, 1]   # tinygrad on the one core each reserved
    victim = pool.pids()[0]
    def kill() -> None:
      while pool.blocks_done < 1: threading.Event().wait(0.01)
      os.kill(victim, signal.SIGKILL)
    killer = threading.Thread(target=kill)
    killer.start()
    results = pool.translate(lines, block_size=64, max_batch_size=32)
    killer.join()
    assert pool.pids()[0] != victim   # Ray restarted the worker in a new process
  assert pool.blocks_done == -(-LINES // 64)
  textfiles.write_results(results, str(tmp_path / "iso.txt"))
  assert (tmp_path / "iso.txt").read_text(encoding="utf-8") == expected


def test_a_bad_line_is_named_before_anything_is_translated(ray, tmp_path):
  from tfm.apps.cluster import translate_file_on_ray
  source, out = tmp_path / "bad.txt", tmp_path / "out.txt"
  source.write_text("July 4, 1976\n\n3rd of March, 2021 \u2603\n", encoding="utf-8")
  with pytest.raises(InputError, match=r"1 line\(s\) cannot be translated: line 3: .*--skip-bad"):
    translate_file_on_ray(str(source), str(out), workers=1, device="CPU")
  assert not out.exists()


def test_tfm_translate_ray_skips_bad_lines_as_without_ray(ray, tmp_path, capsys):
  source, out = tmp_path / "bad.txt", tmp_path / "out.txt"
  source.write_text("July 4, 1976\n\n3rd of March, 2021 \u2603\n", encoding="utf-8")
  code = cli.main(["translate", "--input", str(source), "--output", str(out), "--ray", "--workers", "1", "--device", "CPU",
                   "--skip-bad", "--no-progress"])
  assert code == 0
  assert out.read_text(encoding="utf-8") == "1976-07-04\n\n\n"
  assert "line 3 skipped" in capsys.readouterr().err


@pytest.fixture(scope="module")
def served(ray, expected):
  """The bundled model on 2 Ray Serve replicas (batches of up to 2, sources up to 16 tokens: 2 shapes each warms up)."""
  from ray import serve

  from tfm.apps.cluster import deployment
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  serve.start(http_options={"host": "127.0.0.1", "port": port})
  serve.run(deployment("bundled", "CPU", replicas=2, max_batch=2, max_src_len=MAX_SRC_LEN), name="tfm", route_prefix="/")
  yield port
  serve.shutdown()


def post(port: int, fields: dict) -> tuple[int, dict]:
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
  try:
    conn.request("POST", "/translate", json.dumps(fields), {"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())
  finally: conn.close()


def test_100_requests_from_8_clients_to_2_serve_replicas_are_all_answered_right(served, corpus, expected):
  texts = [t for t in textfiles.read_lines(str(corpus)) if t][:100]
  want = dict(zip(textfiles.read_lines(str(corpus)), expected.split("\n")))
  with ThreadPoolExecutor(8) as pool: answers = list(pool.map(lambda t: post(served, {"q": t}), texts))
  assert [status for status, _ in answers] == [200] * len(texts)
  assert [body["translatedText"] for _, body in answers] == [want[t] for t in texts]


def test_serve_on_ray_speaks_the_same_protocol(served):
  status, body = post(served, {"q": ["July 4, 1976", "12.10.2030"], "scores": True})
  assert status == 200 and body["translatedText"] == ["1976-07-04", "2030-10-12"] and len(body["score"]) == 2
  assert post(served, {"text": "x"}) == (400, {"error": "unknown field 'text'; the fields are q, source, target, format, "
                                                        "alternatives, api_key, beam_size, scores"})
  status, body = post(served, {"q": "July 4, 1976 \u2603"})
  assert status == 422 and "error" in body
  status, body = post(served, {"q": "3rd of March, 2021"})   # 19 tokens
  assert status == 422 and "--max-src-len 16" in body["error"]
