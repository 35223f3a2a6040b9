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


def python39() -> "str | None":
    """A working 3.9 interpreter where the machine has one (pyenv ships one here)."""
    import glob
    import shutil
    candidates = sorted(glob.glob("/root/.pyenv/versions/3.9*/bin/python3.9")) + [shutil.which("python3.9") or ""]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "--version"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.startswith("Python 3.9"):
            return candidate
    return None


def test_runtime_compiles_and_starts_on_a_real_python_3_9(tmp_path) -> None:
    interpreter = python39()
    if interpreter is None:
        import pytest
        pytest.skip("no Python 3.9 interpreter on this machine; the vermin check above still guards 3.9")
    conf = tmp_path / "pi2pi.conf"
    conf.write_text("")
    result = subprocess.run(
        [interpreter, "-c",
         "import sys, compileall; sys.path.insert(0, sys.argv[1]);"
         "ok = compileall.compile_dir(sys.argv[1] + '/pi2pi', quiet=1, legacy=False, force=True);"
         "from pi2pi.cli import main; sys.exit(0 if ok and main(['config', '--config', sys.argv[2], '--check']) == 0 else 1)",
         str(RUNTIME.parent), str(conf)],
        capture_output=True, text=True, env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
