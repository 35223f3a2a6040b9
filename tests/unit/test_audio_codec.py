"""Opus through the low-level API: the 255-byte cap, concealment, rejection; the WAV recorder."""
from __future__ import annotations

import gc
import wave

import numpy as np
import opuslib
import pytest

from pi2pi import wire
from pi2pi.audio.codec import CodecSettings, Decoder, Encoder, OpusError
from pi2pi.audio.jitter import opus_packet_ms
from pi2pi.audio.recording import Recorder
from pi2pi.config import ConfigError


def test_packets_never_exceed_the_one_byte_length_even_at_the_top_bitrate():
    settings = CodecSettings(rate=48000, channels=2, bitrate=510000)
    encoder = Encoder(settings)
    rng = np.random.default_rng(1)
    sizes = []
    for _ in range(50):
        noise = rng.integers(-20000, 20000, settings.frame_samples * 2, dtype=np.int16)
        packet = encoder.encode(noise.tobytes())
        sizes.append(len(packet))
        wire.pack_audio_frame(packet)           # raises if it does not fit
    assert max(sizes) == 255                    # the cap is what limited it
    encoder.close()


def test_voice_at_32_kbps_is_the_seed_s_50_to_100_byte_packets_of_20_ms():
    settings = CodecSettings(bitrate=32000)
    encoder, decoder = Encoder(settings), Decoder(48000, 1)
    t = np.arange(settings.frame_samples * 50) / 48000
    tone = (np.sin(2 * np.pi * 440 * t) * 10000).astype(np.int16)
    packets = [encoder.encode(tone[i:i + 960].tobytes()) for i in range(0, tone.size, 960)]
    assert 50 <= np.mean([len(p) for p in packets[5:]]) <= 100
    assert all(opus_packet_ms(p) == 20.0 for p in packets)
    out = np.concatenate([np.frombuffer(decoder.decode(p), dtype=np.int16) for p in packets])
    spectrum = np.abs(np.fft.rfft(out[4800:].astype(float)))
    assert abs(np.argmax(spectrum) * 48000 / (out.size - 4800) - 440) < 5


def test_concealment_uses_the_low_level_call_and_fades():
    settings = CodecSettings()
    encoder, decoder = Encoder(settings), Decoder(48000, 1)
    t = np.arange(960 * 10) / 48000
    tone = (np.sin(2 * np.pi * 300 * t) * 10000).astype(np.int16)
    for i in range(0, tone.size, 960):
        decoder.decode(encoder.encode(tone[i:i + 960].tobytes()))
    first = np.frombuffer(decoder.conceal(960), dtype=np.int16)
    assert first.size == 960 and np.abs(first).max() > 1000     # continues the sound
    for _ in range(10):
        last = np.frombuffer(decoder.conceal(960), dtype=np.int16)
    assert np.abs(last).max() < np.abs(first).max() / 4         # and fades out
    with pytest.raises(Exception):
        opuslib.Decoder(48000, 1).decode(None, 960)             # why the low-level call


def test_coding_leaves_nothing_for_the_cyclic_collector():
    """Each packet's buffers are freed when it is done with, not by the cyclic collector some
    seconds later (opuslib's own decode left 23 KB per packet to it: the control below)."""
    settings = CodecSettings()
    encoder, decoder = Encoder(settings), Decoder(48000, 1)
    frame = (np.sin(np.arange(960) / 10) * 8000).astype(np.int16).tobytes()
    packet = encoder.encode(frame)
    gc.collect()
    gc.disable()
    try:
        for _ in range(100):
            decoder.decode(encoder.encode(frame))
            decoder.conceal(960)
        ours = gc.collect()
        for _ in range(100):   # control: opuslib's own call on the same decoder state
            opuslib.api.decoder.decode(decoder.state, packet, len(packet), 5760, False, 1)
        theirs = gc.collect()
    finally:
        gc.enable()
    assert ours == 0 and theirs >= 100, (ours, theirs)


def test_a_short_frame_is_refused_not_read_past_its_end():
    with pytest.raises(ValueError):
        Encoder(CodecSettings()).encode(bytes(100))


def test_a_packet_opus_rejects_raises_opus_error():
    decoder = Decoder(48000, 1)
    with pytest.raises(OpusError):
        decoder.decode(b"\xff\xff\xff")


def test_recording_one_file_or_a_set(tmp_path):
    pcm = np.arange(48000 * 2, dtype=np.int16).tobytes()
    one = Recorder(str(tmp_path / "call.wav"), 48000, 1)
    one.write(pcm)
    one.close()
    with wave.open(str(tmp_path / "call.wav")) as w:
        assert (w.getnframes(), w.getframerate(), w.getnchannels()) == (96000, 48000, 1)
    split = Recorder(str(tmp_path / "part.wav"), 48000, 1, split_s=0.75)
    for i in range(0, len(pcm), 1920):
        split.write(pcm[i:i + 1920])
    split.close()
    names = [p.name for p in split.files]
    assert names == ["part-0001.wav", "part-0002.wav", "part-0003.wav"]
    lengths = []
    for p in split.files:
        with wave.open(str(p)) as w:
            lengths.append(w.getnframes())
    assert lengths == [36000, 36000, 24000]


def test_recording_into_a_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(ConfigError, match="no directory"):
        Recorder(str(tmp_path / "nope" / "x.wav"), 48000, 1)
