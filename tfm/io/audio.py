"""Audio as Whisper takes it: read from a WAV file or a .npy array as float32 mono at 16 kHz, then turned into the
log-mel spectrogram of one 30-second window, computed as transformers' WhisperFeatureExtractor computes input_features.

WAV files: PCM 8-bit (unsigned), 16, 24 and 32-bit (signed) through the standard library's `wave`; IEEE float 32 and
64-bit (format 3, and WAVE_FORMAT_EXTENSIBLE, which `wave` refuses) through the small RIFF reader here. PCM samples
are scaled to [-1, 1) (divided by 2^(bits-1)), float ones kept as they are, channels averaged to mono, any other rate resampled to 16 kHz (see
`resample`). A .npy array is taken as 1-D float samples already at 16 kHz. Compressed formats (MP3, FLAC, Ogg, M4A)
are refused with the ffmpeg command that converts them: decoding them would need a codec library tfm does not carry.
"""
from __future__ import annotations

import functools
import math
import os
import struct
import wave

import numpy as np

from tfm.errors import InputError

SAMPLE_RATE = 16000     # Hz, every Whisper checkpoint's
N_FFT = 400             # 25 ms windows
HOP_LENGTH = 160        # 10 ms between frames
CHUNK_LENGTH = 30       # seconds in one window the encoder reads
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE   # 480,000
N_FRAMES = N_SAMPLES // HOP_LENGTH       # 3,000
CONVERT = "ffmpeg -i {path} -ar 16000 -ac 1 {stem}_16k.wav"
# the first bytes of the other audio formats people most often have, so that the error can name the format
MAGIC = ((b"ID3", "MP3"), (b"\xff\xfb", "MP3"), (b"\xff\xf3", "MP3"), (b"\xff\xf2", "MP3"), (b"fLaC", "FLAC"),
         (b"OggS", "Ogg"), (b"\x1aE\xdf\xa3", "WebM/Matroska"), (b"FORM", "AIFF"))
PCM, IEEE_FLOAT, EXTENSIBLE = 1, 3, 0xFFFE
# the resampling filter: a Kaiser-windowed sinc, ZEROS zero crossings each side, cut off at ROLLOFF of the lower Nyquist
ZEROS, ROLLOFF, KAISER_BETA = 32, 0.97, 9.0


def read_audio(path: str | os.PathLike) -> np.ndarray:
  """A WAV file or a .npy array of samples -> float32 mono samples at 16 kHz, shape (n,)."""
  path = os.fspath(path)
  if not os.path.exists(path): raise InputError(f"audio {path} does not exist; check the path")
  if os.path.isdir(path): raise InputError(f"audio {path} is a directory; give a WAV file or a .npy array of 16 kHz samples")
  if os.path.getsize(path) == 0: raise InputError(f"audio {path} is empty (0 bytes); give a WAV file or a .npy array of 16 kHz samples")
  if path.lower().endswith(".npy"): return _read_npy(path)
  with open(path, "rb") as f: head = f.read(12)
  if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
    name = next((fmt for magic, fmt in MAGIC if head.startswith(magic)), None)
    if name is None and head[4:8] == b"ftyp": name = "MP4/M4A"
    if name is None and path.lower().rsplit(".", 1)[-1] in ("mp3", "flac", "ogg", "opus", "m4a", "aac", "webm", "wma", "aiff"):
      name = path.rsplit(".", 1)[-1].upper()
    what = f"{name} audio" if name else "not a WAV file (no RIFF/WAVE header)"
    stem = os.path.splitext(path)[0]
    raise InputError(f"audio {path} is {what}; tfm reads WAV files and .npy arrays only: convert it with "
                     f"`{CONVERT.format(path=path, stem=stem)}`")
  samples, rate = _read_wav(path)
  return resample(samples.mean(axis=1, dtype=np.float64), rate).astype(np.float32)


def _read_npy(path: str) -> np.ndarray:
  try:
    a = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError):
    raise InputError(f"{path} is not a readable .npy array of samples; write one with np.save(path, samples.astype(np.float32))") from None
  if a.size == 0: raise InputError(f"{path} holds an empty array (shape {a.shape}); give 1-D float samples at 16 kHz")
  return as_audio(a, path)


def as_audio(samples, name: str = "audio") -> np.ndarray:
  """An array of 16 kHz samples checked: 1-D, real floats, finite -> float32."""
  a = np.asarray(samples)
  if a.ndim != 1:
    raise InputError(f"{name} has shape {a.shape}; audio is 1-D mono samples at 16 kHz (average the channels first: a.mean(axis=-1))")
  if a.dtype.kind != "f":
    raise InputError(f"{name} has dtype {a.dtype}; give float samples in [-1, 1] (divide int16 PCM by 32768)")
  if not np.isfinite(a).all(): raise InputError(f"{name} has {int((~np.isfinite(a)).sum())} NaN or Inf samples; every sample must be finite")
  return a.astype(np.float32)


def _read_wav(path: str) -> tuple[np.ndarray, int]:
  """(frames, channels) float64 samples and the sample rate: PCM through `wave`, what it refuses through _read_riff."""
  try:
    with wave.open(path, "rb") as w:
      channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
      raw = w.readframes(n)
    tag = PCM
  except wave.Error as e:
    # what `wave` refuses by its format tag ("unknown format: 3") is read here; anything else it refuses is damage
    if "unknown" not in str(e): raise InputError(f"audio {path} is a damaged or truncated WAV file ({e}); export it again") from None
    tag, channels, width, rate, raw, n = _read_riff(path)
  except (EOFError, struct.error):
    raise InputError(f"audio {path} is a truncated WAV file (it ends inside its header); export it again") from None
  if channels < 1 or rate < 1 or width < 1:
    raise InputError(f"audio {path} has a WAV header with {channels} channels, {rate} Hz, {width}-byte samples; the file is damaged")
  if len(raw) < n * channels * width:
    raise InputError(f"audio {path} is truncated: its header promises {n} frames, the file holds {len(raw) // (channels * width)}; "
                     f"export it again")
  if n == 0: raise InputError(f"audio {path} holds no samples (a WAV header with an empty data chunk)")
  return _decode(raw[:n * channels * width], tag, width, path).reshape(n, channels), rate


def _read_riff(path: str) -> tuple[int, int, int, int, bytes, int]:
  """The chunks of a RIFF/WAVE file that `wave` refuses: (format tag, channels, bytes per sample, rate, data, frames).
  Chunks are walked by their sizes (each padded to an even length); `fmt ` must come before `data`."""
  with open(path, "rb") as f: blob = f.read()
  pos, fmt = 12, None
  while pos + 8 <= len(blob):
    cid, size = blob[pos:pos + 4], struct.unpack_from("<I", blob, pos + 4)[0]
    body = blob[pos + 8:pos + 8 + size]
    if cid == b"fmt ":
      if len(body) < 16: break
      tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", body)
      if tag == EXTENSIBLE:
        if len(body) < 40:
          raise InputError(f"audio {path} has a WAVE_FORMAT_EXTENSIBLE header of {len(body)} bytes (40 expected); the file is damaged")
        tag = struct.unpack_from("<H", body, 24)[0]   # the subformat GUID begins with the format tag
      if tag not in (PCM, IEEE_FLOAT):
        raise InputError(f"audio {path} is a WAV file in format {tag} (compressed); tfm reads PCM and float WAV files: "
                         f"convert it with `{CONVERT.format(path=path, stem=os.path.splitext(path)[0])}`")
      if bits % 8 or align != channels * bits // 8:
        raise InputError(f"audio {path} has {bits}-bit samples in {align}-byte frames of {channels} channels; tfm reads whole-byte "
                         f"samples packed without gaps: convert it with ffmpeg")
      fmt = (tag, channels, bits // 8, rate)
    elif cid == b"data":
      if fmt is None: break
      frame = max(fmt[1] * fmt[2], 1)
      return (*fmt, body, size // frame)
    pos += 8 + size + (size & 1)
  raise InputError(f"audio {path} is a damaged or truncated WAV file (no {'data' if fmt else 'fmt '} chunk found); export it again")


def _decode(raw: bytes, tag: int, width: int, path: str) -> np.ndarray:
  """Little-endian sample bytes -> float64: PCM divided by 2^(bits-1) into [-1, 1) (8-bit is unsigned, centred on 128),
  floats as stored."""
  if tag == IEEE_FLOAT:
    if width not in (4, 8): raise InputError(f"audio {path} has {8 * width}-bit float samples; tfm reads 32 and 64-bit float WAV files")
    x = np.frombuffer(raw, "<f4" if width == 4 else "<f8").astype(np.float64)
    if not np.isfinite(x).all(): raise InputError(f"audio {path} has {int((~np.isfinite(x)).sum())} NaN or Inf samples; the file is damaged")
    return x
  if width == 1: return (np.frombuffer(raw, np.uint8).astype(np.float64) - 128.0) / 128.0
  if width == 2: return np.frombuffer(raw, "<i2") / 32768.0
  if width == 3:   # three bytes into the top of an int32, so that the sign comes along
    b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.uint32)
    return ((b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)).view(np.int32) / 2147483648.0
  if width == 4: return np.frombuffer(raw, "<i4") / 2147483648.0
  raise InputError(f"audio {path} has {8 * width}-bit PCM samples; tfm reads 8, 16, 24 and 32-bit PCM")


@functools.lru_cache(maxsize=8)
def _resample_filters(up: int, down: int) -> tuple[np.ndarray, np.ndarray, int]:
  """The polyphase bank for rate * up / down: row p holds the taps of output phase p, the integer input offset where
  they start, and the half-width in input samples."""
  fc = 0.5 * ROLLOFF * min(1.0, up / down)     # cycles per input sample
  half = math.ceil(ZEROS / (2 * fc))           # ZEROS zero crossings of the sinc on each side
  phases = np.arange(up)
  start = (phases * down) // up - half + 1     # the first input sample each phase reads
  t = (phases * down / up)[:, None] - (start[:, None] + np.arange(2 * half))   # output time minus input time
  taps = 2 * fc * np.sinc(2 * fc * t) * np.i0(KAISER_BETA * np.sqrt(np.clip(1 - (t / half) ** 2, 0, 1))) / np.i0(KAISER_BETA)
  return taps, start, half


def resample(samples: np.ndarray, rate: int, to: int = SAMPLE_RATE) -> np.ndarray:
  """1-D samples at `rate` Hz -> the same sound at `to` Hz (float64), ceil(n * to / rate) samples.

  Band-limited polyphase resampling: each output sample is the input convolved with a low-pass sinc, cut off at 0.97
  of the lower rate's Nyquist frequency and shaped by a Kaiser window (beta 9, 32 zero crossings each side), evaluated
  at the output instant; the input is zero beyond its ends. From 44.1 kHz this keeps tones up to 7 kHz to within 1e-4
  of their amplitude and removes those above 8.5 kHz, which would alias into Whisper's 0-8 kHz mel bands (30 s of audio
  takes ~30 ms). The same kind of filter as scipy's resample_poly, in numpy, so that tfm needs no scipy. Not FFT
  resampling: that treats the clip as periodic, so its end leaks into its start, and costs an FFT of the whole file.
  """
  if not all(isinstance(r, int) and r >= 1 for r in (rate, to)):
    raise InputError(f"resampling from {rate!r} Hz to {to!r} Hz; sample rates are positive whole numbers of Hz")
  x = np.asarray(samples, np.float64)
  if rate == to: return x
  g = math.gcd(rate, to)
  up, down = to // g, rate // g
  taps, start, half = _resample_filters(up, down)
  n_out = -(-len(x) * up // down)
  pad = np.pad(x, (half + down, half + down + 2 * half))
  out = np.empty(n_out)
  windows = np.lib.stride_tricks.sliding_window_view(pad, 2 * half)
  for p in range(min(up, n_out)):   # outputs p, p + up, p + 2 up, ... read inputs start[p] + m * down onwards
    m = len(range(p, n_out, up))
    first = start[p] + half + down
    out[p::up] = windows[first:first + m * down:down] @ taps[p]
  return out


def pad_or_trim(audio: np.ndarray, length: int = N_SAMPLES) -> np.ndarray:
  """Audio cut to its first `length` samples or padded with zeros (silence) at the end to `length`."""
  a = np.asarray(audio)
  return a[:length] if len(a) >= length else np.pad(a, (0, length - len(a)))


def hertz_to_mel(f):
  """Slaney's mel scale (librosa's default, not HTK's): linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
  f = np.asarray(f, np.float64)
  return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-300) / 1000.0) * (27.0 / np.log(6.4)), 3.0 * f / 200.0)


def mel_to_hertz(m):
  """The inverse of hertz_to_mel."""
  m = np.asarray(m, np.float64)
  return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), 200.0 * m / 3.0)


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int = 80) -> np.ndarray:
  """(n_mels, N_FFT // 2 + 1) float64 triangles on Slaney's mel scale from 0 to 8 kHz, each scaled by 2 / its width in
  Hz (Slaney's area normalisation), as transformers' mel_filter_bank builds Whisper's. Read-only: it is cached."""
  if not isinstance(n_mels, int) or not 1 <= n_mels <= 200:
    raise InputError(f"n_mels={n_mels!r}; Whisper's checkpoints use 80 (large-v3: 128), and a {N_FFT}-point FFT allows at most 200")
  fft_freqs = np.linspace(0, SAMPLE_RATE // 2, N_FFT // 2 + 1)
  edges = mel_to_hertz(np.linspace(hertz_to_mel(0.0), hertz_to_mel(8000.0), n_mels + 2))
  slopes = edges[None, :] - fft_freqs[:, None]                # (freqs, n_mels + 2)
  down = -slopes[:, :-2] / np.diff(edges)[:-1]
  up = slopes[:, 2:] / np.diff(edges)[1:]
  bank = np.maximum(0.0, np.minimum(down, up)) * (2.0 / (edges[2:] - edges[:-2]))
  if (bank.max(axis=0) == 0).any():
    raise InputError(f"n_mels={n_mels} leaves some mel filters empty with a {N_FFT}-point FFT; use 80 or 128")
  bank = np.ascontiguousarray(bank.T)
  bank.flags.writeable = False
  return bank


def log_mel(audio, n_mels: int = 80, n_samples: int | None = N_SAMPLES) -> np.ndarray:
  """16 kHz samples -> Whisper's input features (n_mels, frames) float32, as WhisperFeatureExtractor computes them.

  The audio is padded with silence or cut to `n_samples` (30 s: 3000 frames; None keeps its length, len // 160 frames),
  reflect-padded by 200 samples at both ends, cut into 400-sample frames every 160 samples, each weighted by a periodic
  Hann window; the power spectrum (|rfft|^2) goes through the mel filters; then log10 of it floored at 1e-10, values
  more than 8 (80 dB) below the loudest raised to that floor, and (x + 4) / 4. Computed in float64 (the extractor's
  numpy path does the same; its torch path in float32 differs by about 1e-5), 3000 frames at a time."""
  x = as_audio(audio)
  if n_samples is not None: x = pad_or_trim(x, n_samples)
  if len(x) < HOP_LENGTH: raise InputError(f"audio has {len(x)} samples; one frame needs {HOP_LENGTH} (or pad it: n_samples={N_SAMPLES})")
  x = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
  frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP_LENGTH][:-1]   # (frames, N_FFT); the last is dropped, as the extractor does
  window = np.hanning(N_FFT + 1)[:-1]   # periodic Hann
  def block(start: int) -> np.ndarray:   # N_FRAMES frames at a time: an hour of audio never holds its whole spectrum
    power = np.abs(np.fft.rfft(frames[start:start + N_FRAMES] * window, axis=1)) ** 2   # (frames, N_FFT // 2 + 1)
    return np.log10(np.maximum(mel_filters(n_mels) @ power.T, 1e-10))                  # (n_mels, frames)
  spec = np.concatenate([block(start) for start in range(0, len(frames), N_FRAMES)], axis=1)
  spec = np.maximum(spec, spec.max() - 8.0)
  return ((spec + 4.0) / 4.0).astype(np.float32)
