"""talk -> listen over snd-aloop: the chirp comes out, and how late.

The mouth: the test plays into hw:Loopback,0,0, which talk captures on
hw:Loopback,1,0. The ear: listen plays into hw:Loopback,0,1, which the test
records on hw:Loopback,1,1. Both ends run on the card's real-time clock, so
the delay between a chirp played and the chirp heard is the mouth-to-ear
latency of talk, TCP and listen (its jitter buffer, Opus, ALSA buffers).
"""
from __future__ import annotations

import json
import os
import signal
import time
import wave
from pathlib import Path

import numpy as np

from tests.hw import hwlib
from tests.hw.programs import free_port, start

MOUTH, TALK_DEVICE = "hw:Loopback,0,0", "hw:Loopback,1,0"
LISTEN_DEVICE, EAR = "hw:Loopback,0,1", "hw:Loopback,1,1"
BUFFER_MS = 40
# ALSA buffers for the emulated VM (its compute runs 20-30x slower than the
# host, and its vCPUs share the host's cores): the runtime's default 5-10 ms
# periods overrun there. A longer capture buffer costs no latency; the
# playback buffer's share of the figure is listed with it.
TALK_ALSA = ["--period-ms", "20", "--periods", "8"]
LISTEN_ALSA = ["--period-ms", "20", "--periods", "6"]
COMPLEXITY = 5   # Opus encoder: 9 ms a frame at 10 in the VM, 3.5 ms at 5
BITRATE = 64000
CHIRPS = 5


def wait_for(text: str, program, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and program.process.poll() is None:
        if text in program.log():
            return True
        time.sleep(0.1)
    return False


def test_talk_to_listen_mouth_to_ear(results):
    sweep = hwlib.chirp()
    port = free_port()
    ear = hwlib.Recorder(EAR).start()
    listen = start("listen", ["--device", LISTEN_DEVICE, "--listen", f"127.0.0.1:{port}",
                              "--buffer", str(BUFFER_MS), "--record", str(results / "heard.wav"),
                              "--duration", "300", *LISTEN_ALSA], results)
    talk = None
    played = []
    try:
        assert listen.listening(port, 60), f"listen never listened:\n{listen.log()}"
        talk = start("talk", ["--device", TALK_DEVICE, "--rate", "48000", "--channels", "1",
                              "--bitrate", str(BITRATE), "--complexity", str(COMPLEXITY), "--connect", f"127.0.0.1:{port}",
                              "--duration", "300", *TALK_ALSA], results)
        assert wait_for("connected to", talk, 60), f"talk never connected:\n{talk.log()}"
        assert wait_for("accepted", listen, 30), f"listen never took talk's call:\n{listen.log()}"
        mouth = hwlib.Player(MOUTH)
        try:
            mouth.write(np.zeros(hwlib.RATE, np.int16))  # a second to settle
            for _ in range(CHIRPS):
                played.append(mouth.write(sweep))
                mouth.write(np.zeros(hwlib.RATE * 7 // 10, np.int16))
        finally:
            mouth.close()
        time.sleep(1)
        # Hang up as a call does: the sender first, then the receiver drains.
        talk.process.send_signal(signal.SIGTERM)
        assert talk.wait(30) == 0, talk.log()
        listen.process.send_signal(signal.SIGTERM)
        assert listen.wait(30) == 0, listen.log()
    finally:
        recording = ear.stop()
        listen.stop()
        if talk:
            talk.stop()

    # Each chirp is found in what the ear heard, in the window after it was played.
    latencies, scores = [], []
    for played_at in played:
        start_index = max(0, int((played_at - ear.time_of(0)) * hwlib.RATE))
        window = recording[start_index:start_index + hwlib.RATE]
        lag, score = hwlib.find(sweep, window)
        scores.append(round(score, 3))
        latencies.append(round((ear.time_of(start_index + lag) - played_at) * 1000, 1))
    heard = talk.stats(), listen.stats()
    figures = {
        "what": "mouth-to-ear latency, pi2pi talk -> TCP loopback -> pi2pi listen, snd-aloop in the hardware-lab VM",
        "mouth_to_ear_ms": {"median": float(np.median(latencies)), "each": latencies},
        "correlation": scores,
        "listen_buffer_ms": BUFFER_MS, "talk_alsa": " ".join(TALK_ALSA), "listen_alsa": " ".join(LISTEN_ALSA), "bitrate": BITRATE, "complexity": COMPLEXITY, "rate": hwlib.RATE,
        "talk_device": TALK_DEVICE, "listen_device": LISTEN_DEVICE,
        "listen_underruns": heard[1].get("underruns"), "listen_concealed": heard[1].get("concealed"),
        "listen_device_underruns": heard[1].get("device_underruns"),
        "listen_jitter_buffer_target_ms": heard[1].get("target_ms"), "listen_jitter_ms": heard[1].get("jitter_ms"),
        "vm_cpus": os.cpu_count(),
    }
    (Path(os.environ["PI2PI_HW_OUT"]) / "audio-latency.json").write_text(json.dumps(figures, indent=1) + "\n")
    (results / "audio-latency.json").write_text(json.dumps(figures, indent=1) + "\n")

    # Every chirp is heard (chance correlation is below 0.1), and clean
    # but for the odd glitch the emulated VM's scheduling may cause.
    assert min(scores) > 0.3, f"a chirp did not come out: correlations {scores}"
    assert float(np.median(scores)) > 0.9, f"the chirps came out damaged: correlations {scores}"
    assert all(0 < ms < 500 for ms in latencies), f"mouth-to-ear {latencies} ms"
    assert heard[0]["reason"] == "signal SIGTERM" and heard[1]["reason"] == "signal SIGTERM"
    # listen's own recording holds what it played.
    with wave.open(str(results / "heard.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels()) == (hwlib.RATE, 1)
        recorded = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    _, score = hwlib.find(sweep, recorded)
    assert score > 0.7, f"the chirp is not in listen's recording (correlation {score:.2f})"
