"""Signals in, recordings analysed: what a person would check by ear and eye.

- chirp/clicks: test signals with a unique alignment.
- align: the lag of the output against the input (FFT cross-correlation).
- window_lags: the lag of every short window; a missing or repeated stretch
  shows as a step in the lags.
- hard_cuts: discontinuities in the waveform itself (no reference needed): a
  sample-to-sample change far larger than the signal's own curvature allows.
"""
from __future__ import annotations

import wave
from pathlib import Path
from typing import List, Tuple

import numpy as np


def chirp(rate: int, seconds: float, f0: float = 200.0, f1: float = 4000.0, amplitude: float = 12000.0) -> np.ndarray:
    """A logarithmic sweep: every stretch of it is different, so it aligns uniquely."""
    t = np.arange(int(rate * seconds)) / rate
    k = np.log(f1 / f0)
    phase = 2 * np.pi * f0 * seconds / k * (np.exp(t / seconds * k) - 1)
    return (np.sin(phase) * amplitude).astype(np.int16)


def clicks(rate: int, seconds: float, every_s: float = 0.5, amplitude: float = 20000.0,
           first_s: float = 0.25) -> Tuple[np.ndarray, List[int]]:
    """Short windowed 2 kHz bursts (2 ms) at known positions, silence between."""
    x = np.zeros(int(rate * seconds), dtype=np.float64)
    n = int(rate * 0.002)
    burst = np.sin(2 * np.pi * 2000 * np.arange(n) / rate) * np.hanning(n) * amplitude
    onsets = []
    pos = first_s
    while pos + 0.01 < seconds:
        i = int(pos * rate)
        x[i:i + n] += burst
        onsets.append(i)
        pos += every_s
    return x.astype(np.int16), onsets


def read_wav(path: Path) -> Tuple[int, np.ndarray]:
    """(rate, samples) of a 16-bit WAV; stereo is averaged to mono."""
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2, "want 16-bit PCM"
        rate, channels = w.getframerate(), w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return rate, data


def align(ref: np.ndarray, out: np.ndarray) -> Tuple[int, float]:
    """(lag, peak correlation normalised to 0..1): out[n + lag] ~ ref[n]."""
    a = ref.astype(np.float64)
    b = out.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    corr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    # lags 0..len(b)-1 are at the front, negative lags at the back
    corr = np.concatenate([corr[-(len(a) - 1):], corr[:len(b)]])
    lags = np.arange(-(len(a) - 1), len(b))
    best = int(np.argmax(corr))
    norm = np.sqrt(np.sum(a * a) * np.sum(b * b)) or 1.0
    return int(lags[best]), float(corr[best] / norm)


def window_lags(ref: np.ndarray, out: np.ndarray, lag: int, rate: int, window_s: float = 0.05,
                search_s: float = 0.25, min_rms: float = 500.0) -> List[Tuple[int, int, float]]:
    """For each window of ref with sound: (ref position, lag found, correlation).

    A constant lag means every stretch of the input came out once, in order; a
    lag that grows means something was inserted (a gap, concealment), one that
    shrinks means a stretch went missing.
    """
    win = int(rate * window_s)
    search = int(rate * search_s)
    results = []
    for start in range(0, len(ref) - win, win):
        seg = ref[start:start + win].astype(np.float64)
        if np.sqrt(np.mean(seg * seg)) < min_rms:
            continue
        lo = max(0, start + lag - search)
        hi = min(len(out), start + lag + search + win)
        if hi - lo < win:
            continue
        region = out[lo:hi].astype(np.float64)
        size = 1 << int(np.ceil(np.log2(region.size + win)))
        corr = np.fft.irfft(np.fft.rfft(region, size) * np.conj(np.fft.rfft(seg, size)), size)
        corr = corr[:region.size - win + 1]
        best = int(np.argmax(corr))
        energy = np.sqrt(np.sum(seg * seg) * np.sum(region[best:best + win] ** 2)) or 1.0
        results.append((start, lo + best - start, float(corr[best] / energy)))
    return results


def hard_cuts(x: np.ndarray, rate: int, factor: float = 0.5, floor: float = 300.0,
              context_s: float = 0.01) -> List[int]:
    """Sample positions where the waveform jumps: |second difference| > factor x local peak.

    A smooth signal's second difference is at most (2 pi f / rate)^2 of its
    amplitude (0.27 for 4 kHz at 48 kHz); a cut between unrelated stretches is of
    the order of the amplitude itself. Jumps below `floor` (quiet) are ignored.
    """
    y = x.astype(np.float64)
    if len(y) < 3:
        return []
    d2 = np.abs(y[2:] - 2 * y[1:-1] + y[:-2])
    n = max(1, int(rate * context_s))
    # local peak amplitude: running max of |x| over +-n samples
    padded = np.pad(np.abs(y), n, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * n + 1)
    peak = windows.max(axis=1)[1:-1]
    suspicious = np.nonzero((d2 > factor * peak) & (d2 > floor))[0]
    cuts: List[int] = []
    for i in suspicious:
        if not cuts or i + 1 - cuts[-1] > n:
            cuts.append(int(i + 1))
    return cuts


def onsets(x: np.ndarray, threshold: float, holdoff: int) -> List[int]:
    """Sample positions where |x| first exceeds threshold after `holdoff` quiet samples."""
    above = np.nonzero(np.abs(x.astype(np.int32)) > threshold)[0]
    found: List[int] = []
    for i in above:
        if not found or i - found[-1] > holdoff:
            found.append(int(i))
    return found
