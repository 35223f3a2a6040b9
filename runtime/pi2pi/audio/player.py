"""listen's work: TCP -> jitter buffer -> Opus decode/conceal -> ALSA (and WAV).

Two threads: the receiver reads packets off the connection (and waits for the
next one when a peer goes) and pushes them into the jitter buffer; the player,
clocked by the output device, takes one frame at a time from the playout.

The call's speaker volume (controls.py) scales the PCM the playout chose, just
before it is played and recorded: the recording holds what is heard, and the
playout still judges pauses by the signal as it came (at volume 0 every frame
would look silent and be trimmed at will).

A peer is dropped when it sends nothing for --stall-s, pauses --stall-s inside a
packet, or does not finish a packet (length byte and packet) within --stall-s
of its first byte, and after MAX_BAD_IN_A_ROW unplayable packets. A listening
listen whose peer dials again (proving the call's token) drops the connection it
serves at once and plays from the new one (net.PeerLink). A stop request ends
even a half-read packet within 0.2 s (wire.Stopped, lifecycle.py).
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from pi2pi import controls, net, wire
from pi2pi.audio.alsa_io import DeviceError, DeviceSettings, MixerSettings, Playback, apply_mixer
from pi2pi.audio.codec import Decoder, OpusError
from pi2pi.audio.gain import Gain
from pi2pi.audio.jitter import JitterBuffer, JitterSettings, Playout, opus_packet_ms
from pi2pi.audio.recording import Recorder
from pi2pi.audio.settings import ListenSettings
from pi2pi.lifecycle import WORKER_JOIN_S, ProgramRun

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
    def __init__(self, settings: ListenSettings, link: net.PeerLink, buffer: JitterBuffer,
                 stop: threading.Event) -> None:
        self.settings = settings
        self.buffer = buffer
        self.stop = stop
        self.counters = ReceiveCounters()
        self.link = link

    def loop(self) -> None:
        while not self.stop.is_set():
            sock = self.link.next_peer(self.stop)
            if sock is None:
                return
            self.buffer.new_stream()
            try:
                self._serve(sock)
            finally:
                sock.close()
                self.link.lost()   # a dialer that lost its peer at once backs off (net.PeerLink)

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
                packet = wire.read_audio_frame(sock, self.settings.stall_s, first_wait_s=IDLE_POLL_S, stop=self.stop)
            except wire.Stopped:
                return
            except socket.timeout:
                if self.link.superseded():   # the peer dialed again: this connection is dead
                    return
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
            if c.packets % 50 == 0 and self.link.superseded():
                return


def run(settings: ListenSettings) -> int:
    token = net.load_token(settings.token_file)
    device = DeviceSettings(settings.device, settings.rate, settings.channels,
                            settings.period_ms, settings.periods, settings.pace)
    buffer = JitterBuffer(JitterSettings(min_ms=settings.buffer, max_ms=settings.buffer_max))
    state: Dict[str, Any] = {"receiver": None, "playout": None, "playback": None, "recorder": None,
                             "record_start": None}
    watch = controls.Watch(settings.stats_dir())

    def snapshot() -> Dict[str, Any]:
        receiver, playback, recorder = state["receiver"], state["playback"], state["recorder"]
        p = state["playout"].counters if state["playout"] else None
        r = receiver.counters if receiver else ReceiveCounters()
        link = receiver.link if receiver else None
        fields: Dict[str, Any] = {
            "packets": r.packets,
            "bytes": r.bytes,
            "kbps": round(r.bytes * 8 / r.audio_ms, 2) if r.audio_ms else 0.0,
            "reconnects": link.reconnects if link else 0,
            "refused": link.refused if link else 0,      # dialers turned away (no token, or too many at once)
            "unproven": link.unproven if link else 0,    # dialers without this call's token
            "drift_ppm": buffer.drift_ppm(),
            "zero_length": r.zero_length,
            "stalls": r.stalls,
            "device": settings.device,
            "device_underruns": playback.underruns if playback else 0,
            "buffer_min_ms": settings.buffer,
            "buffer_max_ms": settings.buffer_max,
            "record_files": [str(f) for f in recorder.files] if recorder else [],
            "record_start_unix": state["record_start"],
            "volume": watch.controls.volume,
        }
        if p is None:
            return {**fields, "underruns": 0, "concealed": 0, "dropped": 0, "rejected": r.malformed,
                    "buffer_ms": {"mean": 0.0, "max": 0.0}}
        return {
            **fields,
            "underruns": p.underruns,
            "concealed": p.concealed,
            "dropped": p.dropped,
            "buffer_ms": p.buffer_summary(),
            "rejected": p.rejected + r.malformed,
            "inserted": p.inserted,
            "crossfaded": p.crossfaded,
            "overflow": p.overflow,
            "flooded": buffer.flooded,   # packets dropped on arrival from a peer sending too fast
            "skipped": p.skipped,
            "wait_ms_mean": p.mean_wait_ms(),
            "underrun_at_s": p.underrun_at_s,
            "frames_played": p.played,
            "target_ms": round(p.target_ms, 1),
            "jitter_ms": round(p.jitter_ms, 1),
        }

    def live() -> Dict[str, Any]:
        receiver = state["receiver"]
        p = state["playout"].counters if state["playout"] else None
        link = receiver.link if receiver else None
        packets = receiver.counters.packets if receiver else 0
        return {"state": link.state() if link else "starting", "peer": link.peer if link else None,
                "flowing": packets > 0, "packets": packets,
                "bytes": receiver.counters.bytes if receiver else 0,
                "underruns": p.underruns if p else 0, "concealed": p.concealed if p else 0,
                "fill_ms": round(buffer.fill_ms(), 1), "reconnects": link.reconnects if link else 0,
                "volume": watch.controls.volume}

    with ProgramRun("listen", settings.stats_dir(), settings.duration, snapshot,
                    live=live if settings.live else None) as run_:
        link = net.PeerLink(settings.connect, settings.listen, token, "audio")
        decoder: Optional[Decoder] = None
        try:
            if settings.record:
                state["recorder"] = Recorder(settings.record, settings.rate, settings.channels,
                                             settings.record_split)
            receiver = state["receiver"] = Receiver(settings, link, buffer, run_.stop)
            decoder = Decoder(settings.rate, settings.channels)
            playout = state["playout"] = make_playout(buffer, decoder, settings)
            playback = state["playback"] = Playback(device)
            apply_mixer(MixerSettings(settings.mixer, settings.mixer_device, settings.volume, settings.mute),
                        capture=False)
            thread = run_.worker(receiver.loop, "receiver")
            try:
                play(playout, playback, state, watch, run_)
            except (DeviceError, OSError) as err:
                log.error("playback device %s failed: %s", settings.device, err)
                run_.end(f"device error: {err}")
                return 1
            finally:
                run_.stop.set()
                thread.join(timeout=WORKER_JOIN_S)
            return 0
        finally:
            link.close()
            for name in ("recorder", "playback"):
                if state[name] is not None:
                    state[name].close()
            if decoder is not None:
                decoder.close()


def make_playout(buffer: JitterBuffer, decoder: Decoder, settings: ListenSettings) -> Playout:
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

    return Playout(buffer, decode, conceal, settings.rate, settings.channels)


def play(playout: Playout, playback: Playback, state: Dict[str, Any], watch: controls.Watch,
         run_: ProgramRun) -> None:
    """Play (and record) until the run stops, clocked by the output device."""
    recorder: Optional[Recorder] = state["recorder"]
    channels = playback.settings.channels
    speaker = Gain(channels)
    while not run_.stop.is_set():
        frame = playout.next_frame(now_ms())
        pcm = speaker.apply(frame, watch.poll().volume / 100.0).tobytes()
        if not pcm:
            continue
        recording = recorder is not None and (state["record_start"] is not None or playout.playing)
        if recording and state["record_start"] is None:
            state["record_start"] = playback.play_time_of_next()
        gap = playback.write(pcm)
        if recording:
            assert recorder is not None
            if gap:   # what was heard: the device's silence, then this
                recorder.write(bytes(gap * channels * 2))
            recorder.write(pcm)
