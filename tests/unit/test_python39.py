"""The runtime must run on Python 3.9 (Raspberry Pi OS 11, the last with the
legacy camera stack) although only 3.11 is installed here: vermin reads the
source and names the lowest Python each construct needs."""
import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "runtime" / "pi2pi"


def test_runtime_needs_no_python_newer_than_3_9() -> None:
    vermin = Path(sys.executable).with_name("vermin")
    result = subprocess.run(
        [str(vermin), "--no-tips", "--violations", "-t=3.9-", "--eval-annotations",
         "--backport", "dataclasses", "--no-parse-comments", str(RUNTIME)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, f"constructs newer than 3.9:\n{result.stdout}{result.stderr}"
