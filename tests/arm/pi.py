"""An emulated Pi: a cached Debian root for an ARM architecture (root.sh),
entered with chroot and run through qemu-user (binfmt_misc).

Each EmulatedPi lays a writable overlay over the cached root (the cache is
never written), mounts /proc and /dev, and binds one host directory at the
same path inside, so a test's files (framebuffer, recordings, stats, ALSA
config) have one path for the host's checks and the Pi's programs alike.
The runtime goes in exactly as the runtime role installs it on a Pi: its own
commands, read from roles/runtime, run inside the root without the package
index.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import jinja2
import yaml

log = logging.getLogger("arm")

REPO = Path(__file__).resolve().parents[2]
ROOT_SCRIPT = Path(__file__).with_name("root.sh")
ROLE = REPO / "roles" / "runtime"
VENV = "/opt/pi2pi/venv"   # the runtime role's runtime_venv
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cached_root(suite: str, arch: str, kind: str = "runtime", timeout_s: float = 1800) -> Path:
    """The cached root of SUITE for ARCH with KIND's packages, built first when the cache lacks it."""
    done = subprocess.run([str(ROOT_SCRIPT), suite, arch, kind], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"root.sh {suite} {arch} {kind} failed:\n{done.stderr[-4000:]}")
    for line in done.stderr.splitlines():
        log.info("%s", line)
    return Path(done.stdout.strip())


def role_value(name: str, values: Dict[str, str]) -> str:
    """A runtime role default, rendered with `values` (the Pi's paths)."""
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    return jinja2.Template(str(defaults[name])).render(**values)


def role_install_commands() -> List[str]:
    """The role's own shell commands that make the venv and install the wheelhouse (tasks/venv.yml)."""
    values = {"runtime_python": role_value("runtime_python", {}), "runtime_home": role_value("runtime_home", {})}
    values["runtime_venv"] = role_value("runtime_venv", values)
    values["runtime_pi_wheelhouse"] = role_value("runtime_pi_wheelhouse", values)
    tasks = {task["name"]: task for task in yaml.safe_load((ROLE / "tasks" / "venv.yml").read_text())}
    create = tasks["Create the venv (with Debian's numpy from system site packages)"]["ansible.builtin.command"]["cmd"]
    install = tasks["Install the runtime and its dependencies from the wheelhouse"]["ansible.builtin.shell"]
    return [jinja2.Template(command).render(**values) for command in (create, install)]


class EmulatedPi:
    """A writable copy of a cached root, mounted under `work`; `shared` appears at its own path inside."""

    def __init__(self, suite: str, arch: str, lower: Path, work: Path, shared: Path) -> None:
        self.suite, self.arch = suite, arch
        self.root = work / "root"
        self.installed: List[subprocess.CompletedProcess] = []   # install_runtime's commands, as they ended
        self._mounts: List[Path] = []
        upper, scratch = work / "upper", work / "scratch"
        for directory in (self.root, upper, scratch):
            directory.mkdir(parents=True, exist_ok=True)
        try:
            self._mount(["-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={scratch}"],
                        self.root)
            self._mount(["-t", "proc", "proc"], self.root / "proc")
            self._mount(["--bind", "/dev"], self.root / "dev")
            inside = self.root / shared.relative_to("/")
            inside.mkdir(parents=True, exist_ok=True)
            self._mount(["--bind", str(shared)], inside)
            # The host's resolver, for a set-up that reaches the package registries.
            shutil.copy("/etc/resolv.conf", self.root / "etc" / "resolv.conf")
        except BaseException:
            self.close()
            raise

    def _mount(self, args: List[str], target: Path) -> None:
        subprocess.run(["mount", *args, str(target)], check=True)
        self._mounts.append(target)

    def close(self) -> None:
        for target in reversed(self._mounts):
            subprocess.run(["umount", "--lazy", str(target)], check=False)
        self._mounts.clear()

    def command(self, argv: Sequence[str], cwd: str = "/") -> List[str]:
        """argv run inside the root (in `cwd` there), by the kernel through qemu-user."""
        return ["chroot", str(self.root), "/usr/bin/env", f"--chdir={cwd}", f"PATH={PATH}", *argv]

    def pi2pi(self) -> List[str]:
        """The installed runtime's command, as a Pi's user runs it."""
        return self.command([f"{VENV}/bin/pi2pi"])

    def run(self, argv: Sequence[str], timeout_s: float = 600, env: Optional[Dict[str, str]] = None,
            cwd: str = "/") -> subprocess.CompletedProcess:
        """Run argv inside the root; the result keeps its output (text)."""
        start = time.monotonic()
        done = subprocess.run(self.command(argv, cwd), capture_output=True, text=True, timeout=timeout_s,
                              env=env or {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8"})
        log.info("%s %s: %s: exit %s in %.0f s", self.suite, self.arch, " ".join(argv)[:120], done.returncode,
                 time.monotonic() - start)
        return done

    def shell(self, script: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
        return self.run(["/bin/sh", "-c", script], timeout_s)

    def install_runtime(self, wheelhouse: Path) -> List[subprocess.CompletedProcess]:
        """The runtime role's venv step: the wheelhouse copied in, its commands run, offline."""
        target = self.root / "opt" / "pi2pi" / "wheelhouse"
        shutil.copytree(wheelhouse, target)
        results = []
        for command in role_install_commands():
            done = self.shell(command, timeout_s=1200)
            results.append(done)
            if done.returncode != 0:
                break
        return results

    def trust_this_machines_registries(self) -> Dict[str, str]:
        """This machine's own way to the package registries, carried into the root: its local
        CA certificates (ca-certificates adds them to the root's bundle when apt installs it)
        and its pip and proxy settings. The environment to run a set-up with."""
        local_cas = Path("/usr/local/share/ca-certificates")
        if local_cas.is_dir():
            shutil.copytree(local_cas, self.root / local_cas.relative_to("/"), dirs_exist_ok=True)
        passed = ("PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_INDEX_URL", "http_proxy", "https_proxy",
                  "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY")
        return {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8",
                **{name: value for name, value in os.environ.items() if name in passed}}

    def python(self, code: str) -> str:
        """What the Pi's own python3 prints for `code`."""
        done = self.run(["/usr/bin/python3", "-c", code])
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def __enter__(self) -> "EmulatedPi":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

