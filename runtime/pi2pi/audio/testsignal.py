"""A test signal that names the sending host: the audio twin of the video test
pattern (video/testpattern.py). `talk --device testsignal` sends it instead of a
microphone, and a test reads the host's name back with `read_label` from what
the far `listen` recorded, after Opus, loss concealment and the jitter buffer.

The label is the host name cut to HOST_CHARS (16, the test pattern's cut)
characters and uppercased, as the test pattern draws it; a character outside
ALPHABET becomes '?' (`label_text`).

Format (times exact at 48 kHz; at other rates each part is rounded to whole samples):

- Every symbol is one sine tone, -12 dBFS peak (amplitude 8231), starting at
  phase 0, with 5 ms raised-cosine ramps at both ends (no clicks). Symbol k
  (0..43) is 500 + 62.5 * k Hz: 500 .. 3187.5 Hz, inside a voice codec's band;
  62.5 Hz is where the reader's 32 ms Hann window has its first null.
- Symbols 0..39 are the characters of ALPHABET,
  "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._?" in that order, and also the
  check values 0..39; symbol 40 is check value 40; 41 is REP (the value before
  it once more), 42 is SYNC, 43 is END.
- One repetition: SYNC, 160 ms; then one 100 ms tone per value: the n
  characters' values v_1..v_n, then c1 = sum(v_i + 1) mod 41 and
  c2 = sum(i * (v_i + 1)) mod 41 (i = 1..n); then END, 100 ms. A value equal
  to the one before it is sent as REP instead, unless that one was itself sent
  as REP ("RRR" is R, REP, R), so two neighbouring tones always differ and a
  reader never counts repeats by time. Every tone is followed by 30 ms of
  silence, END by 300 ms. Then the next repetition, forever.
- A repetition lasts 460 + (n + 3) * 130 ms: 1.37 s for "gwpi", 1.50 s for
  "natpi", 2.41 s for "raspberrypi5", 2.93 s at most (16 characters).

Reading (`read_label`): 32 ms Hann windows every 10 ms, each measured at the
44 frequencies. A window holds symbol k when k is its strongest frequency,
carrying at least 60% of the window's energy (a clean tone measures ~1.0 after
Opus at 24 kbit/s; noise, speech and off-grid tones far less), and it is louder
than -55 dBFS. Runs of one symbol shorter than 20 ms are dropped, and so is a
run shorter than 50 ms that starts within 30 ms of a run of its frequency
neighbour (Opus concealment drifting down from the tone it continues); pieces of
one symbol are joined. A data run longer than 160 ms (a steady tone) or a SYNC
outside 80..220 ms breaks a repetition. SYNC, values, END is a whole
repetition, which counts only when both checks hold; the label is returned
when at least one does and all that do agree, else None.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from pi2pi.video.testpattern import HOST_CHARS

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._?"
CHECK_MOD = 41                      # prime: the weighted check catches any swap of two characters
REP, SYNC, END = 41, 42, 43
SYMBOLS = 44
BASE_HZ, STEP_HZ = 500.0, 62.5
AMPLITUDE = 8231                    # -12 dBFS peak
RAMP_S = 0.005
SYNC_S, TONE_S, GAP_S, PAUSE_S = 0.160, 0.100, 0.030, 0.300

# The reader's analysis.
WINDOW_S = 2.0 / STEP_HZ            # 32 ms: a Hann window's first null falls on the neighbouring symbol
HOP_S = 0.010
PURITY = 0.6                        # share of a window's energy at the best symbol frequency
FLOOR_DBFS = -55.0                  # quieter windows are silence
MIN_RUN_S = 0.020                   # shorter runs are glitches (transitions, concealment tails)
GLITCH_S = 0.050                    # a shorter run right after its frequency neighbour is concealment drifting
MAX_TONE_S = TONE_S + 0.060         # a symbol continued by up to three concealed 20 ms frames
SYNC_RUN_S = (SYNC_S / 2, SYNC_S + 0.060)


def frequency(symbol: int) -> float:
    return BASE_HZ + STEP_HZ * symbol


def label_text(label: str) -> str:
    """The label as the signal carries it: cut to HOST_CHARS, uppercase, unknown characters '?'."""
    out = []
    for ch in label[:HOST_CHARS]:
        up = ch.upper()
        out.append(up if len(up) == 1 and up in ALPHABET else "?")
    return "".join(out)


def check_values(values: Sequence[int]) -> Tuple[int, int]:
    c1 = sum(v + 1 for v in values) % CHECK_MOD
    c2 = sum(i * (v + 1) for i, v in enumerate(values, start=1)) % CHECK_MOD
    return c1, c2


def symbols_for(text: str) -> List[int]:
    """One repetition's symbols for an already normalised label (see label_text)."""
    values = [ALPHABET.index(ch) for ch in text]
    values.extend(check_values(values))
    sent: List[int] = [SYNC]
    for i, v in enumerate(values):
        sent.append(REP if i and v == values[i - 1] and sent[-1] != REP else v)
    sent.append(END)
    return sent


def _tone(symbol: int, seconds: float, rate: int) -> np.ndarray:
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    wave = np.sin(2 * np.pi * frequency(symbol) * t)
    ramp = min(int(round(RAMP_S * rate)), n // 2)
    if ramp:
        rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        wave[:ramp] *= rise
        wave[n - ramp:] *= rise[::-1]
    return wave * AMPLITUDE


def period(text: str, rate: int) -> np.ndarray:
    """One repetition as int16 mono samples."""
    parts: List[np.ndarray] = []
    for symbol in symbols_for(text):
        parts.append(_tone(symbol, SYNC_S if symbol == SYNC else TONE_S, rate))
        parts.append(np.zeros(int(round((PAUSE_S if symbol == END else GAP_S) * rate))))
    return np.round(np.concatenate(parts)).astype(np.int16)


class TestSignal:
    """Interleaved S16_LE frames of the repeating signal naming `label`, every channel the same."""

    __test__ = False   # not a pytest test class despite the name

    def __init__(self, label: str, rate: int, channels: int) -> None:
        if rate < 8000:
            raise ValueError(f"test signal rate {rate}: want at least 8000 Hz")
        if channels < 1:
            raise ValueError(f"test signal channels {channels}: want at least 1")
        self.text = label_text(label)
        if not self.text:
            raise ValueError("test signal: the label is empty")
        self.rate, self.channels = rate, channels
        mono = period(self.text, rate)
        self.period_samples = mono.size
        self._bytes_per_frame = 2 * channels
        self._pcm = np.repeat(mono, channels).astype("<i2").tobytes()
        self._pos = 0   # in bytes, always a whole sample frame

    @property
    def period_s(self) -> float:
        return self.period_samples / self.rate

    def frame(self, samples: int) -> bytes:
        """The next `samples` sample frames, continuing where the last call stopped."""
        if samples < 0:
            raise ValueError(f"negative sample count {samples}")
        need = samples * self._bytes_per_frame
        pcm, pos = self._pcm, self._pos
        if pos + need <= len(pcm):           # the usual case: one slice
            self._pos = (pos + need) % len(pcm)
            return pcm[pos:pos + need]
        parts = []
        while need:
            take = min(need, len(pcm) - pos)
            parts.append(pcm[pos:pos + take])
            need -= take
            pos = (pos + take) % len(pcm)
        self._pos = pos
        return b"".join(parts)


def _classify(x: np.ndarray, rate: int) -> np.ndarray:
    """Per 10 ms hop: the symbol a 32 ms window holds, or -1 (silence, noise, a mixture)."""
    win_n, hop_n = int(round(WINDOW_S * rate)), int(round(HOP_S * rate))
    if x.size < win_n:
        return np.zeros(0, dtype=np.int64)
    hops = (x.size - win_n) // hop_n + 1
    window = np.hanning(win_n + 2)[1:-1]
    # The symbols sit on FFT bins (every other one from bin 16) whenever rate * 32 ms is whole,
    # as it is at every Opus rate; elsewhere the nearest bin is a fraction of a bin off.
    bins = np.rint((BASE_HZ + STEP_HZ * np.arange(SYMBOLS)) * win_n / rate).astype(np.int64)
    gain = window.sum() ** 2 / (2 * (window ** 2).sum())   # |X|^2 / energy of a pure tone on a symbol
    floor = (10 ** (FLOOR_DBFS / 10)) * 32768.0 ** 2 * (window ** 2).sum()
    frames = np.lib.stride_tricks.as_strided(x, shape=(hops, win_n), strides=(x.strides[0] * hop_n, x.strides[0]))
    out = np.full(hops, -1, dtype=np.int64)
    for start in range(0, hops, 512):     # chunks bound the memory of long recordings
        chunk = frames[start:start + 512]
        chunk = (chunk - chunk.mean(axis=1, keepdims=True)) * window
        power = np.abs(np.fft.rfft(chunk, axis=1)[:, bins]) ** 2
        energy = (chunk ** 2).sum(axis=1)
        best = power.argmax(axis=1)
        purity = power[np.arange(best.size), best] / np.maximum(energy, 1e-9) / gain
        ok = (energy >= floor) & (purity >= PURITY)
        out[start:start + chunk.shape[0]] = np.where(ok, best, -1)
    return out


def _runs(classes: np.ndarray) -> List[Tuple[int, int]]:
    """(symbol, length in hops) of each run: glitches dropped, a symbol's pieces joined."""
    min_hops = int(round(MIN_RUN_S / HOP_S))
    glitch_hops = int(round(GLITCH_S / HOP_S))
    runs: List[Tuple[int, int, int]] = []    # symbol, first hop, last hop
    i, n = 0, classes.size
    while i < n:
        c = int(classes[i])
        j = i
        while j + 1 < n and classes[j + 1] == c:
            j += 1
        if c >= 0 and j - i + 1 >= min_hops:
            if runs and runs[-1][0] == c:      # the signal never sends a symbol twice in a row
                runs[-1] = (c, runs[-1][1], j)
            elif (runs and abs(c - runs[-1][0]) == 1 and j - i + 1 < glitch_hops
                  and i - runs[-1][2] <= 3):
                pass    # concealment drifting off the tone before it: not a symbol
            else:
                runs.append((c, i, j))
        i = j + 1
    return [(c, last - first + 1) for c, first, last in runs]


def _decode(sent: Sequence[int]) -> Optional[str]:
    values: List[int] = []
    for i, s in enumerate(sent):
        if s == REP:
            if i == 0 or sent[i - 1] == REP:
                return None
            values.append(values[-1])
        else:
            values.append(s)
    if len(values) < 3:
        return None
    chars, checks = values[:-2], tuple(values[-2:])
    if any(v >= len(ALPHABET) for v in chars) or check_values(chars) != checks:
        return None
    return "".join(ALPHABET[v] for v in chars)


def decode_repetitions(pcm: np.ndarray, rate: int) -> List[Optional[str]]:
    """Every whole repetition (SYNC ... END) found, in order: its label, or None if its checks fail."""
    x = np.asarray(pcm)
    if x.ndim == 2:
        x = x.mean(axis=1)
    x = np.ascontiguousarray(x, dtype=np.float64)
    max_tone = MAX_TONE_S / HOP_S + 0.5
    sync_min, sync_max = SYNC_RUN_S[0] / HOP_S, SYNC_RUN_S[1] / HOP_S + 0.5
    found: List[Optional[str]] = []
    current: Optional[List[int]] = None
    for symbol, length in _runs(_classify(x, rate)):
        if symbol == SYNC:
            current = [] if sync_min <= length <= sync_max else None
        elif current is None:
            continue
        elif length > max_tone or len(current) > HOST_CHARS + 2:
            current = None                  # a steady tone or an overlong message: not this signal
        elif symbol == END:
            found.append(_decode(current))
            current = None
        else:
            current.append(symbol)
    return found


def read_label(pcm: np.ndarray, rate: int) -> Optional[str]:
    """The label (as label_text gives it) a recording of the signal names, or None.

    `pcm` is int16 mono samples (a (samples, channels) array is mixed to
    mono). At least one whole repetition must pass its checks, and all that
    pass must agree; anything else (silence, noise, some other sound, only part
    of a repetition, conflicting names) gives None.
    """
    labels = {label for label in decode_repetitions(pcm, rate) if label is not None}
    return labels.pop() if len(labels) == 1 else None
