"""Each fuzz target, short: a few thousand inputs under libFuzzer (`python -m tests.fuzz`).

Each run starts from the target's seeds and its saved regressions
(tests/fuzz/regressions/TARGET/), so every input that once found a bug is
replayed here. The counts keep the three runs under a minute together on the
2-core test machine (`make fuzz` runs 100 000 each). The planted-bug target
proves that a finding fails a run and that its input is kept and replays.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHORT_RUNS = {"video": 5000, "audio": 2000, "handshake": 4000}


def fuzz(args: List[str], timeout_s: float = 240.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.fuzz", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s)


@pytest.mark.parametrize("target", sorted(SHORT_RUNS))
def test_short_fuzz_run_finds_nothing(target: str, tmp_path: Path) -> None:
    runs = SHORT_RUNS[target]
    result = fuzz([target, "--runs", str(runs), "--findings", str(tmp_path / "findings")])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    done = re.search(rf"^fuzz {target}: ok, (\d+) runs", result.stdout, re.M)
    assert done and int(done.group(1)) >= runs, result.stdout[-3000:]
    assert "fuzz: warm-up rss" in result.stdout


def test_a_planted_bug_fails_the_run_and_its_input_replays(tmp_path: Path) -> None:
    findings = tmp_path / "findings"
    result = fuzz(["selftest", "--runs", "1000000", "--findings", str(findings)])
    assert result.returncode == 1, result.stdout[-3000:]
    assert "fuzz selftest: FINDING" in result.stdout and "planted bug" in result.stdout
    kept = sorted(findings.glob("*-crash-*"))
    assert len(kept) == 1 and kept[0].read_bytes()[:4] == b"P2PX"
    replay = fuzz(["selftest", "--replay", str(kept[0]), "--findings", str(tmp_path / "again")])
    assert replay.returncode == 1 and "planted bug" in replay.stdout
