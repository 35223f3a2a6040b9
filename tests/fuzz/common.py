"""What every fuzz target shares: findings, deadlines, the resource watch, the child's main.

A target module defines MAX_LEN, `seeds()` and a Harness (`one(data)`); its
`__main__` calls `child_main`, which hands `one` to libFuzzer. Whatever `one`
raises is a finding: atheris prints the traceback, libFuzzer saves the input
(crash-...) and the child exits non-zero. Beyond exceptions the harnesses raise
Finding subclasses: a call that outlives its deadline (Hang), an outcome that
contradicts the protocol (Wrong), memory or file descriptors that keep growing
after the warm-up (Growth).

Only pi2pi and its Python wrappers (PyTurboJPEG, opuslib) are instrumented for
coverage; libturbojpeg and libopus are not (Debian's builds), so the seed corpus
of real JPEGs and Opus packets is what takes the mutations inside them.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List

import atheris

# Imported inside atheris.instrument_imports(INSTRUMENTED) by each target.
INSTRUMENTED = ["pi2pi", "turbojpeg", "opuslib"]
# A deadline is missed when a call takes this much longer than it (a busy
# 2-core machine stalls a thread for a while; a real hang is unbounded).
SLACK_S = 1.5
# Open file descriptors may differ by this many from the warm-up's count.
FD_MARGIN = 16


class Finding(Exception):
    """A property of the code under test does not hold."""


class Hang(Finding):
    """A call took longer than its deadline."""


class Wrong(Finding):
    """An outcome the protocol rules out (e.g. a wrong proof accepted)."""


class Growth(Finding):
    """Memory or file descriptors keep growing after the warm-up."""


@contextlib.contextmanager
def deadline(limit_s: float, what: str) -> Iterator[None]:
    """Raise Hang when the block takes longer than limit_s (+ SLACK_S), however it ends."""
    started = time.monotonic()
    try:
        yield
    finally:
        took = time.monotonic() - started
        if took > limit_s + SLACK_S:
            raise Hang(f"{what} took {took:.2f} s; its deadline is {limit_s} s")


def rss_mb() -> float:
    """This process's resident memory now (not the peak), in MiB."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Watch:
    """Resident memory and open descriptors: a baseline after `warmup` inputs,
    then every `every` inputs neither may have grown past its bound.

    The warm-up lets caches, the decoders' buffers and libFuzzer's own corpus
    settle; growth after it, over tens of thousands of inputs, is a leak. The
    input that trips the check is not necessarily the culprit: the message says
    so, and the whole run is the reproducer."""

    def __init__(self, warmup: int, growth_mb: float, every: int = 500) -> None:
        self.warmup = max(1, warmup)
        self.growth_mb = growth_mb
        self.every = every
        self.inputs = 0
        self.base_mb = 0.0
        self.base_fds = 0

    def tick(self) -> None:
        self.inputs += 1
        if self.inputs == self.warmup:
            self.base_mb, self.base_fds = rss_mb(), open_fds()
            print(f"fuzz: warm-up rss {self.base_mb:.1f} MB, {self.base_fds} fds after {self.inputs} inputs",
                  file=sys.stderr, flush=True)
        elif self.inputs > self.warmup and self.inputs % self.every == 0:
            self.check()

    def check(self) -> None:
        now_mb, fds = rss_mb(), open_fds()
        print(f"fuzz: rss {now_mb:.1f} MB ({now_mb - self.base_mb:+.1f} since warm-up), {fds} fds "
              f"after {self.inputs} inputs", file=sys.stderr, flush=True)
        if now_mb - self.base_mb > self.growth_mb:
            raise Growth(f"rss grew {now_mb - self.base_mb:.1f} MB between input {self.warmup} and input "
                         f"{self.inputs} (bound {self.growth_mb} MB): a leak somewhere in these inputs, "
                         "not necessarily this one")
        if fds - self.base_fds > FD_MARGIN:
            raise Growth(f"{fds - self.base_fds} more open file descriptors than after the warm-up")


def keep_open(flags: int) -> bool:
    """Whether an input's peer keeps its connection open after its bytes (its last
    read then waits for its deadline): the top three bits of the option byte are
    101, one random byte in eight, so that waiting inputs stay a small share."""
    return flags >> 5 == 0b101


KEEP_OPEN = 0b101 << 5   # an option byte's bits that say keep_open


def xor_onto(correct: bytes, field: bytes) -> bytes:
    """`correct` with `field` XORed onto it, then field's bytes beyond it appended:
    an all-zero field gives the correct message, a mutation a near miss."""
    head = bytes(c ^ f for c, f in zip(correct, field))
    return head + correct[len(head):] + field[len(correct):]


def child_main(make_harness: Callable[[Path], Callable[[bytes], None]]) -> None:
    """libFuzzer's child: `python -m tests.fuzz.TARGET --workdir DIR [--warmup N] [--growth-mb M] -- LIBFUZZER_ARGS`."""
    argv: List[str] = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog=f"python -m {sys.modules['__main__'].__spec__.name}")
    parser.add_argument("--workdir", type=Path, required=True, help="scratch files (the runner removes it)")
    parser.add_argument("--warmup", type=int, default=1000, help="inputs before the resource baseline")
    parser.add_argument("--growth-mb", type=float, default=48.0, help="rss growth allowed after the warm-up")
    args = parser.parse_args(argv[:split])
    args.workdir.mkdir(parents=True, exist_ok=True)
    logging.disable(logging.CRITICAL)   # the code's per-input warnings would flood the log and slow the run
    one = make_harness(args.workdir)
    watch = Watch(args.warmup, args.growth_mb)

    def test_one_input(data: bytes) -> None:
        one(data)
        watch.tick()

    atheris.Setup([sys.argv[0], *argv[split + 1:]], test_one_input)
    atheris.Fuzz()
