"""listen's work: TCP -> jitter buffer -> Opus decode/conceal -> ALSA (and WAV).

Two threads: the receiver reads packets off the connection (and waits for the
next one when a peer goes) and pushes them into the jitter buffer; the player,
clocked by the output device, takes one frame at a time from the playout.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from pi2pi import net, wire
from pi2pi.audio.alsa_io import DeviceError, DeviceSettings, MixerSettings, Playback, apply_mixer
from pi2pi.audio.codec import Decoder, OpusError
from pi2pi.audio.jitter import JitterBuffer, JitterSettings, Playout, opus_packet_ms
from pi2pi.audio.listen import Settings
from pi2pi.audio.recording import Recorder
from pi2pi.lifecycle import ProgramRun

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.25
# This many unplayable packets in a row is not a damaged Opus stream but a
# stranger (or a protocol mix-up): drop the connection.
MAX_BAD_IN_A_ROW = 50
LOG_FIRST = 5           # log the first few of each kind of bad input, then count


def now_ms() -> float:
    return time.monotonic() * 1000.0


@dataclass
class ReceiveCounters:
    packets: int = 0
    bytes: int = 0
    audio_ms: float = 0.0
    zero_length: int = 0
    malformed: int = 0     # not an Opus packet at all (its TOC byte cannot be)
    stalls: int = 0
    closed: int = 0


class Receiver:
    def __init__(self, settings: Settings, token: Optional[bytes], buffer: JitterBuffer,
                 stop: threading.Event) -> None:
        self.settings = settings
        self.token = token
        self.buffer = buffer
        self.stop = stop
        self.counters = ReceiveCounters()
        self.link = net.PeerLink(settings.connect, settings.listen, token, "audio")
        self.thread = threading.Thread(target=self._run, name="receiver", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            sock = self.link.next_peer(self.stop)
            if sock is None:
                return
            self.buffer.new_stream()
            try:
                self._serve(sock)
            finally:
                sock.close()
            if self.settings.connect and not self.stop.is_set():
                self.stop.wait(1.0)   # a dialer retries, gently

    def _bad(self, what: str, count: int, bad_in_a_row: int) -> bool:
        if count <= LOG_FIRST:
            log.warning("%s (%d so far)", what, count)
        if bad_in_a_row >= MAX_BAD_IN_A_ROW:
            log.warning("%d unplayable packets in a row: not an audio peer; closing", bad_in_a_row)
            return True
        return False

    def _serve(self, sock: socket.socket) -> None:
        c = self.counters
        idle_since = time.monotonic()
        bad_in_a_row = 0
        while not self.stop.is_set():
            try:
                packet = wire.read_audio_frame(sock, self.settings.stall_s, first_wait_s=IDLE_POLL_S)
            except socket.timeout:
                self.link.refuse_others()
                if time.monotonic() - idle_since > self.settings.stall_s:
                    c.stalls += 1
                    log.warning("peer sent nothing for %.1f s; dropping it", self.settings.stall_s)
                    return
                continue
            except wire.Stalled as err:
                c.stalls += 1
                log.warning("%s; dropping the peer", err)
                return
            except wire.PeerClosed as err:
                c.closed += 1
                log.info("%s", err)
                if not err.partial:
                    self.buffer.mark_ended()
                return
            except OSError as err:
                log.warning("receive failed: %s", err)
                return
            idle_since = time.monotonic()
            c.bytes += 1 + len(packet)
            if not packet:
                c.zero_length += 1
                bad_in_a_row += 1
                if self._bad("zero length byte: no packet", c.zero_length, bad_in_a_row):
                    return
                continue
            duration = opus_packet_ms(packet)
            if duration is None:
                c.malformed += 1
                bad_in_a_row += 1
                if self._bad(f"{len(packet)}-byte packet is not Opus", c.malformed, bad_in_a_row):
                    return
                continue
            bad_in_a_row = 0
            c.packets += 1
            c.audio_ms += duration
            self.buffer.push(packet, duration, now_ms())
            if c.packets % 50 == 0:
                self.link.refuse_others()

    def close(self) -> None:
        self.link.close()


def run(settings: Settings) -> int:
    token = net.load_token(settings.token_file)
    device = DeviceSettings(settings.device, settings.rate, settings.channels,
                            settings.period_ms, settings.periods, settings.pace)
    jitter = JitterSettings(min_ms=settings.buffer, max_ms=settings.buffer_max)
    buffer = JitterBuffer(jitter)
    stop = threading.Event()
    recorder = Recorder(settings.record, settings.rate, settings.channels, settings.record_split) \
        if settings.record else None
    try:
        receiver = Receiver(settings, token, buffer, stop)
    except BaseException:
        if recorder is not None:
            recorder.close()
        raise
    decoder = Decoder(settings.rate, settings.channels)
    rejected_logged = [0]

    def decode(packet: bytes) -> Optional[np.ndarray]:
        try:
            return np.frombuffer(decoder.decode(packet), dtype=np.int16)
        except OpusError as err:
            rejected_logged[0] += 1
            if rejected_logged[0] <= LOG_FIRST:
                log.warning("Opus rejected a %d-byte packet (%s); concealing", len(packet), err)
            return None

    def conceal(samples: int) -> np.ndarray:
        return np.frombuffer(decoder.conceal(samples), dtype=np.int16)

    playout = Playout(buffer, decode, conceal, settings.rate, settings.channels)
    playback: Optional[Playback] = None
    record_start: Optional[float] = None

    def snapshot() -> Dict[str, Any]:
        r, p = receiver.counters, playout.counters
        return {
            "packets": r.packets,
            "bytes": r.bytes,
            "kbps": round(r.bytes * 8 / r.audio_ms, 2) if r.audio_ms else 0.0,
            "underruns": p.underruns,
            "concealed": p.concealed,
            "dropped": p.dropped,
            "reconnects": receiver.link.reconnects,
            "refused": receiver.link.refused,      # second dialers turned away
            "unproven": receiver.link.unproven,    # dialers without this call's token
            "buffer_ms": p.buffer_summary(),
            "drift_ppm": buffer.drift_ppm(),
            "rejected": p.rejected + r.malformed,
            "zero_length": r.zero_length,
            "stalls": r.stalls,
            "inserted": p.inserted,
            "crossfaded": p.crossfaded,
            "overflow": p.overflow,
            "skipped": p.skipped,
            "wait_ms_mean": p.mean_wait_ms(),
            "underrun_at_s": p.underrun_at_s,
            "frames_played": p.played,
            "device_underruns": playback.underruns if playback else 0,
            "target_ms": round(p.target_ms, 1),
            "jitter_ms": round(p.jitter_ms, 1),
            "buffer_min_ms": settings.buffer,
            "buffer_max_ms": settings.buffer_max,
            "record_files": [str(f) for f in recorder.files] if recorder else [],
            "record_start_unix": record_start,
        }

    exit_code = 0

    def play(run_: ProgramRun) -> None:
        nonlocal record_start
        assert playback is not None
        while not run_.should_stop():
            pcm = playout.next_frame(now_ms()).tobytes()
            if not pcm:
                continue
            recording = recorder is not None and (record_start is not None or playout.playing)
            if recording and record_start is None:
                record_start = playback.play_time_of_next()
            gap = playback.write(pcm)
            if recording:
                assert recorder is not None
                if gap:   # what was heard: the device's silence, then this
                    recorder.write(bytes(gap * settings.channels * 2))
                recorder.write(pcm)

    try:
        playback = Playback(device)
        apply_mixer(MixerSettings(settings.mixer, settings.mixer_device, settings.volume, settings.mute),
                    capture=False)
        with ProgramRun("listen", settings.stats_dir(), settings.duration, snapshot) as run_:
            watcher = threading.Thread(target=_forward_stop, args=(run_, stop), daemon=True)
            watcher.start()
            receiver.thread.start()
            try:
                play(run_)
            except (DeviceError, OSError) as err:
                log.error("playback device %s failed: %s", settings.device, err)
                run_.end(f"device error: {err}")
                exit_code = 1
            stop.set()
            receiver.thread.join(timeout=2.0)
    finally:
        stop.set()
        receiver.close()
        if recorder is not None:
            recorder.close()
        if playback is not None:
            playback.close()
        decoder.close()
    return exit_code


def _forward_stop(run_: ProgramRun, stop: threading.Event) -> None:
    """The run's stop (signal or duration) also stops the receiver thread."""
    while not run_.stop.wait(0.2):
        run_.should_stop()
    stop.set()
