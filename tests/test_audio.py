"""tfm.io.audio: WAV and .npy files to 16 kHz mono samples, and Whisper's log-mel features as transformers'
WhisperFeatureExtractor computes them (tests/fixtures/whisper_features.npz, written by tests/make_audio_fixtures.py)."""
from __future__ import annotations

import os
import struct
import sys
import wave

import numpy as np
import pytest

from tfm.errors import InputError
from tfm.io.audio import N_FRAMES, log_mel, mel_filters, pad_or_trim, read_audio, resample

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from audio_signals import SIGNALS, signal  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "whisper_features.npz")
# the extractor's own torch (float32) and numpy (float64) paths differ by up to 6e-5 on these signals
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def expected():
  with np.load(FIXTURE) as z: return dict(z)


# ---- log-mel features against WhisperFeatureExtractor


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_are_the_extractors(expected, n_mels):
  assert mel_filters(n_mels).shape == (n_mels, 201)
  np.testing.assert_allclose(mel_filters(n_mels), expected[f"filters_{n_mels}"].T, rtol=0, atol=1e-8)


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("name", list(SIGNALS))
def test_log_mel_matches_whisper_feature_extractor(expected, name, n_mels):
  features = log_mel(signal(name), n_mels=n_mels)
  assert features.shape == (n_mels, N_FRAMES) and features.dtype == np.float32
  frames = expected[f"frames_{name}"].astype(np.int64)
  np.testing.assert_allclose(features[:, frames], expected[f"{name}_{n_mels}"], rtol=0, atol=TOLERANCE)


def test_a_45_second_signal_is_cut_to_its_first_30_seconds():
  x = signal("noise_45s")
  np.testing.assert_array_equal(log_mel(x), log_mel(x[:480000]))
  assert len(pad_or_trim(x)) == 480000 and len(pad_or_trim(x[:16000])) == 480000


def test_log_mel_without_a_window_has_one_frame_per_hop():
  assert log_mel(signal("tone_1s"), n_samples=None).shape == (80, 100)


def test_mel_filters_are_cached_and_read_only():
  assert mel_filters(80) is mel_filters(80)
  with pytest.raises(ValueError): mel_filters(80)[0, 0] = 1.0


@pytest.mark.parametrize("bad", [0, 201, 80.0])
def test_impossible_mel_counts_are_refused(bad):
  with pytest.raises(InputError, match="n_mels"): mel_filters(bad)


# ---- WAV files: written here with the standard library, read back


def tone(rate: int, seconds: float = 1.0, hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
  return amplitude * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)


def pcm_bytes(x: np.ndarray, width: int) -> bytes:
  """Float samples in [-1, 1) -> little-endian PCM of `width` bytes (8-bit unsigned, the others signed)."""
  scale = 2.0 ** (8 * width - 1)
  q = np.clip(np.round(x * scale), -scale, scale - 1).astype(np.int64)
  if width == 1: return (q + 128).astype(np.uint8).tobytes()
  return b"".join(int(v).to_bytes(width, "little", signed=True) for v in q) if width == 3 else q.astype(f"<i{width}").tobytes()


def write_pcm(path, x: np.ndarray, rate: int, width: int) -> np.ndarray:
  """x (frames,) or (frames, channels) as a PCM WAV through `wave`; returns what was stored, as floats."""
  x = x if x.ndim == 2 else x[:, None]
  with wave.open(str(path), "wb") as w:
    w.setnchannels(x.shape[1]); w.setsampwidth(width); w.setframerate(rate)
    w.writeframes(pcm_bytes(x.reshape(-1), width))
  return x


def write_riff(path, x: np.ndarray, rate: int, tag: int = 3, extensible: bool = False, data: bytes | None = None):
  """A float32 WAV (format 3, or WAVE_FORMAT_EXTENSIBLE with the float subformat), which `wave` cannot write."""
  x = (x if x.ndim == 2 else x[:, None]).astype("<f4")
  channels, width = x.shape[1], 4
  fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate, rate * channels * width, channels * width, 32)
  if extensible: fmt += struct.pack("<HHI", 22, 32, 0) + struct.pack("<H", tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
  data = x.tobytes() if data is None else data
  chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", 3) + b"abc\x00" + b"data" + struct.pack("<I", len(data)) + data
  with open(path, "wb") as f: f.write(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_wav_reads_back_its_samples(tmp_path, width):
  x = tone(16000, 0.5)
  write_pcm(tmp_path / "a.wav", x, 16000, width)
  got = read_audio(tmp_path / "a.wav")
  assert got.dtype == np.float32 and got.shape == x.shape
  np.testing.assert_allclose(got, x, rtol=0, atol=2.0 ** (1 - 8 * width) + 1e-7)   # one quantisation step


def test_pcm_extremes_map_to_minus_one_and_one_step_below_one(tmp_path):
  for width in (1, 2, 3, 4):
    write_pcm(tmp_path / "e.wav", np.array([-1.0, 0.0, 1.0]), 16000, width)
    got = read_audio(tmp_path / "e.wav")
    assert got.tolist() == [-1.0, 0.0, np.float32(1.0 - 2.0 ** (1 - 8 * width))]   # 32-bit's top step rounds to 1.0 in float32


@pytest.mark.parametrize("extensible", [False, True])
def test_float32_wav_reads_back_exactly(tmp_path, extensible):
  x = tone(16000, 0.5).astype(np.float32)
  write_riff(tmp_path / "f.wav", x, 16000, extensible=extensible)
  np.testing.assert_array_equal(read_audio(tmp_path / "f.wav"), x)


def test_extensible_24_bit_pcm_reads_back(tmp_path):
  """WAVE_FORMAT_EXTENSIBLE with the PCM subformat, as recorders write 24-bit files (`wave` refuses it before Python 3.12)."""
  x = tone(16000, 0.25)
  data = pcm_bytes(x, 3)
  fmt = struct.pack("<HHIIHH", 0xFFFE, 1, 16000, 16000 * 3, 3, 24) + struct.pack("<HHIH", 22, 24, 4, 1) + bytes(14)
  chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
  (tmp_path / "x.wav").write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
  np.testing.assert_allclose(read_audio(tmp_path / "x.wav"), x, rtol=0, atol=2.0 ** -23 + 1e-7)


def test_stereo_is_averaged_to_mono(tmp_path):
  left, right = tone(16000, 0.5, 440.0, 0.4), tone(16000, 0.5, 1000.0, 0.2)
  write_pcm(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, 2)
  np.testing.assert_allclose(read_audio(tmp_path / "s.wav"), (left + right) / 2, rtol=0, atol=1e-4)
  write_riff(tmp_path / "s32.wav", np.stack([left, right], axis=1), 16000)
  np.testing.assert_allclose(read_audio(tmp_path / "s32.wav"), (left + right) / 2, rtol=0, atol=1e-7)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_other_rates_are_resampled_to_16k_keeping_the_tone(tmp_path, rate):
  """A 440 Hz tone written at `rate` reads back as the same tone sampled at 16 kHz: away from the ends (where the
  filter sees the silence beyond the file) each sample within 1e-4 of 0.5 sin(2 pi 440 t), so amplitude, frequency and
  phase are kept; 16-bit quantisation alone is 1.5e-5."""
  write_pcm(tmp_path / "r.wav", tone(rate, 1.0), rate, 2)
  got = read_audio(tmp_path / "r.wav")
  assert len(got) == 16000
  middle = slice(400, -400)
  np.testing.assert_allclose(got[middle], tone(16000, 1.0)[middle], rtol=0, atol=1e-4)


def test_resampling_removes_what_16k_cannot_hold():
  """From 44.1 kHz: 6 kHz passes whole; 9 kHz, which 16 kHz sampling would fold onto 7 kHz, is removed."""
  def amplitude(hz):
    y = resample(tone(44100, 1.0, hz, 1.0), 44100)
    return np.sqrt(2 * np.mean(y[400:-400] ** 2))
  assert abs(amplitude(6000.0) - 1.0) < 1e-3 and amplitude(9000.0) < 1e-3


def test_resampling_keeps_the_length_in_seconds():
  assert len(resample(np.zeros(44100 * 3 + 7), 44100)) == -(-(44100 * 3 + 7) * 160 // 441)
  assert len(resample(np.zeros(11), 8000)) == 22


def test_npy_samples_are_taken_as_16k(tmp_path):
  x = signal("chirp_1s")
  np.save(tmp_path / "x.npy", x)
  np.testing.assert_array_equal(read_audio(tmp_path / "x.npy"), x)


# ---- refusals


@pytest.mark.parametrize("name, head, says", [("song.mp3", b"ID3\x04\x00\x00\x00\x00\x00\x00", "MP3"),
                                              ("song.flac", b"fLaC\x00\x00\x00\x22", "FLAC"),
                                              ("song.ogg", b"OggS\x00\x02", "Ogg"),
                                              ("song.m4a", b"\x00\x00\x00\x20ftypM4A ", "M4A")])
def test_compressed_formats_are_refused_with_the_conversion(tmp_path, name, head, says):
  (tmp_path / name).write_bytes(head + bytes(100))
  with pytest.raises(InputError, match=rf"{says}.*ffmpeg -i .*{name} -ar 16000 -ac 1 .*song_16k\.wav"):
    read_audio(tmp_path / name)


def test_a_truncated_wav_is_refused(tmp_path):
  write_pcm(tmp_path / "t.wav", tone(16000), 16000, 2)
  blob = (tmp_path / "t.wav").read_bytes()
  (tmp_path / "t.wav").write_bytes(blob[:len(blob) // 2])
  with pytest.raises(InputError, match="truncated"): read_audio(tmp_path / "t.wav")
  (tmp_path / "t.wav").write_bytes(blob[:30])   # inside the fmt chunk
  with pytest.raises(InputError, match="truncated|damaged"): read_audio(tmp_path / "t.wav")


def test_a_truncated_float_wav_is_refused(tmp_path):
  write_riff(tmp_path / "t.wav", tone(16000), 16000)
  blob = (tmp_path / "t.wav").read_bytes()
  (tmp_path / "t.wav").write_bytes(blob[:len(blob) // 2])
  with pytest.raises(InputError, match="truncated"): read_audio(tmp_path / "t.wav")


def test_an_empty_file_is_refused(tmp_path):
  (tmp_path / "e.wav").write_bytes(b"")
  with pytest.raises(InputError, match="empty"): read_audio(tmp_path / "e.wav")


def test_a_wav_without_samples_is_refused(tmp_path):
  write_pcm(tmp_path / "n.wav", np.zeros(0), 16000, 2)
  with pytest.raises(InputError, match="no samples"): read_audio(tmp_path / "n.wav")


def test_a_text_file_named_wav_is_refused(tmp_path):
  (tmp_path / "x.wav").write_text("hello")
  with pytest.raises(InputError, match="not a WAV file"): read_audio(tmp_path / "x.wav")


def test_a_compressed_wav_format_is_refused(tmp_path):
  write_riff(tmp_path / "adpcm.wav", tone(16000, 0.1), 16000, tag=2)
  with pytest.raises(InputError, match="format 2"): read_audio(tmp_path / "adpcm.wav")


def test_a_2d_npy_is_refused(tmp_path):
  np.save(tmp_path / "stereo.npy", np.zeros((16000, 2), np.float32))
  with pytest.raises(InputError, match=r"shape \(16000, 2\).*mean"): read_audio(tmp_path / "stereo.npy")


def test_integer_npy_is_refused(tmp_path):
  np.save(tmp_path / "pcm.npy", np.zeros(16000, np.int16))
  with pytest.raises(InputError, match="int16.*32768"): read_audio(tmp_path / "pcm.npy")


def test_a_missing_file_is_refused(tmp_path):
  with pytest.raises(InputError, match="does not exist"): read_audio(tmp_path / "nope.wav")


def test_a_bad_sample_rate_is_refused():
  with pytest.raises(InputError, match="sample rates"): resample(np.zeros(10), 0)


def test_non_finite_samples_are_refused():
  with pytest.raises(InputError, match="NaN"): log_mel(np.array([0.0, np.nan], np.float32))
