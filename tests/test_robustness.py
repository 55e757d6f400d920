"""Bad input and faults, tried as an adversary would: every public entry point refuses bad input with a tfm error that
names the value and the fix, damaged weight files never load, a write killed midway leaves the previous file, a failing
backend is named, every CLI command fails in one line, and a Translator serialises threads. docs/ROBUSTNESS.md is the map."""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import DEVICE, state_numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tinygrad import Tensor
from tinygrad.device import CompileError

import backends
from tfm.nn.base import unique_state
import tfm
from tfm import cli
from tfm.cli import commands
from tfm.io import stored
from tfm.io import weights
from tfm.io.tokenizer import CharTokenizer

ROOT = Path(__file__).resolve().parents[1]
translator_mod = importlib.import_module("tfm.apps.translator")
select_mod = importlib.import_module("backends.select")
probe_mod = importlib.import_module("backends.probe")


def small_config() -> tfm.TransformerConfig:
  """One layer per stack: every kind of tensor a weight file holds, in a file of about 100 KB."""
  return tfm.TransformerConfig.preset("tiny", n_encoder_layers=1, n_decoder_layers=1)


# --- token ids, through every public entry point ----------------------------------------------------------------

BAD_IDS = [
  ([[1, 2, 64]], "token id 64 out of range for vocab_size=64 (ids must be in [0, 63])"),
  ([[1, -1, 2]], "token id -1 out of range for vocab_size=64"),
  ([[1.0, 2.0]], "must be integer token ids, got dtype float64"),
  (Tensor([[1.0, 2.0]]), "must be integer token ids, got dtype float32"),
  ([[True, False]], "must be integer token ids, got dtype bool"),
  ([["a", "b"]], "must be integer token ids, got dtype <U1"),
  (None, "must be integer token ids, got dtype object"),
  ([[2 ** 70]], "must be integer token ids, got dtype object"),
  ([1, 2, 3], "must have shape (batch, length), got shape (3,); wrap a single sequence as [ids]"),
  (np.ones((1, 2, 2), np.int32), "must have shape (batch, length), got shape (1, 2, 2)"),
  (np.zeros((0, 3), np.int32), "is empty (shape (0, 3))"),
  (np.zeros((2, 0), np.int32), "is empty (shape (2, 0))"),
  (np.ones((1, 65), np.int32), "has length 65, longer than max_len=64; truncate the input"),
  ([[1, 2], [3]], "has rows of different lengths; pad every row to the longest with pad_id=0"),
]
BAD_IDS_IDS = ["too-big", "negative", "float", "float-tensor", "bool", "str", "none", "beyond-int64", "1d", "3d",
               "empty-batch", "empty-rows", "too-long", "ragged"]


@pytest.fixture(scope="module")
def memory(tiny_model):
  src = np.array([[5, 6, 7, 2]], np.int32)
  return tiny_model.encode(src), tiny_model.padding_mask(tiny_model.ids(src))


ENTRY_POINTS = {
  "encode": ("src_ids", lambda m, mem, ids: m.encode(ids)),
  "decode": ("tgt_ids", lambda m, mem, ids: m.decode(ids, *mem)),
  "call-src": ("src_ids", lambda m, mem, ids: m(ids, [[1, 5]])),
  "call-tgt": ("tgt_ids", lambda m, mem, ids: m([[5, 2]], ids)),
  "generate": ("src_ids", lambda m, mem, ids: tfm.generate(m, ids, max_len=4)),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("ids, message", BAD_IDS, ids=BAD_IDS_IDS)
def test_bad_ids_are_refused_by_every_entry_point(tiny_model, memory, entry, ids, message):
  name, call = ENTRY_POINTS[entry]
  with pytest.raises(tfm.InputError) as err: call(tiny_model, memory, ids)
  assert str(err.value).startswith(name) and message in str(err.value)


@pytest.mark.parametrize("memory_of, mask_of, message", [
  (lambda m, mem: mem[0].numpy(), lambda m, mem: mem[1], "memory must be a Tensor (batch=1, source length, d_model=32)"),
  (lambda m, mem: mem[0][:, :, :16], lambda m, mem: mem[1], "got shape (1, 4, 16)"),
  (lambda m, mem: mem[0].expand(2, 4, 32), lambda m, mem: mem[1], "got shape (2, 4, 32)"),
  (lambda m, mem: mem[0], lambda m, mem: mem[1][..., :3], "src_mask must be a Tensor (1, 1, 1, 4)"),
  (lambda m, mem: mem[0], lambda m, mem: mem[1].numpy(), "src_mask must be a Tensor (1, 1, 1, 4) as model.padding_mask"),
], ids=["numpy-memory", "wrong-width", "wrong-batch", "short-mask", "numpy-mask"])
def test_decode_refuses_memory_that_is_not_encodes_output_for_the_batch(tiny_model, memory, memory_of, mask_of, message):
  with pytest.raises(tfm.InputError) as err:
    tiny_model.decode([[1, 5]], memory_of(tiny_model, memory), mask_of(tiny_model, memory))
  assert message in str(err.value)


# --- Translator: bad texts ----------------------------------------------------------------------------------------

CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ012345678"  # 61 + 3 specials: the tiny model's 64 ids


@pytest.fixture(scope="module")
def translator(tiny_model) -> tfm.Translator:
  return tfm.Translator(tiny_model, CharTokenizer(CHARS))


@pytest.mark.parametrize("texts, message", [
  ("abc", r"translate takes a list of texts; wrap a single text as \[text\]"),
  (None, "translate takes a list of texts, got NoneType"),
  ([5], "text 0 is int, not str"),
  (["ab", b"ab"], r"text 1 is bytes, not str; give texts as str \(bytes: .decode\('utf-8'\)\)"),
  (["ab", None], "text 1 is NoneType, not str"),
  (["ab!"], "text 0 \\('ab!'\\) has character '!', which is not in the vocabulary; known characters: 'abc"),
  (["a" * 64], "text 0 is 65 tokens long, more than the model's max_len=64; split it into shorter texts"),
], ids=["bare-str", "none", "int", "bytes", "none-item", "unknown-char", "too-long"])
def test_translator_refuses_bad_texts(translator, texts, message):
  with pytest.raises(tfm.InputError, match=message): translator.translate(texts)


def test_translator_takes_an_empty_batch_and_an_empty_text(translator, tiny_model):
  assert translator.translate([]) == [] and translator.translate([], return_scores=True) == ([], [])
  eos_only = tfm.generate(tiny_model, [[tiny_model.config.eos_id]], max_len=6)  # "" encodes to eos alone
  assert translator.translate([""], max_len=6) == translator.tokenizer.decode(eos_only.tolist())


# --- concurrency: a Translator serialises its callers ------------------------------------------------------------

BATCHES = [["abc", "ba"], ["jihg", "a"], ["cab", "dddd"], ["e", "fgh"]]


def test_threads_translating_at_once_get_what_serial_calls_get(translator):
  serial = [translator.translate(texts, max_len=6) for texts in BATCHES]
  with ThreadPoolExecutor(len(BATCHES)) as pool:
    threaded = list(pool.map(lambda texts: translator.translate(texts, max_len=6), BATCHES * 2))
  assert threaded == serial * 2


def test_translate_calls_from_several_threads_run_one_at_a_time(tiny_model, monkeypatch):
  # inside every decode, another thread cannot take the module's lock, which every Translator's translate takes first:
  # so no two decodes overlap, whichever Translator each thread uses
  free_inside = []
  real = translator_mod.generate

  def watched(*args, **kwargs):
    other = threading.Thread(target=lambda: free_inside.append(translator_mod.LOCK.acquire(blocking=False)))
    other.start(); other.join()
    return real(*args, **kwargs)
  monkeypatch.setattr(translator_mod, "generate", watched)
  two = [tfm.Translator(tiny_model, CharTokenizer(CHARS)) for _ in range(2)]  # the lock is shared by all of them
  threads = [threading.Thread(target=two[i % 2].translate, args=(["abc"],), kwargs=dict(max_len=6)) for i in range(4)]
  for t in threads: t.start()
  for t in threads: t.join()
  assert free_inside == [False] * 4


# --- weight files -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> tuple[str, bytes, dict[str, np.ndarray]]:
  """A saved 1+1-layer model: (path, its bytes, its arrays by name)."""
  path = str(tmp_path_factory.mktemp("robust") / "small.safetensors")
  Tensor.manual_seed(1)
  tfm.save(tfm.Transformer(small_config(), device=DEVICE), path)
  return path, Path(path).read_bytes(), weights.read(path).arrays


def header_of(data: bytes) -> tuple[dict, bytes]:
  n = struct.unpack("<Q", data[:8])[0]
  return json.loads(data[8:8 + n]), data[8 + n:]


def with_header(header: dict | str, body: bytes) -> bytes:
  raw = (header if isinstance(header, str) else json.dumps(header)).encode()
  raw += b" " * (-len(raw) % 8)
  return struct.pack("<Q", len(raw)) + raw + body


def edit_entry(data: bytes, name: str, **fields) -> bytes:
  header, body = header_of(data)
  header[name].update(fields)
  return with_header(header, body)


def duplicate_entry(data: bytes) -> bytes:
  header, body = header_of(data)
  name = next(k for k in header if k != "__metadata__")
  text = json.dumps(header)
  return with_header("{" + json.dumps(name) + ": " + json.dumps(header[name]) + ", " + text[1:], body)


TENSOR = "encoder.layers.0.ffn.fc1.weight"  # (64, 32) float32


@pytest.mark.parametrize("damage, message", [
  (lambda d: d[:8] + b"[" + d[9:], "not a readable safetensors tfm weight file"),
  (lambda d: struct.pack("<Q", len(d)) + d[8:], r"not a readable safetensors .*invalid header length"),
  (lambda d: edit_entry(d, TENSOR, dtype="F16"), "invalid shape, data type, or offset"),
  (lambda d: edit_entry(d, TENSOR, shape=[64, 33]), "invalid shape, data type, or offset"),
  (lambda d: edit_entry(d, TENSOR, dtype="F64", shape=[32, 32]), "tensor encoder.layers.0.ffn.fc1.weight has dtype F64"),
  (duplicate_entry, "the header lists .* more than once; the file is damaged"),
  (lambda d: d[:-5] + bytes(b ^ 0x40 for b in d[-5:]), r"do not match the checksum \(tfm.sha256\)"),
  (lambda d: d.replace(b'\\"d_model\\": 32', b'\\"d_model\\": 64'), r"do not match the checksum \(tfm.sha256\)"),
], ids=["header-not-json", "header-longer-than-file", "dtype-vs-bytes", "shape-vs-bytes", "float64", "duplicate-key",
        "flipped-data", "edited-config"])
def test_damaged_header_or_data_is_a_weights_error(small_file, tmp_path, damage, message):
  path, data, _ = small_file
  damaged = damage(data)
  assert damaged != data
  (tmp_path / "bad.safetensors").write_bytes(damaged)
  with pytest.raises(tfm.WeightsError, match=message): tfm.load(tmp_path / "bad.safetensors", device=DEVICE)


def test_infinite_weight_is_refused(small_file, tmp_path):
  from safetensors.numpy import save_file
  _, data, arrays = small_file
  bad = dict(arrays, **{TENSOR: arrays[TENSOR].copy()})
  bad[TENSOR][3, 4] = -np.inf
  meta = {k: v for k, v in header_of(data)[0]["__metadata__"].items() if k != stored.CHECKSUM}
  save_file(bad, tmp_path / "inf.safetensors", metadata=meta)  # as another tool would write it: no checksum
  with pytest.raises(tfm.WeightsError, match=f"{TENSOR} has 1 NaN/Inf values"): tfm.load(tmp_path / "inf.safetensors", device=DEVICE)


def test_a_file_that_fails_its_checksum_leaves_the_model_untouched(tiny_model, tmp_path):
  path = tmp_path / "m.safetensors"
  tfm.save(tiny_model, path)
  data = bytearray(path.read_bytes())
  data[-1] ^= 1
  path.write_bytes(bytes(data))
  before = state_numpy(tiny_model)
  with pytest.raises(tfm.WeightsError, match="checksum"): weights.load_into(tiny_model, path)
  after = state_numpy(tiny_model)
  for name in before: np.testing.assert_array_equal(after[name], before[name], err_msg=name)


@contextlib.contextmanager
def without_root():
  """Run the block with this thread's file access checked as an ordinary user's (root reads any file)."""
  if os.geteuid() != 0: yield; return
  libc = ctypes.CDLL(None, use_errno=True)
  libc.setfsuid(65534)  # the thread's file-system uid: leaving 0 also drops CAP_DAC_OVERRIDE, returning to 0 restores it
  try: yield
  finally: libc.setfsuid(0)


def test_an_unreadable_file_is_a_weights_error(small_file):
  folder = tempfile.mkdtemp()
  path = os.path.join(folder, "locked.safetensors")
  try:
    os.chmod(folder, 0o755)
    Path(path).write_bytes(small_file[1])
    os.chmod(path, 0)
    with without_root(), pytest.raises(tfm.WeightsError) as err: weights.read(path)
    assert str(err.value) == f"cannot read tfm weight file {path}: Permission denied; check its permissions"
  finally:
    if os.path.exists(path): os.unlink(path)
    os.rmdir(folder)


# the property: a file damaged at random either loads exactly as it was saved or raises WeightsError, nothing else

def mutations(size: int, header_end: int):
  flip = st.tuples(st.just("flip"), st.one_of(st.integers(0, header_end - 1), st.integers(0, size - 1)), st.integers(1, 255))
  truncate = st.tuples(st.just("truncate"), st.integers(0, size - 1), st.just(0))
  edit = st.tuples(st.just("edit"), st.integers(0, 10 ** 6), st.integers(0, 5))
  return st.one_of(flip, truncate, edit)


def mutate(data: bytes, kind: str, at: int, how: int) -> bytes:
  if kind == "flip": return data[:at] + bytes([data[at] ^ how]) + data[at + 1:]
  if kind == "truncate": return data[:at]
  header, body = header_of(data)
  names = sorted(k for k in header if k != "__metadata__")
  name = names[at % len(names)]
  entry = header[name]
  if how == 0: entry["dtype"] = ["F16", "BF16", "F64", "I32", "U8", "F32"][at % 6]
  elif how == 1: entry["shape"] = [max(0, d + (at % 3) - 1) for d in entry["shape"]]
  elif how == 2: entry["data_offsets"] = [o + (at % 9) - 4 for o in entry["data_offsets"]]
  elif how == 3: header.pop(name)
  elif how == 4: header[name + ".x"] = header.pop(name)
  else:
    key = sorted(header["__metadata__"])[at % len(header["__metadata__"])]
    header["__metadata__"][key] = header["__metadata__"][key][:-1]
  return with_header(header, body)


@pytest.fixture(scope="module")
def mutation_dir(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp("mutated")


def test_randomly_damaged_files_load_exactly_or_raise_weights_error(small_file, mutation_dir):
  path, data, arrays = small_file
  header_end = 8 + struct.unpack("<Q", data[:8])[0]
  target = mutation_dir / "m.safetensors"
  outcomes = {"loaded": 0, "refused": 0}

  @settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
  @given(mutations(len(data), header_end))
  def check(mutation):
    damaged = mutate(data, *mutation)
    target.write_bytes(damaged)
    try:
      model = tfm.load(target, device=DEVICE)
    except tfm.WeightsError:
      outcomes["refused"] += 1
      return
    outcomes["loaded"] += 1
    loaded = {name: t.numpy() for name, t in unique_state(model).items()}
    assert loaded.keys() == arrays.keys()
    for name in arrays: np.testing.assert_array_equal(loaded[name], arrays[name], err_msg=name)
  check()
  assert outcomes["refused"] > 0  # the mutations do damage files: most examples must be refused


# --- writes killed midway ----------------------------------------------------------------------------------------

SLOW_WRITE = textwrap.dedent("""
  import os, sys, time
  from tfm.io import stored
  real = stored.serialize_file
  def slow(specs, filename, metadata=None):
    # the real bytes, rewritten slowly in chunks: the kill lands while the temp file is half written
    real(specs, filename, metadata=metadata)
    data = open(filename, "rb").read()
    with open(filename, "wb") as f:
      f.write(data[:len(data) // 2]); f.flush()
      print("WRITING", filename, len(data), flush=True)
      time.sleep(120)
      f.write(data[len(data) // 2:])
  stored.serialize_file = slow
""")


def kill_during_write(script: str) -> tuple[str, int]:
  """Run script in a subprocess, SIGKILL it once it reports a half-written temp file: (temp path, full size)."""
  proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITE + textwrap.dedent(script)], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    line = ""
    while not line.startswith("WRITING"):
      line = proc.stdout.readline()
      if not line: raise AssertionError(f"the writer ended before writing: {proc.stderr.read()[-2000:]}")
    _, tmp, size = line.split()
    assert os.path.exists(tmp) and 0 < os.path.getsize(tmp) < int(size)  # the kill lands mid-write
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  return tmp, int(size)


def test_a_save_killed_midway_leaves_the_previous_file(small_file, tmp_path):
  _, data, arrays = small_file
  path = tmp_path / "model.safetensors"
  path.write_bytes(data)
  tmp, _ = kill_during_write(f"""
    import tfm
    config = tfm.TransformerConfig.preset("tiny", n_encoder_layers=1, n_decoder_layers=1)
    tfm.save(tfm.Transformer(config, device="CPU"), {str(path)!r})
  """)
  assert os.path.dirname(tmp) == str(tmp_path)  # the temp file sits beside the target, and only it was cut short
  assert path.read_bytes() == data
  loaded = {name: t.numpy() for name, t in unique_state(tfm.load(path, device=DEVICE)).items()}
  for name in arrays: np.testing.assert_array_equal(loaded[name], arrays[name], err_msg=name)


def test_a_checkpoint_killed_midway_leaves_the_previous_one(tmp_path):
  from tfm.training.trainer import Trainer
  out = tmp_path / "run"
  tmp, _ = kill_during_write(f"""
    from tfm.io import stored
    from tfm.training.trainer import Trainer, TrainOptions
    trainer = Trainer("copy", "tiny", TrainOptions(eval_size=1), device="CPU", out={str(out)!r})
    stored.serialize_file = real                             # the first checkpoint is written in full
    trainer.save_checkpoint()
    stored.serialize_file = slow
    trainer.step = 1
    trainer.save_checkpoint()
  """)
  assert Path(tmp).parent.parent == out and Path(tmp).parent.name.startswith(".tmp-")
  first = Trainer.latest_checkpoint(str(out))
  assert first == str(out / "step-00000000")
  resumed = Trainer.resume(str(out), device=DEVICE)
  assert resumed.step == 0
  saved = weights.read(out / "step-00000000" / "model.safetensors").arrays
  np.testing.assert_array_equal(resumed.model.src_embed.weight.numpy(), saved["src_embed.weight"])


# --- backends -----------------------------------------------------------------------------------------------------

def test_a_backend_that_fails_to_compile_is_named(tiny_model, monkeypatch):
  def fail(self, *args, **kwargs): raise CompileError("clang: error: unable to execute command: Killed")
  monkeypatch.setattr(Tensor, "realize", fail)
  with pytest.raises(tfm.BackendError, match=r"backend CPU failed to run the model \(CompileError: clang: error: unable "
                                             r"to execute command: Killed\); `tfm backends` lists"):
    tiny_model.encode([[5, 6, 2]])
  assert issubclass(tfm.BackendError, RuntimeError)


def test_a_compiler_that_fails_in_the_probe_makes_the_backend_unavailable(monkeypatch):
  def fail(b): raise CompileError("clBuildProgram failed")
  monkeypatch.setattr(probe_mod, "_run", fail)
  result = probe_mod._worker("CL")
  assert result["status"] == backends.UNAVAILABLE and result["reason"].startswith("CompileError: clBuildProgram failed")


def test_auto_falls_back_past_a_failing_backend_and_the_model_says_so(monkeypatch):
  if not backends.probe("CL").runs: pytest.skip("needs CL (an OpenCL ICD) for the model auto falls back to")
  failing = backends.BackendInfo("CPU", "CPU", backends.UNAVAILABLE, reason="CompileError: clang failed")
  table = {n: backends.BackendInfo(n, backends.lookup(n).target, backends.UNAVAILABLE, reason="not here") for n in backends.NAMES}
  table.update(CPU=failing, CL=backends.BackendInfo("CL", "CL", backends.RUNS))
  monkeypatch.delenv("TFM_DEVICE", raising=False)
  monkeypatch.setattr(select_mod, "available", lambda timeout=None: [table[n] for n in backends.NAMES])
  with pytest.warns(UserWarning, match=r"auto: CPU is unavailable here \(CompileError: clang failed\); falling back to CL"):
    model = tfm.Transformer(small_config(), device="auto")
  assert model.device == "CL"


# --- the command line ---------------------------------------------------------------------------------------------

CLI_CASES = {
  "backends": (["backends", "--timeout", "0"], "--timeout must be a positive number of seconds, got 0"),
  "compare": (["compare", "--model", "{empty}"], "is not a readable safetensors tfm weight file"),
  "kernels": (["kernels", "--target", "cuda", "--out", "{tmp}/k", "--config", "huge"], "unknown preset 'huge'"),
  "convert": (["convert", "{tmp}/none.pt", "--nhead", "4", "--out", "{tmp}/o.safetensors"], "none.pt does not exist"),
  "tune": (["tune", "--config", "{empty}", "--backend", "CPU"], "is not a readable safetensors tfm weight file"),
  "train": (["train", "--evaluate", "{empty}", "--task", "copy"], "is not a readable safetensors tfm weight file"),
  "attention": (["attention", "hello", "--out", "{tmp}/a.png", "--model", "{tmp}/none.safetensors"],
                "none.safetensors does not exist"),
  "translate": (["translate", "--model", "{tmp}/none.safetensors", "hello"], "none.safetensors does not exist"),
  "compile": (["compile", "{empty}", "--device", "CPU"], "is not a readable safetensors tfm weight file"),
  "cache": (["cache", "info", "--dir", "{empty}"], "is a file, not a cache folder"),
  "serve": (["serve", "--max-batch", "0"], "--max-batch must be an integer >= 1, got 0"),
  "classify": (["classify", "{tmp}/none.png", "--device", "CPU"], "none.png does not exist; check the path"),
  "transcribe": (["transcribe", "{empty}", "--model", "{tmp}"], "empty.safetensors is empty (0 bytes); give a WAV file"),
}


def test_every_command_has_a_bad_input_case():
  commands = set(next(a for a in cli.build_parser()._actions if a.dest == "command").choices)
  assert commands <= CLI_CASES.keys(), f"add a bad-input case for {sorted(commands - CLI_CASES.keys())}"


@pytest.mark.parametrize("command", CLI_CASES)
def test_a_bad_file_or_argument_is_one_line_on_stderr(command, tmp_path, capsys):
  commands = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
  if command not in commands: pytest.skip(f"this tfm has no `{command}` command")
  empty = tmp_path / "empty.safetensors"
  empty.write_bytes(b"")
  argv, message = CLI_CASES[command]
  def fill(s: str) -> str: return s.format(empty=empty, tmp=tmp_path)
  code = cli.main([fill(a) for a in argv])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith(f"tfm {command}: error: ") and fill(message) in err
  assert err.count("\n") == 1 and "Traceback" not in err


def test_argparse_errors_exit_2_without_a_traceback(capsys):
  with pytest.raises(SystemExit) as exit_: cli.main(["convert", "x.pt"])
  err = capsys.readouterr().err
  assert exit_.value.code == 2 and err.strip().endswith("error: the following arguments are required: --out")
  assert "Traceback" not in err


def test_an_unexpected_failure_is_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(commands, "cmd_tune", lambda args: {}["no such key"])  # a bug: main builds its parser with this
  assert cli.main(["tune"]) == 70
  err = capsys.readouterr().err
  assert err == "tfm tune: internal error: KeyError: 'no such key' (run `tfm --debug tune ...` for the traceback)\n"
  assert cli.main(["--debug", "tune"]) == 70
  assert "Traceback (most recent call last)" in capsys.readouterr().err


@pytest.mark.parametrize("fault", [ValueError("math domain error"), OSError(5, "Input/output error")])
def test_a_value_or_os_error_inside_tfm_is_internal_not_bad_input(fault, monkeypatch, capsys):
  def broken(args): raise fault   # not a TfmError, not a missing file: tfm's own fault, whatever its type
  monkeypatch.setattr(commands, "cmd_tune", broken)
  assert cli.main(["tune"]) == 70
  assert capsys.readouterr().err.startswith(f"tfm tune: internal error: {type(fault).__name__}")


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
  """`tfm ... | head`: the reader goes away before the output is written; no BrokenPipeError traceback."""
  proc = subprocess.Popen([sys.executable, "-m", "tfm.cli", "kernels", "--target", "metal", "--out", str(tmp_path)],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  proc.stdout.close()
  err = proc.stderr.read().decode()
  assert proc.wait(timeout=300) == 141, err
  assert err == "" and len(list(tmp_path.glob("*.metal"))) > 0
