"""The audio test signal (audio/testsignal.py): it names its sender, and the name
comes back out of real Opus (48 kHz mono, 24 kbit/s VOIP, 20 ms frames) with
frames lost to concealment, starting anywhere in the signal; nothing else is
ever read as a name."""
from __future__ import annotations

from typing import Collection

import numpy as np
import pytest

from pi2pi.audio import testsignal
from pi2pi.audio.codec import CodecSettings, Decoder, Encoder
from pi2pi.audio.testsignal import TestSignal, decode_repetitions, label_text, read_label

RATE = 48000
FRAME = 960   # 20 ms


def clip(label: str, start_s: float, seconds: float, rate: int = RATE) -> np.ndarray:
    """`seconds` of the signal (whole 20 ms frames) from `start_s` into its repetition, int16 mono."""
    signal = TestSignal(label, rate, 1)
    signal.frame(int(start_s * rate))
    frames = int(seconds * rate) // FRAME
    return np.frombuffer(signal.frame(frames * FRAME), dtype=np.int16)


def through_opus(pcm: np.ndarray, concealed: Collection[int] = (), late: Collection[int] = ()) -> np.ndarray:
    """The call's codec: frames in `concealed` lost (Opus concealment plays instead), frames
    in `late` played after one frame of concealment (jitter.py's underrun, then the late packet)."""
    encoder = Encoder(CodecSettings(rate=RATE, channels=1, bitrate=24000, frame_ms=20))
    decoder = Decoder(RATE, 1)
    out = []
    try:
        for index in range(pcm.size // FRAME):
            packet = encoder.encode(pcm[index * FRAME:(index + 1) * FRAME].tobytes())
            if index in late:
                out.append(decoder.conceal(FRAME))
            out.append(decoder.conceal(FRAME) if index in concealed else decoder.decode(packet))
    finally:
        encoder.close()
        decoder.close()
    return np.frombuffer(b"".join(out), dtype=np.int16)


@pytest.mark.parametrize("name, start, periods", [
    ("natpi", 0.37, 3), ("gwpi", 0.81, 3), ("raspberrypi5", 1.13, 2), ("a-host-name-longer-than-the-cut", 2.02, 2),
])
def test_the_name_comes_back_through_opus_with_concealed_frames(name, start, periods):
    signal = TestSignal(name, RATE, 1)
    # from the middle of a repetition, long enough for `periods - 1` whole ones
    pcm = clip(name, start, periods * signal.period_s + 0.1)
    frames = pcm.size // FRAME
    lost = set(range(7, frames, 50))      # a lost packet every second: concealment instead
    late = set(range(32, frames, 50))     # and a late one every second: concealment, then the packet
    heard = through_opus(pcm, concealed=lost, late=late)
    expected = name[:16].upper()
    assert label_text(name) == expected
    assert read_label(heard, RATE) == expected
    assert decode_repetitions(heard, RATE).count(expected) >= periods - 1


def test_format_as_documented():
    signal = TestSignal("gwpi", RATE, 1)
    assert signal.text == "GWPI"
    assert signal.period_s == pytest.approx(1.37) and signal.period_samples == round(1.37 * RATE)
    assert TestSignal("natpi", RATE, 1).period_s == pytest.approx(1.50)
    assert TestSignal("raspberrypi5", RATE, 1).period_s == pytest.approx(2.41)
    assert TestSignal("x" * 40, RATE, 1).period_s == pytest.approx(2.93)
    pcm = np.frombuffer(signal.frame(signal.period_samples), dtype=np.int16).astype(np.float64)
    assert np.abs(pcm).max() <= testsignal.AMPLITUDE
    assert 20 * np.log10(np.abs(pcm).max() / 32768) == pytest.approx(-12, abs=0.1)
    # the repetition opens with the sync tone and ends in silence; ramps, so no clicks
    sync = pcm[:int(testsignal.SYNC_S * RATE)]
    peak = np.argmax(np.abs(np.fft.rfft(sync)))
    assert peak * RATE / sync.size == pytest.approx(testsignal.frequency(testsignal.SYNC), abs=7)
    assert np.all(pcm[-int(testsignal.PAUSE_S * RATE):] == 0)
    assert abs(pcm[0]) < 50 and np.abs(np.diff(pcm)).max() < 2 * np.pi * 3200 / RATE * testsignal.AMPLITUDE
    # every tone is inside the voice band
    assert 300 <= testsignal.frequency(0) and testsignal.frequency(testsignal.SYMBOLS - 1) <= 3400
    # repeated characters never give two equal tones in a row
    symbols = testsignal.symbols_for(label_text("aaa-bbb"))
    assert all(a != b for a, b in zip(symbols, symbols[1:]))


def test_names_are_cut_and_normalised_like_the_test_pattern():
    assert label_text("raspberrypi5") == "RASPBERRYPI5"
    assert label_text("a-host-name-longer-than-the-cut") == "A-HOST-NAME-LONG"
    assert label_text("my_pi.lan") == "MY_PI.LAN"
    assert label_text("pi 2") == "PI?2"
    with pytest.raises(ValueError):
        TestSignal("", RATE, 1)


def test_two_names_give_different_signals_and_neither_reads_as_the_other():
    a, b = clip("natpi", 0.2, 3.1), clip("gwpi", 0.2, 2.9)
    assert not np.array_equal(a[:b.size], b[:a.size])
    assert read_label(through_opus(a), RATE) == "NATPI"
    assert read_label(through_opus(b), RATE) == "GWPI"
    # one recording naming two senders names none
    assert read_label(np.concatenate([a, b]), RATE) is None


def test_silence_noise_a_tone_or_a_part_of_the_signal_is_no_name():
    seconds = 2
    t = np.arange(seconds * RATE) / RATE
    rng = np.random.default_rng(5)
    silence = np.zeros(seconds * RATE, dtype=np.int16)
    noise = rng.normal(0, 3000, seconds * RATE).astype(np.int16)
    a440 = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    on_sync = (np.sin(2 * np.pi * testsignal.frequency(testsignal.SYNC) * t) * 8000).astype(np.int16)
    for pcm in (silence, noise, a440, on_sync):
        assert read_label(pcm, RATE) is None
        assert read_label(through_opus(pcm), RATE) is None
    assert read_label(np.zeros(0, dtype=np.int16), RATE) is None
    # a repetition cut before its END tone is not a whole one
    signal = TestSignal("gwpi", RATE, 1)
    end_tone = 1.37 - testsignal.PAUSE_S - testsignal.TONE_S
    gwpi = np.frombuffer(signal.frame(int((end_tone - 0.01) * RATE)), dtype=np.int16)
    assert decode_repetitions(gwpi, RATE) == [] and read_label(gwpi, RATE) is None


def test_a_misheard_character_fails_the_check_instead_of_naming_someone_else():
    pcm = clip("gwpi", 0, 1.37).copy()
    # the 'W' tone (the second character) replaced by an 'X' tone of the same shape
    slot = testsignal.TONE_S + testsignal.GAP_S
    start = int(round((testsignal.SYNC_S + testsignal.GAP_S + slot) * RATE))
    tone = int(round(testsignal.TONE_S * RATE))
    x_tone = TestSignal("x", RATE, 1)
    x_pcm = np.frombuffer(x_tone.frame(x_tone.period_samples), dtype=np.int16)
    x_start = int(round((testsignal.SYNC_S + testsignal.GAP_S) * RATE))
    pcm[start:start + tone] = x_pcm[x_start:x_start + tone]
    assert decode_repetitions(pcm, RATE) == [None]
    assert read_label(pcm, RATE) is None


def test_frames_continue_across_calls_and_repeat_forever():
    one = TestSignal("natpi", RATE, 1)
    whole = one.frame(one.period_samples * 2 + 12345)
    pieced = TestSignal("natpi", RATE, 1)
    parts = [pieced.frame(960) for _ in range(len(whole) // 2 // 960)]
    parts.append(pieced.frame(len(whole) // 2 - 960 * len(parts)))
    assert b"".join(parts) == whole
    assert pieced.frame(0) == b""
    period = one.period_samples * 2
    assert whole[period:2 * period] == whole[:period]
    odd = TestSignal("natpi", RATE, 1)
    assert b"".join(odd.frame(n) for n in (1, 7, 0, 4000, 1)) == whole[:2 * 4009]


def test_stereo_has_identical_channels():
    mono = TestSignal("gwpi", RATE, 1).frame(5000)
    stereo = np.frombuffer(TestSignal("gwpi", RATE, 2).frame(5000), dtype="<i2").reshape(-1, 2)
    assert stereo.shape == (5000, 2)
    assert np.array_equal(stereo[:, 0], stereo[:, 1])
    assert stereo[:, 0].tobytes() == mono
    # a stereo recording (samples x channels) reads as its mix
    two = TestSignal("gwpi", RATE, 2)
    recording = np.frombuffer(two.frame(2 * two.period_samples), dtype="<i2").reshape(-1, 2)
    assert read_label(recording, RATE) == "GWPI"


def test_other_rates_read_back():
    pcm = clip("gwpi", 0.5, 3.0, rate=16000)
    assert read_label(pcm, 16000) == "GWPI"
    with pytest.raises(ValueError):
        TestSignal("gwpi", 4000, 1)
