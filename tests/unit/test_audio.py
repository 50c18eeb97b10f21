from __future__ import annotations

import numpy as np
import pytest

from duplex.audio import FRAME_BYTES, FRAME_SAMPLES, FrameEncoder, PcmFrame, StreamResampler
from duplex.audio.framer import to_float32, to_int16
from duplex.audio.loudness import active_rms_dbfs, apply_gain, calibrate_gain


def tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(rate * seconds), dtype=np.float32) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_frame_invariant_is_checked_at_creation() -> None:
    assert len(PcmFrame.silence().data) == FRAME_BYTES
    with pytest.raises(ValueError, match="1920 bytes"):
        PcmFrame(b"\x00" * 100)


@pytest.mark.parametrize("rate", [16000, 22050, 24000, 48000])
def test_encoder_yields_exact_frames_and_keeps_duration(rate: int) -> None:
    enc = FrameEncoder(rate)
    audio = tone(rate, 1.013)
    frames: list[PcmFrame] = []
    for piece in np.array_split(audio, 37):  # odd-sized chunks, as adapters deliver
        frames += enc.push(piece)
    frames += enc.end_unit()
    assert all(len(f.data) == FRAME_BYTES for f in frames)
    # Duration is kept to within the one padded frame.
    assert abs(len(frames) * 0.02 - 1.013) <= 0.021


@pytest.mark.parametrize("rate", [16000, 22050, 24000])
def test_chunked_resampling_equals_whole_stream(rate: int) -> None:
    audio = tone(rate, 0.5, freq=1000)
    whole = StreamResampler(rate, 48000)
    expected = np.concatenate([whole.process(audio), whole.flush()])
    chunked = StreamResampler(rate, 48000)
    pieces = [chunked.process(p) for p in np.array_split(audio, 23)]
    got = np.concatenate([*pieces, chunked.flush()])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_no_click_at_chunk_edges() -> None:
    # A continuous sine resampled in chunks has no sample-to-sample jump larger than the sine's.
    rate = 22050
    enc = FrameEncoder(rate)
    audio = tone(rate, 0.4, freq=300)
    frames = []
    for piece in np.array_split(audio, 11):
        frames += enc.push(piece)
    pcm = np.concatenate([f.samples() for f in frames]).astype(np.float64) / 32768
    body = pcm[200:-200]
    max_step = 0.3 * 2 * np.pi * 300 / 48000
    assert np.max(np.abs(np.diff(body))) <= max_step * 1.05


def test_gain_reaches_target_without_clipping() -> None:
    quiet = tone(24000, 1.0, amp=0.02)
    gain = calibrate_gain(quiet, 24000, target_dbfs=-18)
    assert abs(active_rms_dbfs(quiet * gain, 24000) - (-18)) < 0.5
    loud = apply_gain(tone(24000, 0.2, amp=0.9), 3.0)
    assert np.max(np.abs(loud)) < 1.0
    assert np.max(np.abs(to_int16(loud))) < 32767


def test_silence_keeps_unity_gain() -> None:
    assert calibrate_gain(np.zeros(24000, np.float32), 24000) == 1.0


def test_int16_input_is_scaled() -> None:
    x = np.array([16384, -16384], dtype=np.int16)
    np.testing.assert_allclose(to_float32(x), [0.5, -0.5])
    assert FRAME_SAMPLES == 960
