"""Commands on the site's hosts: over ssh (fabric, host keys pinned) or here.

Every host key is checked against the pinned known_hosts (the controller's
~/.ssh/known_hosts and the system's /etc/ssh/ssh_known_hosts, which site.yml
maintains); an unknown or changed key is refused (fabric would accept it).
A host that cannot be reached raises `Unreachable`, naming it and why.
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import invoke
import paramiko
from fabric import Connection

from controller.site import Host

SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
CONNECT_TIMEOUT_S = 10
Say = Callable[[str], None]


class Unreachable(Exception):
    def __init__(self, host: Host, why: str) -> None:
        super().__init__(f"{host.describe()} is unreachable: {why}")
        self.host = host


@dataclass
class Result:
    code: int
    out: str
    err: str

    def last_error(self) -> str:
        lines = [line for line in (self.err or self.out).strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"exit {self.code}"


class LineWriter:
    """A stream for invoke's out_stream that hands over whole lines."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self.on_line = on_line
        self.partial = ""

    def write(self, text: str) -> None:
        self.partial += text
        while "\n" in self.partial:
            line, self.partial = self.partial.split("\n", 1)
            self.on_line(line)

    def flush(self) -> None:
        pass


def pin_host_keys(connection: Connection) -> None:
    client = connection.client
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.load_system_host_keys()   # ~/.ssh/known_hosts
    if os.path.exists(SYSTEM_KNOWN_HOSTS):
        client.load_system_host_keys(SYSTEM_KNOWN_HOSTS)


def explain(err: BaseException) -> str:
    if isinstance(err, paramiko.BadHostKeyException):
        return f"its host key is not the pinned one ({err})"
    if isinstance(err, paramiko.SSHException) and "known_hosts" in str(err):
        return f"its host key is not pinned in known_hosts: refused ({err})"
    if isinstance(err, paramiko.AuthenticationException):
        return f"ssh refused our key ({err})"
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "no answer (timed out)"
    if isinstance(err, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused"
    if isinstance(err, OSError):
        return err.strerror or str(err)
    return str(err) or type(err).__name__


class Remote:
    """One host: run commands, fetch a directory."""

    def __init__(self, host: Host, connections: "Connections") -> None:
        self.host = host
        self.name = host.name
        self._connections = connections

    def run(self, command: str, stdin: Optional[str] = None, on_line: Optional[Callable[[str], None]] = None,
            timeout: float = 60) -> Result:
        """Run a shell command; its exit code (never raises for a non-zero one)."""
        if self.host.local:
            return self._run_here(command, stdin, on_line, timeout)
        connection = self._connections.get(self.host)
        options = dict(hide=True, warn=True, timeout=timeout, echo_stdin=False, pty=False)
        if stdin is not None:
            options["in_stream"] = io.StringIO(stdin)
        else:
            options["in_stream"] = False
        if on_line is not None:
            options["hide"] = "stderr"
            options["out_stream"] = LineWriter(on_line)
        try:
            result = connection.run(command, **options)
        except invoke.exceptions.CommandTimedOut:
            return Result(124, "", f"`{command}` took more than {timeout:.0f} s")
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise Unreachable(self.host, explain(err)) from None
        return Result(result.exited, result.stdout, result.stderr)

    def _run_here(self, command: str, stdin: Optional[str], on_line: Optional[Callable[[str], None]],
                  timeout: float) -> Result:
        proc = subprocess.Popen(["bash", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        if stdin is not None:
            proc.stdin.write(stdin)
        proc.stdin.close()
        err_lines: List[str] = []
        reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)  # type: ignore
        reader.start()
        out_lines = []
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                out_lines.append(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))
            proc.wait()
        finally:
            timer.cancel()
        reader.join(5)
        return Result(proc.returncode, "".join(out_lines), "".join(err_lines))

    def fetch_dir(self, remote_dir: str, local_dir: Path) -> List[str]:
        """Copy the files of a directory (not its subdirectories); the names copied."""
        local_dir.mkdir(parents=True, exist_ok=True)
        copied = []
        if self.host.local:
            for path in sorted(Path(remote_dir).iterdir()):
                if path.is_file():
                    shutil.copy2(path, local_dir / path.name)
                    copied.append(path.name)
            return copied
        try:
            sftp = self._connections.get(self.host).sftp()
            for entry in sorted(sftp.listdir_attr(remote_dir), key=lambda e: e.filename):
                if entry.st_mode is not None and stat.S_ISREG(entry.st_mode):
                    sftp.get(f"{remote_dir}/{entry.filename}", str(local_dir / entry.filename))
                    copied.append(entry.filename)
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise Unreachable(self.host, f"copying {remote_dir}: {explain(err)}") from None
        return copied


class Connections:
    """Open ssh connections, one per (user, address, port), shared as jump hosts."""

    def __init__(self) -> None:
        self._open: Dict[Tuple[Optional[str], str, int], Connection] = {}
        self._lock = threading.Lock()

    def get(self, host: Host) -> Connection:
        """The host's open connection (opened once; one handshake at a time, as a jump
        host's connection is shared by the hosts behind it)."""
        key = (host.user, host.address, host.port)
        with self._lock:
            if key not in self._open:
                gateway = self.get_unlocked(host.jump) if host.jump else None
                self._open[key] = self._make(host, gateway)
            connection = self._open[key]
            try:
                connection.open()
            except Exception as err:  # paramiko raises many kinds; each is "unreachable"
                raise Unreachable(host, explain(err)) from None
        return connection

    def get_unlocked(self, host: Host) -> Connection:
        key = (host.user, host.address, host.port)
        if key not in self._open:
            self._open[key] = self._make(host, None)
        return self._open[key]

    @staticmethod
    def _make(host: Host, gateway: Optional[Connection]) -> Connection:
        kwargs = {"key_filename": host.key_file} if host.key_file else {}
        connection = Connection(host.address, user=host.user, port=host.port, gateway=gateway,
                                connect_timeout=CONNECT_TIMEOUT_S, connect_kwargs=kwargs)
        pin_host_keys(connection)
        return connection

    def close(self) -> None:
        """Close the hosts reached through a jump host before the jump host itself."""
        for connection in reversed(list(self._open.values())):
            try:
                connection.close()
            except (paramiko.SSHException, OSError, EOFError):
                pass   # already gone with its jump host: nothing left to close
        self._open.clear()
