"""talk -> TCP -> listen with real ALSA (file/null plugins), real Opus, real sockets.

What a listener would check: the recording holds the same signal, aligned,
every stretch once and in order, without a hard cut; the wire carries exactly
the seed's framing; an independent Opus encoder's packets play; bad input is
survived.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import List, Sequence

import numpy as np
import opuslib
import pytest

from pi2pi import net, wire
from pi2pi.audio.codec import CodecSettings, Encoder
from tests.audio import analysis, harness
from tests.video.helpers import rss_kb

RATE = 48000
# This machine is shared (VMs, the lab) and these devices are paced by the wall
# clock: a roomy jitter buffer and device buffer keep a stall from becoming a gap.
ROOMY = ["--buffer", "60", "--periods", "20"]


def faded(x: np.ndarray, ms: float = 10.0) -> np.ndarray:
    """Soft edges, so the test signal itself has no hard cut where it starts or stops."""
    n = int(RATE * ms / 1000)
    ramp = np.linspace(0.0, 1.0, n)
    y = x.astype(np.float64)
    y[:n] *= ramp
    y[-n:] *= ramp[::-1]
    return y.astype(np.int16)


def tone(seconds: float, freq: float = 440.0, amplitude: float = 10000.0) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return faded((np.sin(2 * np.pi * freq * t) * amplitude).astype(np.int16))


def dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64)))
    return float(np.argmax(spectrum) * RATE / x.size)


def sounding(x: np.ndarray, threshold: float = 1000.0, margin_s: float = 0.05) -> np.ndarray:
    """The stretch between the first and last loud sample, less a margin at each end."""
    loud = np.nonzero(np.abs(x.astype(np.int32)) > threshold)[0]
    assert loud.size, "the recording is silent"
    m = int(RATE * margin_s)
    return x[loud[0] + m:loud[-1] - m]


def released(port: int) -> bool:
    """No connection on the port is open or half-closed: once the sender has gone, the
    receiver read everything up to the sender's close and let go of its socket."""
    out = subprocess.run(["ss", "-Htn", "state", "established", "state", "close-wait",
                          f"( sport = :{port} or dport = :{port} )"], capture_output=True, text=True)
    return out.returncode == 0 and not out.stdout.strip()


def wait_released(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not released(port):
        assert time.monotonic() < deadline, f"listen kept its connection on port {port} after the sender closed"
        time.sleep(0.02)


def run_call(tmp_path: Path, signal_in: np.ndarray, talk_s: float, extra_talk: List[str] = (),
             extra_listen: List[str] = (), command: Sequence[str] = tuple(harness.PI2PI)):
    """talk plays `signal_in` to listen over loopback; `command` runs pi2pi (tests/arm: on an emulated Pi)."""
    env = harness.alsa_env(tmp_path / "alsa", signal_in)
    port = harness.free_port()
    stats = tmp_path / "stats"
    wav = tmp_path / "heard.wav"
    listen = harness.start("listen", ["--listen", f"127.0.0.1:{port}", "--device", "null", "--pace", "clock",
                                      "--record", str(wav), "--stats", str(stats), "--duration", "30",
                                      *ROOMY,
                                      *extra_listen], env, tmp_path / "listen.log", command)
    try:
        harness.wait_listening(port)
        talk = harness.start("talk", ["--connect", f"127.0.0.1:{port}", "--device", "p2p_in", "--pace", "clock",
                                      "--duration", str(talk_s), "--stats", str(stats), *extra_talk],
                             env, tmp_path / "talk.log", command)
        assert harness.finish(talk, talk_s + 15) == 0, (tmp_path / "talk.log").read_text()
        wait_released(port)   # listen has every packet talk sent
        time.sleep(0.5)       # and plays out what it holds (the recording's tail; no count depends on it)
    finally:
        listen.send_signal(signal.SIGTERM)
        code = harness.finish(listen)
    assert code == 0, (tmp_path / "listen.log").read_text()
    _, heard = analysis.read_wav(wav)
    return harness.stats(stats, "talk"), harness.stats(stats, "listen"), heard


CHIRP_TALK_S = 3.4   # the chirp with its silences around it


def chirp_input() -> np.ndarray:
    """A 2.5 s chirp, 0.4 s of silence before it and 1.5 s after."""
    return harness.with_silence(faded(analysis.chirp(RATE, 2.5, 200.0, 4000.0)), RATE, 0.4, 1.5)


@pytest.mark.parametrize("with_token", [False, True], ids=["seed-protocol", "call-token"])
def test_chirp_comes_out_aligned_whole_and_without_a_cut(tmp_path, with_token):
    signal_in = chirp_input()
    extra: List[str] = []
    if with_token:
        token = tmp_path / "token"
        token.write_text("a-call-token-of-32-characters-xx\n")
        token.chmod(0o600)
        extra = ["--token-file", str(token)]
    talk, listen, heard = run_call(tmp_path, signal_in, CHIRP_TALK_S, extra, extra)
    check_chirp_heard(signal_in, talk, listen, heard)


def check_chirp_heard(signal_in: np.ndarray, talk: dict, listen: dict, heard: np.ndarray) -> None:
    """What a listener checks of the chirp's call: all of it, in order, no cut; the counts add up."""
    lag, corr = analysis.align(signal_in, heard)
    # (Opus does not keep a chirp's waveform exactly, and a counted gap splits the
    # alignment: the whole-file peak only finds the lag; each window is checked below)
    assert corr > 0.2, f"the recording does not hold the chirp (correlation {corr:.2f})"
    windows = [w for w in analysis.window_lags(signal_in, heard, lag, RATE, window_s=0.1)
               if 0.5 * RATE <= w[0] <= 2.7 * RATE]   # the chirp less its faded ends
    assert len(windows) >= 21, "the chirp's windows were not all found in the recording"
    assert min(w[2] for w in windows) > 0.7, "a stretch of the chirp is not in the recording"
    steps = np.diff([w[1] for w in windows])
    # Opus shifts phase a little (< 1 ms). A stretch missing would make the lag shrink;
    # one repeated, or a gap, makes it grow. Only a gap that listen counted may do that
    # (a scheduling stall of this shared machine can starve even a 100 ms buffer), and
    # only a cross-fade that listen counted may remove a frame of the chirp.
    shrunk = steps[steps < -48]
    assert shrunk.size <= listen["crossfaded"], f"a stretch is missing: lag steps {steps.tolist()}"
    assert listen["crossfaded"] == 0 or listen["device_underruns"] > 0   # only after a stall
    gaps = listen["underruns"] + listen["device_underruns"]
    grown = steps[steps > 48]
    assert grown.size <= gaps, f"lag grew by {grown.tolist()} samples with {gaps} counted gaps"
    cuts = analysis.hard_cuts(heard, RATE)
    assert len(cuts) <= 2 * gaps, f"hard cuts at {[round(c / RATE, 3) for c in cuts]} s"

    # At most the duration's worth (clock pacing), and most of it: talk's clock starts before
    # it opens the device and connects, which a loaded machine can take a few tenths of a second over.
    assert 0.8 * CHIRP_TALK_S * 50 <= talk["packets"] <= CHIRP_TALK_S * 50 + 5 and talk["reason"] == "duration reached"
    assert listen["packets"] == talk["packets"] and listen["bytes"] == talk["bytes"]
    assert 20.0 <= talk["kbps"] <= 45.0
    assert listen["rejected"] == 0 and listen["dropped"] <= 3   # trims only in the pauses
    assert listen["reason"] == "signal SIGTERM"
    for field in ("packets", "bytes", "kbps", "duration_s", "underruns", "concealed", "dropped",
                  "reconnects", "buffer_ms", "drift_ppm", "reason"):
        assert field in talk and field in listen
    assert set(listen["buffer_ms"]) == {"mean", "max"}


def read_until_closed(conn: socket.socket) -> bytes:
    chunks = []
    conn.settimeout(30.0)
    while True:
        data = conn.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def split_seed_frames(stream: bytes) -> List[bytes]:
    packets, i = [], 0
    while i < len(stream):
        length = stream[i]
        assert 1 <= length <= 255, f"length byte {length} at offset {i}"
        assert i + 1 + length <= len(stream), "stream ends inside a packet"
        packets.append(stream[i + 1:i + 1 + length])
        i += 1 + length
    return packets


def test_the_wire_carries_exactly_the_seed_framing(tmp_path):
    env = harness.alsa_env(tmp_path / "alsa", harness.with_silence(tone(1.6, 523.0), RATE, 0.0, 1.0))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    talk = harness.start("talk", ["--connect", f"127.0.0.1:{port}", "--device", "p2p_in", "--pace", "clock",
                                  "--duration", "1.5", "--stats", str(tmp_path)], env, tmp_path / "talk.log")
    server.settimeout(30)
    conn, _ = server.accept()
    stream = read_until_closed(conn)
    assert harness.finish(talk) == 0
    packets = split_seed_frames(stream)   # one length byte, the packet, and nothing else
    assert 0.8 * 75 <= len(packets) <= 76   # 1.5 s at 50 packets a second (see check_chirp_heard)
    # an independent decoder (opuslib's own class) plays every packet as 20 ms
    decoder = opuslib.Decoder(RATE, 1)
    pcm = np.concatenate([np.frombuffer(decoder.decode(p, 960), dtype=np.int16) for p in packets])
    assert pcm.size == len(packets) * 960
    assert abs(dominant_hz(pcm[9600:]) - 523.0) < 5
    stats = harness.stats(tmp_path, "talk")
    assert stats["bytes"] == len(stream) and stats["packets"] == len(packets)


def ogg_packets(data: bytes) -> List[bytes]:
    """Packets of an Ogg stream (RFC 3533): pages, lacing values, continued packets."""
    packets, partial, i = [], b"", 0
    while i < len(data):
        assert data[i:i + 4] == b"OggS", "not an Ogg page"
        segments = data[i + 26]
        table = data[i + 27:i + 27 + segments]
        body = i + 27 + segments
        for lace in table:
            partial += data[body:body + lace]
            body += lace
            if lace < 255:
                packets.append(partial)
                partial = b""
        i = body
    return packets


def send_paced(conn: socket.socket, packets: List[bytes], frame_s: float = 0.02) -> None:
    start = time.monotonic()
    for k, packet in enumerate(packets):
        conn.sendall(wire.pack_audio_frame(packet))
        delay = start + (k + 1) * frame_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def start_listen(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen:
    env = harness.alsa_env(tmp_path / "alsa")
    proc = harness.start("listen", ["--listen", f"127.0.0.1:{port}", "--device", "null", "--pace", "clock",
                                    "--record", str(tmp_path / "heard.wav"), "--stats", str(tmp_path / "stats"),
                                    "--duration", "30", *ROOMY, *extra], env, tmp_path / "listen.log")
    harness.wait_listening(port)
    return proc


def stop_listen(tmp_path: Path, proc: subprocess.Popen, port: int) -> dict:
    """SIGTERM once listen has read all the test's (closed) connections held, and played out the rest."""
    wait_released(port)
    time.sleep(0.4)   # playout of what the buffer holds: the recording's tail, no count
    proc.send_signal(signal.SIGTERM)
    assert harness.finish(proc) == 0, (tmp_path / "listen.log").read_text()
    return harness.stats(tmp_path / "stats", "listen")


def test_packets_from_gstreamer_opusenc_play(tmp_path):
    ogg = tmp_path / "gst.ogg"
    subprocess.run(["gst-launch-1.0", "-q", "audiotestsrc", "num-buffers=75", "samplesperbuffer=960",
                    "freq=660", "volume=0.3", "!", "audio/x-raw,rate=48000,channels=1", "!",
                    "opusenc", "bitrate=32000", "frame-size=20", "!", "oggmux", "!",
                    "filesink", f"location={ogg}"], check=True, timeout=30)
    packets = ogg_packets(ogg.read_bytes())
    assert packets[0].startswith(b"OpusHead") and packets[1].startswith(b"OpusTags")
    audio = packets[2:]
    assert len(audio) >= 74 and all(0 < len(p) <= 255 for p in audio)
    port = harness.free_port()
    proc = start_listen(tmp_path, port)
    try:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            send_paced(conn, audio)
    finally:
        stats = stop_listen(tmp_path, proc, port)
    assert stats["packets"] == len(audio) and stats["rejected"] == 0 and stats["underruns"] == 0
    _, heard = analysis.read_wav(tmp_path / "heard.wav")
    body = sounding(heard)
    assert body.size > RATE * 1.2
    assert abs(dominant_hz(body) - 660.0) < 5
    assert analysis.hard_cuts(body, RATE) == []


def our_packets(seconds: float, freq: float) -> List[bytes]:
    encoder = Encoder(CodecSettings())
    x = tone(seconds, freq)
    return [encoder.encode(x[i:i + 960].tobytes()) for i in range(0, x.size - 959, 960)]


def test_bad_input_is_logged_counted_and_survived(tmp_path):
    port = harness.free_port()
    proc = start_listen(tmp_path, port, "--stall-s", "0.5")
    try:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"\x00" * 5)                                  # zero lengths
            conn.sendall(b"\x03\xff\xff\xff")                          # not Opus (63 x 20 ms)
            conn.sendall(b"\x05\xfa\xc8\x01\x02\x03")                  # Opus rejects it (a lying length)
            send_paced(conn, our_packets(1.0, 440.0))
            conn.sendall(b"\x64" + b"\x01" * 10)                       # then stalls mid-packet
            time.sleep(1.2)
            assert conn.recv(16) == b""                                # listen gave up on this peer
        with socket.create_connection(("127.0.0.1", port)) as conn:   # and serves the next one
            send_paced(conn, our_packets(1.0, 880.0))
        with socket.create_connection(("127.0.0.1", port)) as conn:   # a stranger's bytes
            conn.sendall(os.urandom(20000))
    finally:
        stats = stop_listen(tmp_path, proc, port)
    log = (tmp_path / "listen.log").read_text()
    assert "Traceback" not in log
    assert stats["zero_length"] >= 5                            # (the stranger may add some)
    assert stats["rejected"] >= 2
    assert stats["stalls"] == 1 and stats["reconnects"] == 2
    assert "zero length" in log and "stalled" in log
    _, heard = analysis.read_wav(tmp_path / "heard.wav")
    # both good stretches were heard, at their own pitch
    loud = np.nonzero(np.abs(heard.astype(np.int32)) > 1000)[0]
    assert loud.size > RATE * 1.5
    first = heard[loud[0] + 4800:loud[0] + 4800 + 24000]
    assert abs(dominant_hz(first) - 440.0) < 5
    gap = np.nonzero(np.diff(loud) > RATE // 10)[0]
    second = heard[loud[gap[0] + 1] + 4800:loud[gap[0] + 1] + 4800 + 24000]
    assert abs(dominant_hz(second) - 880.0) < 5


def test_with_a_token_a_stranger_is_refused_and_the_call_plays(tmp_path):
    token = tmp_path / "token"
    token.write_text("another-call-token-0123456789abcdef\n")
    token.chmod(0o600)
    port = harness.free_port()
    proc = start_listen(tmp_path, port, "--token-file", str(token))
    try:
        with socket.create_connection(("127.0.0.1", port)) as stranger:   # speaks the bare seed protocol
            stranger.settimeout(10)
            try:
                stranger.sendall(b"".join(wire.pack_audio_frame(p) for p in our_packets(0.5, 300.0)))
                while stranger.recv(4096):
                    pass
            except (ConnectionResetError, BrokenPipeError):
                pass
        stop = __import__("threading").Event()
        conn = net.dial("127.0.0.1", port, stop, token.read_bytes().strip(), "audio")
        assert conn is not None
        with conn:
            send_paced(conn, our_packets(1.0, 440.0))
    finally:
        stats = stop_listen(tmp_path, proc, port)
    assert stats["packets"] == 50 and stats["reconnects"] == 0 and stats["unproven"] == 1
    assert "refused" in (tmp_path / "listen.log").read_text()


def test_a_missing_mixer_control_is_logged_not_fatal(tmp_path):
    env = harness.alsa_env(tmp_path / "alsa", tone(1.0))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    talk = harness.start("talk", ["--connect", f"127.0.0.1:{server.getsockname()[1]}", "--device", "p2p_in",
                                  "--pace", "clock", "--duration", "0.5", "--stats", str(tmp_path),
                                  "--mixer", "NoSuchControl", "--volume", "50"], env, tmp_path / "talk.log")
    assert harness.finish(talk) == 0
    server.close()
    assert "no mixer control 'NoSuchControl'" in (tmp_path / "talk.log").read_text()


def logged(log: Path, text: str, timeout_s: float = 15.0) -> str:
    """The first line of a program's log holding `text`, waiting for it to be written."""
    deadline = time.monotonic() + timeout_s
    while True:
        line = next((line for line in log.read_text().splitlines() if text in line), None)
        if line is not None:
            return line
        assert time.monotonic() < deadline, f"no {text!r} in {log}:\n{log.read_text()}"
        time.sleep(0.02)


def test_talk_listens_and_listen_dials_as_natpi_does_for_the_return_stream(tmp_path):
    """gwpi's talk waits on its port; natpi's listen dials it (and retries until it answers):
    talk starts only once listen has logged a refused attempt, so the call comes from a retry."""
    env = harness.alsa_env(tmp_path / "alsa", harness.with_silence(tone(1.5, 350.0), RATE, 0.2, 1.5))
    port = harness.free_port()
    stats = tmp_path / "stats"
    listen = harness.start("listen", ["--connect", f"127.0.0.1:{port}", "--device", "null", "--pace", "clock",
                                      "--record", str(tmp_path / "heard.wav"), "--stats", str(stats),
                                      "--duration", "30", *ROOMY], env, tmp_path / "listen.log")
    try:
        logged(tmp_path / "listen.log", f"dial 127.0.0.1:{port}: ")   # net.dial's line for a failed attempt
        talk = harness.start("talk", ["--listen", f"127.0.0.1:{port}", "--device", "p2p_in", "--pace", "clock",
                                      "--duration", "2.5", "--stats", str(stats)], env, tmp_path / "talk.log")
        assert harness.finish(talk) == 0, (tmp_path / "talk.log").read_text()
        wait_released(port)   # listen read everything up to talk's close
    finally:
        listen.send_signal(signal.SIGTERM)
        assert harness.finish(listen) == 0
    talk_stats, listen_stats = harness.stats(stats, "talk"), harness.stats(stats, "listen")
    assert talk_stats["packets"] > 60 and listen_stats["packets"] == talk_stats["packets"]
    _, heard = analysis.read_wav(tmp_path / "heard.wav")
    assert abs(dominant_hz(sounding(heard)) - 350.0) < 5


def test_talk_redials_when_the_listener_comes_back(tmp_path):
    env = harness.alsa_env(tmp_path / "alsa", harness.with_silence(tone(5.0, 440.0), RATE, 0.0, 2.0))
    port = harness.free_port()
    first = harness.start("listen", ["--listen", f"127.0.0.1:{port}", "--device", "null", "--pace", "clock",
                                     "--stats", str(tmp_path / "first"), "--duration", "1.5", *ROOMY],
                          env, tmp_path / "first.log")
    harness.wait_listening(port)
    talk = harness.start("talk", ["--connect", f"127.0.0.1:{port}", "--device", "p2p_in", "--pace", "clock",
                                  "--duration", "5", "--stats", str(tmp_path / "talk")], env, tmp_path / "talk.log")
    assert harness.finish(first) == 0
    second = harness.start("listen", ["--listen", f"127.0.0.1:{port}", "--device", "null", "--pace", "clock",
                                      "--stats", str(tmp_path / "second"), "--duration", "30", *ROOMY],
                           env, tmp_path / "second.log")
    try:
        assert harness.finish(talk) == 0, (tmp_path / "talk.log").read_text()
    finally:
        second.send_signal(signal.SIGTERM)
        assert harness.finish(second) == 0
    talk_stats = harness.stats(tmp_path / "talk", "talk")
    first_stats = harness.stats(tmp_path / "first", "listen")
    second_stats = harness.stats(tmp_path / "second", "listen")
    assert talk_stats["reconnects"] == 1
    assert first_stats["packets"] > 20 and second_stats["packets"] > 20
    # what reached neither listener is the little talk wrote before it saw the first one go
    assert talk_stats["packets"] - 3 <= first_stats["packets"] + second_stats["packets"] <= talk_stats["packets"]


def receive_queue_empty(port: int) -> bool:
    """The listener's socket holds nothing unread (ss's Recv-Q), so listen took it all in."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout.split()
    return bool(out) and out[0] == "0"


def test_a_peer_sending_faster_than_real_time_does_not_grow_listen(tmp_path):
    """The jitter buffer used to keep every packet a fast peer sent until playout."""
    port = harness.free_port()
    proc = start_listen(tmp_path, port)
    packet = wire.pack_audio_frame(our_packets(0.02, 440.0)[0])
    with socket.create_connection(("127.0.0.1", port)) as flood:
        def send_and_settle(count: int) -> None:
            for start in range(0, count, 1000):
                flood.sendall(packet * min(1000, count - start))
            deadline = time.monotonic() + 30
            while not receive_queue_empty(port):
                assert time.monotonic() < deadline, "listen did not take the flood in"
                time.sleep(0.02)

        send_and_settle(5_000)                                  # 100 s of audio at once
        settled = rss_kb(proc.pid)
        send_and_settle(100_000)                                # 2000 s more
        peak = rss_kb(proc.pid, "VmHWM")
    stats = stop_listen(tmp_path, proc, port)
    # 100 000 more packets kept would be ~20 MB; the buffer holds at most buffer_max + 5 s.
    assert peak - settled < 8_000, f"listen grew from {settled} kB to a peak of {peak} kB"
    assert stats["packets"] == 105_000 and stats["flooded"] > 90_000, stats
