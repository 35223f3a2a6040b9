"""talk's work: capture -> 20 ms frames -> Opus -> one length byte + packet -> TCP.

Capture never stops while the peer is away (a connector thread dials or
accepts in the background), so the device never overruns and a reconnect
sends fresh audio, not a stale backlog. More than --max-backlog-ms waiting to
leave drops frames; --stall-s of dropping, or a packet the peer does not take
within --stall-s, drops the peer. While the call's controls say muted
(controls.py), talk sends silence: the same packets in real time, encoded from
zeros, reached and left by a one-frame fade (audio/gain.py). A listening talk
whose peer dials again (proving the call's token) drops the connection it
serves at once and sends to the new one (net.PeerLink). A stop request wins within 0.2 s, even half-way
through sending a packet (wire.send_frame, lifecycle.py).
"""
from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

from pi2pi import controls, net, wire
from pi2pi.audio.alsa_io import Capture, DeviceError, DeviceSettings, MixerSettings, apply_mixer
from pi2pi.audio.codec import CodecSettings, Encoder
from pi2pi.audio.gain import Gain
from pi2pi.audio.settings import TEST_SIGNAL, TalkSettings
from pi2pi.lifecycle import ProgramRun
from pi2pi.stats import Samples

log = logging.getLogger(__name__)

# Every this many frames (0.2 s of 20 ms ones), a listening talk asks whether its
# peer dialed again (net.PeerLink.superseded): a dead connection does not slow
# capture down, so nothing else brings the question sooner.
SUPERSEDED_EVERY = 10


@dataclass
class TalkCounters:
    packets: int = 0
    bytes: int = 0            # on the wire, length bytes included
    dropped: int = 0          # frames not sent because the TCP queue was full
    stalls: int = 0
    frames_captured: int = 0
    frames_muted: int = 0     # frames captured while muted (sent as silence)
    largest_packet: int = 0


class TestSignalCapture:
    """The capture device's stand-in for `--device testsignal`: the tone pattern
    naming this host (audio/testsignal.py), paced by the wall clock."""

    def __init__(self, label: str, rate: int, channels: int, frame_samples: int) -> None:
        from pi2pi.audio.testsignal import TestSignal

        self.signal = TestSignal(label, rate, channels)
        self.rate = rate
        self.frame_samples = frame_samples
        self.overruns = 0
        self.frames_read = 0
        self.start: Optional[float] = None
        self._start_mono = 0.0

    def read_frame(self) -> bytes:
        if self.start is None:
            self._start_mono, self.start = time.monotonic(), time.time()
        self.frames_read += self.frame_samples
        delay = self._start_mono + self.frames_read / self.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return self.signal.frame(self.frame_samples)

    def drift_ppm(self) -> Optional[float]:
        return None   # the wall clock is its clock

    def close(self) -> None:
        pass


class Connector:
    """Waits for the peer (dials or accepts) in a background thread; hands over one socket at a time."""

    def __init__(self, link: net.PeerLink, run: ProgramRun) -> None:
        self.link = link
        self.run = run
        self.ready: "queue.Queue[socket.socket]" = queue.Queue(maxsize=1)
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        if self._thread is not None:
            # It handed over the socket being dropped, so it is ending (if not gone):
            # a new one must start even if the drop came right after the hand-over.
            self._thread.join(1.0)
        if self._thread is None or not self._thread.is_alive():
            self._thread = self.run.worker(self._connect, "connector")

    def _connect(self) -> None:
        sock = self.link.next_peer(self.run.stop)
        if sock is not None:
            self.ready.put(sock)

    def take(self) -> Optional[socket.socket]:
        try:
            return self.ready.get_nowait()
        except queue.Empty:
            return None


def open_capture(settings: TalkSettings, device: DeviceSettings, frame_samples: int) -> Any:
    if settings.device == TEST_SIGNAL:
        return TestSignalCapture(settings.label or socket.gethostname(), settings.rate, settings.channels,
                                 frame_samples)
    return Capture(device, frame_samples)


def run(settings: TalkSettings) -> int:
    token = net.load_token(settings.token_file)
    codec = CodecSettings(settings.rate, settings.channels, settings.bitrate, complexity=settings.complexity)
    device = DeviceSettings(settings.device, settings.rate, settings.channels,
                            settings.period_ms, settings.periods, settings.pace)
    counters = TalkCounters()
    backlog = Samples()
    watch = controls.Watch(settings.stats_dir())
    state: Dict[str, Any] = {"link": None, "capture": None}

    def snapshot() -> Dict[str, Any]:
        link, capture = state["link"], state["capture"]
        frame_s = codec.frame_ms / 1000.0
        audio_s = counters.packets * frame_s
        values = [v for v in backlog.values]
        return {
            "packets": counters.packets,
            "bytes": counters.bytes,
            "kbps": round(counters.bytes * 8 / audio_s / 1000, 2) if audio_s else 0.0,
            "underruns": capture.overruns if capture else 0,   # capture overruns (xruns)
            "concealed": 0,
            "dropped": counters.dropped,
            "reconnects": link.reconnects if link else 0,
            "refused": link.refused if link else 0,      # dialers turned away (no token, or too many at once)
            "unproven": link.unproven if link else 0,    # dialers without this call's token
            "buffer_ms": {"mean": round(sum(values) / len(values), 1) if values else 0.0,
                          "max": round(max(values), 1) if values else 0.0},
            "drift_ppm": capture.drift_ppm() if capture else None,
            "stalls": counters.stalls,
            "frames_captured": counters.frames_captured,
            "frames_muted": counters.frames_muted,
            "muted": watch.controls.muted,
            "largest_packet": counters.largest_packet,
            "bitrate": settings.bitrate,
            "rate": settings.rate,
            "channels": settings.channels,
            "device": settings.device,
            "capture_start_unix": capture.start if capture else None,
        }

    def live() -> Dict[str, Any]:
        link = state["link"]
        return {"state": link.state() if link else "starting", "peer": link.peer if link else None,
                "flowing": counters.packets > 0, "packets": counters.packets, "bytes": counters.bytes,
                "dropped": counters.dropped, "reconnects": link.reconnects if link else 0,
                "muted": watch.controls.muted}

    with ProgramRun("talk", settings.stats_dir(), settings.duration, snapshot,
                    live=live if settings.live else None) as run_:
        link = state["link"] = net.PeerLink(settings.connect, settings.listen, token, "audio")
        encoder: Optional[Encoder] = None
        try:
            capture = state["capture"] = open_capture(settings, device, codec.frame_samples)
            apply_mixer(MixerSettings(settings.mixer, settings.mixer_device, settings.volume, settings.mute),
                        capture=True)
            encoder = Encoder(codec)
            return send(settings, codec, link, capture, encoder, counters, backlog, watch, run_)
        finally:
            link.close()
            if encoder is not None:
                encoder.close()
            if state["capture"] is not None:
                state["capture"].close()


def send(settings: TalkSettings, codec: CodecSettings, link: net.PeerLink, capture: Any, encoder: Encoder,
         counters: TalkCounters, backlog: Samples, watch: controls.Watch, run_: ProgramRun) -> int:
    """Capture, encode and send until the run stops; the exit code."""
    microphone = Gain(settings.channels)
    connector = Connector(link, run_)
    connector.start()
    sock: Optional[socket.socket] = None
    mean_frame_bytes = 80.0
    dropping_since: Optional[int] = None   # frame count when the queue filled up
    stall_frames = int(settings.stall_s * 1000 / codec.frame_ms)
    try:
        while not run_.stop.is_set():
            try:
                pcm = capture.read_frame()
            except DeviceError as err:
                log.error("capture device %s failed: %s", settings.device, err)
                run_.end(f"device error: {err}")
                return 1
            counters.frames_captured += 1
            # Muted is silence sent, not nothing sent: the far side's stream stays whole.
            muted = watch.poll().muted
            if muted:
                counters.frames_muted += 1
            pcm = microphone.apply_bytes(pcm, 0.0 if muted else 1.0)
            if sock is None:
                sock = connector.take()
                if sock is None:
                    continue
                dropping_since = None
            if counters.frames_captured % SUPERSEDED_EVERY == 0 and link.superseded():
                sock = _drop(sock, connector)   # the peer dialed again: its new connection is next
                continue
            if net.peer_hung_up(sock):
                log.warning("peer closed the connection; waiting for it again")
                sock = _drop(sock, connector)
                continue
            packet = encoder.encode(pcm)
            frame = wire.pack_audio_frame(packet)
            # What waits to leave, not what is in flight: a 300 ms round trip holds
            # 300 ms of audio in flight on a healthy link, and that must not count.
            queued = net.unsent_bytes(sock)
            queued_ms = queued / mean_frame_bytes * codec.frame_ms
            backlog.add(queued_ms)
            if queued_ms > settings.max_backlog_ms:
                # the network is slower than the audio: keep latency bounded
                counters.dropped += 1
                if dropping_since is None:
                    dropping_since = counters.frames_captured
                    log.warning("TCP queue holds %.0f ms of audio; dropping frames", queued_ms)
                elif counters.frames_captured - dropping_since > stall_frames:
                    counters.stalls += 1
                    log.warning("peer took nothing for %.1f s; dropping it", settings.stall_s)
                    sock = _drop(sock, connector)
                continue
            dropping_since = None
            try:
                wire.send_frame(sock, frame, settings.stall_s, run_.stop)
            except wire.Stopped:
                break
            except (wire.Stalled, OSError) as err:
                log.warning("send failed (%s); waiting for the peer again", err)
                sock = _drop(sock, connector)
                continue
            counters.packets += 1
            counters.bytes += len(frame)
            counters.largest_packet = max(counters.largest_packet, len(packet))
            mean_frame_bytes += (len(frame) - mean_frame_bytes) / 32.0
        return 0
    finally:
        if sock is not None:
            sock.close()


def _drop(sock: socket.socket, connector: Connector) -> None:
    try:
        sock.close()
    finally:
        connector.link.lost()
        connector.start()
    return None
