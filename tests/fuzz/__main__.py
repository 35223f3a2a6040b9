"""python -m tests.fuzz TARGET [--runs N]: one fuzz target under libFuzzer, summed up.

Writes the target's seed corpus and its saved regressions (tests/fuzz/regressions/
TARGET/) into a temporary directory, runs `python -m tests.fuzz.TARGET` with
libFuzzer's -runs, -max_len, -timeout and -rss_limit_mb, shows its progress lines
and ends with one line: `fuzz TARGET: ok, N runs in S s (E exec/s), rss ...` or
`fuzz TARGET: FINDING ...`, where the input that failed is kept (default under
/tmp/pi2pi-fuzz-findings/TARGET/) with libFuzzer's log beside it. Exit status:
0 when the run found nothing. `--replay FILE...` runs saved inputs once each.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("video", "audio", "handshake")
REGRESSIONS = Path(__file__).with_name("regressions")
SHOWN = re.compile(r"^(#\d+\s+(INITED|pulse|DONE)|fuzz: warm-up|Done \d+ runs|INFO: seed corpus)")


def load(target: str) -> ModuleType:
    """The target's module (atheris's "INFO: Instrumenting ..." lines left out)."""
    with contextlib.redirect_stderr(io.StringIO()):
        return importlib.import_module(f"tests.fuzz.{target}")


def write_corpus(module: ModuleType, target: str, corpus: Path) -> int:
    """The target's seeds and saved regressions as files; returns how many."""
    corpus.mkdir(parents=True)
    seeds: Dict[str, bytes] = module.seeds()
    for name, data in seeds.items():
        (corpus / f"seed-{name}").write_bytes(data)
    saved = sorted((REGRESSIONS / target).glob("*")) if (REGRESSIONS / target).is_dir() else []
    for path in saved:
        shutil.copy(path, corpus / f"regression-{path.name}")
    return len(seeds) + len(saved)


def final_stats(log: List[str]) -> Dict[str, float]:
    """libFuzzer's -print_final_stats lines and the harness's resource lines."""
    found: Dict[str, float] = {}
    for line in log:
        match = re.match(r"stat::(\w+):\s+(\d+)", line)
        if match:
            found[match.group(1)] = float(match.group(2))
        match = re.match(r"fuzz: (warm-up )?rss ([\d.]+) MB", line)
        if match:
            found["warmup_rss_mb" if match.group(1) else "last_rss_mb"] = float(match.group(2))
    return found


def keep_finding(target: str, artifacts: Path, log: List[str], findings: Path) -> List[Path]:
    findings.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (findings / f"{stamp}.log").write_text("".join(log))
    kept = []
    for path in sorted(artifacts.glob("*")):
        kept.append(Path(shutil.copy(path, findings / f"{stamp}-{path.name}")))
    return kept


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=TARGETS + ("selftest",))
    parser.add_argument("--runs", type=int, default=100_000, help="inputs to run (libFuzzer -runs)")
    parser.add_argument("--max-len", type=int, default=None, help="longest input (default: the target's MAX_LEN)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take (libFuzzer -timeout)")
    parser.add_argument("--rss-limit-mb", type=int, default=1024, help="libFuzzer -rss_limit_mb")
    parser.add_argument("--warmup", type=int, default=None,
                        help="inputs before the rss baseline (default: a fifth of the runs, at most 5000)")
    parser.add_argument("--growth-mb", type=float, default=48.0, help="rss growth allowed after the warm-up")
    parser.add_argument("--seed", type=int, default=0, help="libFuzzer -seed (0: a random one)")
    parser.add_argument("--findings", type=Path, default=None,
                        help="where a failing input is kept (default /tmp/pi2pi-fuzz-findings/TARGET)")
    parser.add_argument("--replay", type=Path, nargs="+", default=None, help="run these inputs once each")
    parser.add_argument("-v", "--verbose", action="store_true", help="show every line libFuzzer prints")
    args = parser.parse_args(argv)
    module = load(args.target)
    max_len = args.max_len or module.MAX_LEN
    warmup = args.warmup if args.warmup is not None else max(1, min(5000, args.runs // 5))
    findings = args.findings or Path(tempfile.gettempdir()) / "pi2pi-fuzz-findings" / args.target
    with tempfile.TemporaryDirectory(prefix=f"pi2pi-fuzz-{args.target}-") as tmp:
        work, artifacts, corpus = Path(tmp) / "work", Path(tmp) / "artifacts", Path(tmp) / "corpus"
        artifacts.mkdir()
        if args.replay:
            inputs = [str(path.resolve()) for path in args.replay]
            count = len(inputs)
        else:
            count = write_corpus(module, args.target, corpus)
            inputs = [f"-runs={args.runs}", str(corpus)]
        command = [sys.executable, "-m", f"tests.fuzz.{args.target}", "--workdir", str(work),
                   "--warmup", str(warmup), "--growth-mb", str(args.growth_mb), "--",
                   f"-max_len={max_len}", f"-timeout={args.timeout}", f"-rss_limit_mb={args.rss_limit_mb}",
                   f"-artifact_prefix={artifacts}/", "-print_final_stats=1", f"-seed={args.seed}", *inputs]
        print(f"fuzz {args.target}: {'replaying' if args.replay else 'seeds and regressions:'} {count} inputs; "
              f"{'' if args.replay else f'{args.runs} runs, '}max_len {max_len}", flush=True)
        started = time.monotonic()
        log: List[str] = []
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # unwind: the child is killed below
        child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert child.stdout is not None
            for line in child.stdout:
                log.append(line)
                if args.verbose or SHOWN.match(line):
                    print(line, end="", flush=True)
            code = child.wait()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        took = time.monotonic() - started
        stats = final_stats(log)
        if code != 0:
            print("".join(log[-60:]), end="")
            kept = keep_finding(args.target, artifacts, log, findings)
            for path in kept:
                print(f"fuzz {args.target}: input kept as {path} ({path.stat().st_size} bytes): "
                      f"{path.read_bytes()[:64].hex()}{'...' if path.stat().st_size > 64 else ''}")
            print(f"fuzz {args.target}: FINDING (exit status {code}) after {took:.1f} s; log in {findings}; "
                  f"reproduce with: python -m tests.fuzz {args.target} --replay FILE")
            return 1
    runs = int(stats.get("number_of_executed_units", 0))
    rate = runs / took if took > 0 else 0.0
    rss = (f"rss {stats.get('warmup_rss_mb', 0):.0f} MB after warm-up, {stats.get('last_rss_mb', 0):.0f} MB "
           f"at the last check, peak {stats.get('peak_rss_mb', 0):.0f} MB") if not args.replay else ""
    slowest = f"; slowest input {stats.get('slowest_unit_time_sec', 0):.0f} s" if not args.replay else ""
    print(f"fuzz {args.target}: ok, {runs} runs in {took:.1f} s ({rate:.0f} exec/s){slowest}; {rss}".rstrip("; "),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
