"""talk's work: capture -> 20 ms frames -> Opus -> one length byte + packet -> TCP.

Capture never stops while the peer is away (a connector thread dials or
accepts in the background), so the device never overruns and a reconnect
sends fresh audio, not a stale backlog.
"""
from __future__ import annotations

import logging
import queue
import socket
import threading
from dataclasses import dataclass
from typing import Any, Dict, Optional

from pi2pi import net, wire
from pi2pi.audio.alsa_io import Capture, DeviceError, DeviceSettings, MixerSettings, apply_mixer
from pi2pi.audio.codec import CodecSettings, Encoder
from pi2pi.audio.talk import Settings
from pi2pi.lifecycle import ProgramRun
from pi2pi.stats import Samples

log = logging.getLogger(__name__)


@dataclass
class TalkCounters:
    packets: int = 0
    bytes: int = 0            # on the wire, length bytes included
    dropped: int = 0          # frames not sent because the TCP queue was full
    stalls: int = 0
    frames_captured: int = 0
    largest_packet: int = 0


class Connector:
    """Waits for the peer (dials or accepts) in a background thread; hands over one socket at a time."""

    def __init__(self, link: net.PeerLink, stop: threading.Event) -> None:
        self.link = link
        self.stop = stop
        self.ready: "queue.Queue[socket.socket]" = queue.Queue(maxsize=1)
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._connect, name="connector", daemon=True)
            self._thread.start()

    def _connect(self) -> None:
        sock = self.link.next_peer(self.stop)
        if sock is not None:
            self.ready.put(sock)

    def take(self) -> Optional[socket.socket]:
        try:
            return self.ready.get_nowait()
        except queue.Empty:
            return None


def run(settings: Settings) -> int:
    token = net.load_token(settings.token_file)
    codec = CodecSettings(settings.rate, settings.channels, settings.bitrate, complexity=settings.complexity)
    device = DeviceSettings(settings.device, settings.rate, settings.channels,
                            settings.period_ms, settings.periods, settings.pace)
    counters = TalkCounters()
    backlog = Samples()
    capture: Optional[Capture] = None

    def snapshot() -> Dict[str, Any]:
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
            "reconnects": link.reconnects,
            "refused": link.refused,      # second dialers turned away
            "unproven": link.unproven,    # dialers without this call's token
            "buffer_ms": {"mean": round(sum(values) / len(values), 1) if values else 0.0,
                          "max": round(max(values), 1) if values else 0.0},
            "drift_ppm": capture.drift_ppm() if capture else None,
            "stalls": counters.stalls,
            "frames_captured": counters.frames_captured,
            "largest_packet": counters.largest_packet,
            "bitrate": settings.bitrate,
            "rate": settings.rate,
            "channels": settings.channels,
            "capture_start_unix": capture.start if capture else None,
        }

    link = net.PeerLink(settings.connect, settings.listen, token, "audio")
    connector = Connector(link, threading.Event())
    capture = Capture(device, codec.frame_samples)
    apply_mixer(MixerSettings(settings.mixer, settings.mixer_device, settings.volume, settings.mute), capture=True)
    encoder = Encoder(codec)
    sock: Optional[socket.socket] = None
    exit_code = 0
    try:
        with ProgramRun("talk", settings.stats_dir(), settings.duration, snapshot) as run_:
            connector.stop = run_.stop
            timer = threading.Timer(run_.remaining(), run_.end, ["duration reached"]) \
                if run_.remaining() != float("inf") else None
            if timer is not None:
                timer.daemon = True
                timer.start()
            connector.start()
            mean_frame_bytes = 80.0
            dropping_since: Optional[int] = None   # frame count when the queue filled up
            stall_frames = int(settings.stall_s * 1000 / codec.frame_ms)
            while not run_.should_stop():
                try:
                    pcm = capture.read_frame()
                except DeviceError as err:
                    log.error("capture device %s failed: %s", settings.device, err)
                    run_.end(f"device error: {err}")
                    exit_code = 1
                    break
                counters.frames_captured += 1
                if sock is None:
                    sock = connector.take()
                    if sock is None:
                        continue
                    dropping_since = None
                    sock.settimeout(settings.stall_s)
                if counters.frames_captured % 50 == 0:
                    link.refuse_others()   # one call, one peer
                if net.peer_hung_up(sock):
                    log.warning("peer closed the connection; waiting for it again")
                    sock = _drop(sock, connector)
                    continue
                packet = encoder.encode(pcm)
                frame = wire.pack_audio_frame(packet)
                queued = net.unacked_bytes(sock)
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
                    sock.sendall(frame)
                except (OSError, socket.timeout) as err:
                    log.warning("send failed (%s); waiting for the peer again", err)
                    sock = _drop(sock, connector)
                    continue
                counters.packets += 1
                counters.bytes += len(frame)
                counters.largest_packet = max(counters.largest_packet, len(packet))
                mean_frame_bytes += (len(frame) - mean_frame_bytes) / 32.0
            if timer is not None:
                timer.cancel()
    finally:
        if sock is not None:
            sock.close()
        link.close()
        encoder.close()
        capture.close()
    return exit_code


def _drop(sock: socket.socket, connector: Connector) -> None:
    try:
        sock.close()
    finally:
        connector.start()
    return None
