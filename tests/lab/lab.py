"""The namespaced lab: the seed's whole topology on one machine, with real packets.

    natpi 192.168.1.13 ─────┬─ isp 192.168.1.1 | 198.51.100.30 (MASQUERADE, lets nothing in)
    neighbour 192.168.1.14 ─┘   (LAN side: a bridge)   │
                                     inet (a bridge: "the Internet") ── stranger 198.51.100.66
                                                       │
    gwpi 10.0.0.2 ─────────── gw 10.0.0.1 | 198.51.100.243 (admin sshd on :2222)

Each host is a network namespace (`ip netns`, named pi2pi-HOST) plus a holder
process that owns the host's private mount, UTS and PID namespaces. In the
mount namespace /etc, /var, /home, /root, /opt and /usr/local are overlayfs
layers over the machine's own (upper layers under the state dir), and /run,
/tmp, /sys and /proc are the host's own. So each host has its own users, sshd,
host keys and installed files, `pkill` on one host cannot touch another, and
the machine's own /etc is never written. The mounts exist only inside the
holders' mount namespaces: they vanish with the holders.

    lab = Lab()
    lab.up()                                  # tears leftovers down first
    lab.run("natpi", "ssh -p 2222 admin@198.51.100.243 hostname", user="pi")
    lab.down()                                # leaves nothing behind

One lab exists per machine at a time (the namespace names are fixed). A
machine-wide lock (held by the holders) makes a second
test session wait for the first one's lab to go down instead of destroying it;
a lab left up by `python -m tests.lab up`, or by a crashed run, is torn down.
"""

from __future__ import annotations

import atexit
import errno
import ipaddress
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from tests.lab import netem as emulated_netem

log = logging.getLogger("pi2pi.lab")

PREFIX = "pi2pi-"
HOSTS = ("natpi", "neighbour", "isp", "inet", "gw", "gwpi", "stranger")
ADDR = {
    "natpi": "192.168.1.13",
    "neighbour": "192.168.1.14",  # another machine on natpi's home LAN, behind the same NAT
    "isp_lan": "192.168.1.1",
    "natpi_public": "198.51.100.30",
    "gw_public": "198.51.100.243",
    "gw_lan": "10.0.0.1",
    "gwpi": "10.0.0.2",
    "stranger": "198.51.100.66",
    "gw_ssh_port": 2222,
}
INTERNET = ipaddress.ip_network("198.51.100.0/24")
OVERLAY_DIRS = ("etc", "var", "home", "root", "opt", "usr/local")
DEFAULT_STATE_DIR = Path("/var/tmp/pi2pi-lab")
REPO = Path(__file__).resolve().parents[2]  # visible inside every host
# The lab's lock: an abstract unix socket name, bound while a lab exists (the
# holders inherit the socket), so no lock file outlives the lab.
LOCK_NAME = "\0pi2pi-lab"
OWNER_PATH = Path("/run/pi2pi-lab.owner")
STATE_MARK = ".pi2pi-lab"  # only a directory holding this file is ever removed
CONTROLLER_KEY = "/home/pi/.ssh/id_ed25519"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"
UP_TIMEOUT = 30.0
NETEM_SOURCE = Path(__file__).with_name("netem.py")
# Where a host's eth0 arrives: the far end's host, and how its iptables names that way in
# (a bridge's port is seen by -m physdev: the bridges' netfilter calls iptables for it).
NETEM_FAR_END = {
    "natpi": ("isp", "-m physdev --physdev-in natpi"),
    "neighbour": ("isp", "-m physdev --physdev-in neighbour"),
    "gwpi": ("gw", "-i eth1"),
    "isp": ("inet", "-m physdev --physdev-in isp"),
    "gw": ("inet", "-m physdev --physdev-in gw"),
    "stranger": ("inet", "-m physdev --physdev-in stranger"),
}
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
# What a systemd service unit may say for Lab.start_unit, per section; None: any key,
# none of which changes how the service runs. [Unit]'s keys order a unit among
# others (the lab has none), but StartLimitIntervalSec must say "never give up"
# as the restart loop does; [Service]'s are all honoured.
UNIT_KEYS: Dict[str, Optional[Tuple[str, ...]]] = {
    "Unit": ("Description", "Documentation", "After", "Before", "Wants", "Requires",
             "StartLimitIntervalSec"),
    "Service": ("User", "Environment", "ExecStart", "Restart", "RestartSec"),
    "Install": None,
}
TIME_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "msec": 0.001, "min": 60.0}
_ROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

Command = Union[str, Sequence[str]]


@dataclass(frozen=True)
class Login:
    """The administrator account and sshd of a host that has one."""

    user: str
    sshd_listen: str  # sshd's ListenAddress line


LOGINS: Dict[str, Login] = {
    "natpi": Login("pi", "0.0.0.0:22"),
    "gwpi": Login("pi", "0.0.0.0:22"),
    "gw": Login("admin", f"{ADDR['gw_public']}:{ADDR['gw_ssh_port']}"),
}

# The bridges: inet's is "the Internet"; isp's is its LAN side, named eth1 as the
# ISP's firewall rules know it. A veth end in a host listed here joins its bridge.
BRIDGES = {"inet": "br0", "isp": "eth1"}

# veth pairs: (host, interface, host, interface). The uplink of every host is eth0;
# a bridge's port is named after the host at the other end.
LINKS = (
    ("natpi", "eth0", "isp", "natpi"),
    ("neighbour", "eth0", "isp", "neighbour"),
    ("isp", "eth0", "inet", "isp"),
    ("gw", "eth0", "inet", "gw"),
    ("stranger", "eth0", "inet", "stranger"),
    ("gwpi", "eth0", "gw", "eth1"),
)

# (host, interface, address/prefix), default routes, ip_forward
ADDRESSES = (
    ("natpi", "eth0", f"{ADDR['natpi']}/24"),
    ("neighbour", "eth0", f"{ADDR['neighbour']}/24"),
    ("isp", "eth1", f"{ADDR['isp_lan']}/24"),
    ("isp", "eth0", f"{ADDR['natpi_public']}/24"),
    ("gw", "eth0", f"{ADDR['gw_public']}/24"),
    ("gw", "eth1", f"{ADDR['gw_lan']}/24"),
    ("gwpi", "eth0", f"{ADDR['gwpi']}/24"),
    ("stranger", "eth0", f"{ADDR['stranger']}/24"),
)
DEFAULT_ROUTES = (("natpi", ADDR["isp_lan"]), ("neighbour", ADDR["isp_lan"]), ("gwpi", ADDR["gw_lan"]))
FORWARDING = {"isp": 1, "gw": 0}  # the gateway starts with forwarding off

# The ISP's router: MASQUERADE its customers, let nothing in.
ISP_RULES = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 192.168.1.0/24 -o eth0 -j MASQUERADE
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A INPUT -i eth1 -j ACCEPT
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -i eth1 -o eth0 -j ACCEPT
# The home LAN's own traffic, bridged between its ports (the bridge's netfilter shows it here).
-A FORWARD -i eth1 -o eth1 -j ACCEPT
COMMIT
"""

# The gateway's owner's rules, in place before pi2pi arrives: pi2pi must keep them.
GW_RULES = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -i eth0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.9:80
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A INPUT -p icmp -j ACCEPT
-A INPUT -p tcp -m tcp --dport 2222 -j ACCEPT
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
COMMIT
"""
FIREWALLS = {"isp": ISP_RULES, "gw": GW_RULES}

# Runs as PID 1 of a new PID namespace, inside the host's new mount and UTS
# namespaces: mounts the host's own file system view, reports ready, then
# stays as the namespace's init (reaping orphans, such as daemonised sshd).
HOLDER_SCRIPT = r"""
set -eu
state=$1 host=$2 hide=$3 repo=$4
hostname "$host"
# The repository must stay visible in every host at its own path (the hosts run
# its .venv and playbooks). Under /tmp or /run the host's own tmpfs would hide
# it: hold it open now and bind it back through that handle afterwards.
exec 9<"$repo"
# Relative layer paths, from a cwd taken before any overlay: the state dir may
# lie under an overlaid dir, and an upper layer must not be reached through one.
cd "$state"
for d in etc var home root opt usr/local; do
    mount -t overlay "pi2pi-$host" -o "lowerdir=/$d,upperdir=upper/$d,workdir=work/$d" "/$d"
done
cd /
mount -t tmpfs -o mode=0755,nosuid,nodev "pi2pi-$host" /run
mount -t tmpfs -o mode=1777,nosuid,nodev "pi2pi-$host" /tmp
if [ ! -d "$repo" ]; then mkdir -p "$repo" && mount --no-canonicalize --bind /proc/self/fd/9 "$repo"; fi
exec 9<&-
mount -t sysfs "pi2pi-$host" /sys
mount -t proc "pi2pi-$host" /proc
# The overlays' upper layers live under the state dir: hide it inside the host.
if [ -n "$hide" ]; then mount -t tmpfs -o mode=0700,size=64k "pi2pi-$host" "$hide"; fi
mkdir -p /run/sshd /run/lock
export LAB_REAPER='
import os, signal
def reap(*_):
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return
signal.signal(signal.SIGCHLD, reap)
reap()
print("ready", flush=True)
while True:
    signal.pause()
'
exec -a "pi2pi-lab-holder-$host" /usr/bin/python3 -c 'exec(__import__("os").environ.pop("LAB_REAPER"))'
"""

# The systemd mode (Lab(systemd=True), or PI2PI_LAB_SYSTEMD=1): these hosts boot
# systemd as PID 1 with systemd-nspawn inside their network namespaces, so the
# roles' `service_mgr == 'systemd'` branches run as on a Pi or a gateway.
SYSTEMD_HOSTS = ("natpi", "gw", "gwpi")
SYSTEMD_ENV = "PI2PI_LAB_SYSTEMD"
SYSTEMD_INIT = "/lib/systemd/systemd"
# Each container gets its own cgroup under this one (in every hierarchy nspawn
# uses): with --keep-unit on a machine without systemd, nspawn would otherwise
# put every container's payload in the same /payload cgroup, and three
# systemds would manage (and kill) each other's services.
CGROUP_ROOT = "pi2pi-lab"
CGROUP_HIERARCHIES = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup")
# Units that make no sense in a lab container (the netns is wired by the lab, the
# clock is the machine's, no consoles) or that the machine has enabled for itself.
SYSTEMD_MASKED = (
    "getty@tty1.service", "console-getty.service", "serial-getty@.service", "getty.target",
    "systemd-networkd.service", "systemd-networkd.socket", "systemd-networkd-wait-online.service",
    "systemd-resolved.service", "systemd-timesyncd.service", "systemd-pstore.service",
    "networking.service", "ifupdown-pre.service", "postgresql.service", "binfmt-support.service",
    "e2scrub_reap.service", "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
    "e2scrub_all.timer", "fstrim.timer", "man-db.timer", "machines.target",
)

# systemd mode: runs in a new mount and UTS namespace inside the host's network
# namespace, builds the host's root (the machine's /usr and the repository's
# directory bound at its own path, the same overlays as HOLDER_SCRIPT's), sets the host up
# on its first boot (HOST_SETUP_SCRIPT, chrooted: host key, user, sshd config,
# ssh.service enabled, units masked), then becomes systemd-nspawn, whose
# container's PID 1 is systemd. Its parent (unshare) holds the lab's lock.
SYSTEMD_HOLDER_SCRIPT = r"""
set -eu
state=$1 host=$2 hide=$3 repo=$4 first=$5 cgroup=$6
hostname "$host"
for h in $LAB_CGROUPS; do
    mkdir -p "$h/$cgroup"
    echo $$ > "$h/$cgroup/cgroup.procs"
done
# nspawn's own runtime files (/run/systemd/nspawn) stay in this mount namespace.
mkdir -p /run/systemd
mount -t tmpfs -o mode=0755,nosuid,nodev "pi2pi-$host" /run/systemd
cd "$state"
mkdir -p root
mount -t tmpfs -o mode=0755 "pi2pi-$host" root
for d in etc var home root opt usr srv mnt media tmp run proc sys dev boot; do mkdir -p "root/$d"; done
for l in bin sbin lib lib32 lib64 libx32; do
    if [ -L "/$l" ]; then ln -s "$(readlink "/$l")" "root/$l"; fi
done
mount --rbind /usr root/usr
# The repository is bound at its own path (its .venv, playbooks) by nspawn's --bind
# below, and nothing around it: nspawn mounts a tmpfs on /tmp, which would hide a
# bind made here for a clone under /tmp, and binding the clone's top directory
# brought the machine's /tmp into the containers, whose boot emptied it (once).
for d in etc var home root opt usr/local; do
    mount -t overlay "pi2pi-$host" -o "lowerdir=/$d,upperdir=upper/$d,workdir=work/$d" "root/$d"
done
if [ -n "$hide" ]; then mount -t tmpfs -o mode=0700,size=64k "pi2pi-$host" "root$hide"; fi
if [ "$first" = 1 ]; then
    # Its own machine id (the machine's would be every host's, and the journal's).
    tr -d - </proc/sys/kernel/random/uuid >root/etc/machine-id
    for unit in $LAB_MASKED; do ln -sfn /dev/null "root/etc/systemd/system/$unit"; done
    # Nor is /tmp emptied at boot or aged (tmp.conf's `D /tmp`): a repository under it is bound there.
    mkdir -p root/etc/tmpfiles.d
    ln -sfn /dev/null root/etc/tmpfiles.d/tmp.conf
    mkdir -p root/etc/systemd/system/multi-user.target.wants root/run/sshd
    ln -sfn /lib/systemd/system/ssh.service root/etc/systemd/system/multi-user.target.wants/ssh.service
    mount -t proc "pi2pi-$host" root/proc
    chroot root /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 LAB_SYSTEMD=1 LAB_FIREWALL="${LAB_FIREWALL:-}" LAB_USER="${LAB_USER:-}" \
        LAB_SSHD_LISTEN="${LAB_SSHD_LISTEN:-}" /bin/bash -c "$LAB_SETUP" >&2
    umount root/proc
    rmdir root/run/sshd
fi
# /proc/sys/net writable: the roles set net.ipv4.ip_forward (the netns is the host's own).
export SYSTEMD_NSPAWN_API_VFS_WRITABLE=network
# CAP_NET_ADMIN: nspawn keeps it only for a network namespace it made itself, and
# the hosts' firewalls and forwarding are theirs to manage.
exec systemd-nspawn --quiet --register=no --keep-unit --console=passive --capability=CAP_NET_ADMIN \
    --network-namespace-path="/run/netns/pi2pi-$host" --hostname="$host" \
    --machine="pi2pi-lab-$host" --directory=root --bind="$repo" -- "$LAB_INIT"
"""

# Makes a host look like a freshly installed machine whose administrator set up
# ssh: its own host key, a user with passwordless sudo, sshd running.
HOST_SETUP_SCRIPT = r"""
set -eu
host=$(hostname)
echo "$host" > /etc/hostname
printf '127.0.1.1\t%s\n' "$host" >> /etc/hosts
if [ -n "${LAB_FIREWALL:-}" ]; then printf '%s' "$LAB_FIREWALL" | iptables-restore; fi
[ -n "${LAB_USER:-}" ] || exit 0
# (A machine that is itself a Pi may already have a pi: the host reuses it.)
id -u "$LAB_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --password '*' "$LAB_USER"
printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\n' "$LAB_USER" > "/etc/sudoers.d/pi2pi-lab-$LAB_USER"
chmod 0440 "/etc/sudoers.d/pi2pi-lab-$LAB_USER"
home=$(getent passwd "$LAB_USER" | cut -d: -f6)
install -d -m 0700 -o "$LAB_USER" -g "$LAB_USER" "$home/.ssh"
# The machine's host keys must not be shared by every host.
rm -f /etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -C "root@$host" -f /etc/ssh/ssh_host_ed25519_key
cat > /etc/ssh/sshd_config.d/00-pi2pi-lab.conf <<EOF
# The lab's sshd on $host (tests/lab/lab.py): this host's own key and address.
ListenAddress $LAB_SSHD_LISTEN
HostKey /etc/ssh/ssh_host_ed25519_key
EOF
/usr/sbin/sshd -t
# With systemd (LAB_SYSTEMD, chrooted before boot) ssh.service starts it.
[ -n "${LAB_SYSTEMD:-}" ] || /usr/sbin/sshd
"""


class LabError(RuntimeError):
    """The lab cannot be built or used; the message says why."""


class LabCommandError(subprocess.CalledProcessError):
    """A command in a lab host failed; str() shows where, and what it printed."""

    def __init__(self, host: str, user: str, returncode: int, cmd: Command,
                 output: str, stderr: str) -> None:
        super().__init__(returncode, cmd, output, stderr)
        self.host = host
        self.user = user

    def __str__(self) -> str:
        cmd = self.cmd if isinstance(self.cmd, str) else shlex.join(self.cmd)
        text = f"{self.user}@{self.host}: `{cmd}` exited {self.returncode}"
        for name, stream in (("stdout", self.output), ("stderr", self.stderr)):
            if stream and stream.strip():
                text += f"\n--- {name}:\n{stream.strip()[-2000:]}"
        return text


class LabProcess(subprocess.Popen):
    """A process started in a lab host.

    Its pid is nsenter's, which forks into the host's PID namespace, so signals
    go to the whole process group: killing it kills the command too.
    """

    def send_signal(self, sig: int) -> None:
        self.poll()
        if self.returncode is not None:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass


@dataclass(frozen=True)
class Account:
    """A user as seen inside one host (its own /etc/passwd)."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str


@dataclass(frozen=True)
class Unit:
    """A systemd service with Restart=always, as Lab.start_unit runs it (parse_unit)."""

    exec_start: Tuple[str, ...]
    user: str = "root"
    environment: Tuple[Tuple[str, str], ...] = ()
    restart_sec: float = 0.1  # systemd's default


def parse_unit(text: str, name: str = "the unit") -> Unit:
    """The service of a systemd unit file, or a LabError for what the lab cannot honour.

    Understood: [Service] User=, Environment= (any number of them, each a list of
    VAR=value, quoted as systemd does; an empty one resets the list), ExecStart=
    (one, on one line, without systemd's prefixes, $VAR expansion or escapes),
    Restart=always (the only restart there is here), RestartSec= (s, ms or min);
    [Unit] keys that only order units, and StartLimitIntervalSec=0; [Install].
    No key may hold a %-specifier. Anything else is refused, so that a test never
    runs a service differently from how systemd would without knowing it.
    """
    section = ""
    values: Dict[Tuple[str, str], str] = {}
    environment: List[Tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{name}, line {number}"
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            raise LabError(f"{where}: a continued line is not understood")
        if line[0] == "[" and line[-1] == "]":
            section = line[1:-1]
            if section not in UNIT_KEYS:
                raise LabError(f"{where}: section [{section}] is not understood")
            continue
        key, equals, value = (part.strip() for part in line.partition("="))
        known = UNIT_KEYS.get(section, ())
        if not equals or (known is not None and key not in known):
            raise LabError(f"{where}: {line!r} is not understood in [{section or 'no section'}]")
        if section != "Service":
            values[section, key] = value
            continue
        if "%" in value or "\\" in value:
            raise LabError(f"{where}: systemd's %-specifiers and escapes are not understood: {line!r}")
        if key == "Environment":
            if not value:
                environment.clear()
            for assignment in _split_words(value, where):
                var, equals, setting = assignment.partition("=")
                if not equals or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
                    raise LabError(f"{where}: {assignment!r} is not a VAR=value")
                environment.append((var, setting))
        elif key == "ExecStart" and ("Service", key) in values:
            raise LabError(f"{where}: a second ExecStart= is not understood")
        else:
            values["Service", key] = value
    exec_start = values.get(("Service", "ExecStart"), "")
    if not exec_start:
        raise LabError(f"{name}: no ExecStart= in [Service]")
    if exec_start[0] in "-@:+!" or "$" in exec_start:
        raise LabError(f"{name}: systemd's ExecStart= prefixes and $VAR expansion are not understood:"
                       f" {exec_start!r}")
    restart = values.get(("Service", "Restart"))
    if restart != "always":
        raise LabError(f"{name}: only Restart=always is understood, not "
                       + (f"Restart={restart}" if restart else "the default Restart=no"))
    if values.get(("Unit", "StartLimitIntervalSec"), "0") != "0":
        raise LabError(f"{name}: the restart loop never gives up: only StartLimitIntervalSec=0 is understood")
    restart_sec = values.get(("Service", "RestartSec"), "100ms")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", restart_sec)
    if not match or match[2] not in TIME_UNITS:
        raise LabError(f"{name}: RestartSec={restart_sec} is not understood")
    return Unit(exec_start=tuple(_split_words(exec_start, name)),
                user=values.get(("Service", "User"), "root"),
                environment=tuple(environment),
                restart_sec=float(match[1]) * TIME_UNITS[match[2]])


class Lab:
    """The lab. See the module docstring; the names here are the shared contract."""

    def __init__(self, state_dir: Optional[Union[str, Path]] = None, *,
                 persistent: bool = False, lock: Optional[socket.socket] = None,
                 owner_pid: Optional[int] = None, systemd: Optional[bool] = None) -> None:
        # persistent: the lab outlives this process (the command line's `up`);
        # otherwise it is torn down when this process exits, whatever ends it.
        # owner_pid: a live process the lab belongs to (default: this one's if
        # not persistent); other sessions wait while it lives instead of taking
        # the lab as a leftover. The command line takes it from $PI2PI_LAB_OWNER.
        # lock: the machine's lab lock, handed over by a process that holds it
        # (see down(release=False)), so no other session slips in between.
        # systemd: natpi, gw and gwpi boot systemd (SYSTEMD_HOSTS); default: $PI2PI_LAB_SYSTEMD=1.
        self.state_dir = Path(state_dir or DEFAULT_STATE_DIR).absolute()
        if systemd is None:
            systemd = os.environ.get(SYSTEMD_ENV, "") not in ("", "0")
        self.systemd = systemd
        self._systemd_procs: Dict[str, subprocess.Popen] = {}  # host: its nspawn's unshare
        self._boot_started: Dict[str, float] = {}
        self.persistent = persistent
        self.owner_pid = owner_pid
        self.natpi_public = ADDR["natpi_public"]
        self._holders: Dict[str, int] = {}
        self._holder_procs: List[subprocess.Popen] = []
        self._netem_procs: Dict[str, LabProcess] = {}
        self._units: Dict[Tuple[str, str], LabProcess] = {}  # (host, unit path): its restart loop
        self._lock: Optional[socket.socket] = lock
        self._is_up = False
        self._atexit_registered = False
        self.timings: Dict[str, float] = {}  # seconds the last up (not counting waiting) and down took

    # ----- life cycle -------------------------------------------------------------

    def up(self, wait: float = 900.0) -> None:
        """Build the lab, after tearing down what an earlier run left.

        If another live test session owns the lab, wait up to `wait` seconds for
        it to go down rather than pull it from under that session.
        """
        _require_root()
        if self._is_up:
            raise LabError("this lab is already up; call down() first")
        _open_repo_to_lab_users()
        started = time.monotonic()
        waited = self._acquire(wait) if self._lock is None else 0.0
        OWNER_PATH.write_text(json.dumps({
            "pid": self.owner_pid or os.getpid(),
            "persistent": self.persistent and self.owner_pid is None,
            "systemd": self.systemd,
            "state_dir": str(self.state_dir)}) + "\n")
        try:
            if not self.persistent and not self._atexit_registered:
                atexit.register(self.down)
                self._atexit_registered = True
            self._build()
        except BaseException:
            self.down()
            raise
        self._is_up = True
        self.timings["up"] = time.monotonic() - started - waited
        log.info("lab up in %.1f s", self.timings["up"])

    def down(self, release: bool = True, force: bool = False) -> None:
        """Remove every namespace, process, mount and file the lab made.

        A lab that another live session owns (owned_elsewhere) is left alone
        unless force. release=False keeps the machine's lab lock (lock_fileno),
        so that no other session's lab comes up before this process is done.
        """
        _require_root()
        started = time.monotonic()
        owner = _read_owner()
        other = self.owned_elsewhere()
        if other and not force:
            # This Lab is not up (its up failed, or waited in vain): it must not
            # pull another live session's lab from under it.
            log.warning("the lab belongs to running process %s; leaving it up", other)
            return
        self._teardown()
        dirs = {self.state_dir}
        if owner.get("state_dir"):
            dirs.add(Path(owner["state_dir"]))
        for path in dirs:
            _remove_state_dir(path)
        _unlink_quietly(OWNER_PATH)  # no lab left, so no owner
        self._is_up = False
        if self._lock is not None and release:
            self._lock.close()
            self._lock = None
        if self._atexit_registered:
            atexit.unregister(self.down)
            self._atexit_registered = False
        self.natpi_public = ADDR["natpi_public"]
        self.timings["down"] = time.monotonic() - started
        log.info("lab down in %.1f s", self.timings["down"])

    def owned_elsewhere(self) -> Optional[int]:
        """The pid of another live process whose lab is up now, if any."""
        if self._lock is not None:
            return None  # the lab is this object's
        owner = _read_owner()
        pid = owner.get("pid", 0)
        if owner.get("persistent") or pid in (os.getpid(), self.owner_pid) or not _pid_alive(pid):
            return None
        return pid

    @property
    def lock_fileno(self) -> Optional[int]:
        """The lab lock's file descriptor while this object holds it (to hand it to a child)."""
        return self._lock.fileno() if self._lock is not None else None

    def status(self) -> Dict[str, Dict[str, object]]:
        """Per host: does its namespace exist, its holder pid, what listens on TCP."""
        present = set(_lab_netns())
        report: Dict[str, Dict[str, object]] = {}
        for host in HOSTS:
            pid = self._find_holder(host)
            entry: Dict[str, object] = {"netns": PREFIX + host in present, "holder": pid}
            if pid:
                ss = self.run(host, "ss -Hltn", check=False, timeout=10)
                entry["listening"] = sorted({line.split()[3] for line in ss.stdout.splitlines()
                                             if len(line.split()) > 3})
            report[host] = entry
        return report

    # ----- commands in hosts ------------------------------------------------------

    def run(self, host: str, cmd: Command, user: str = "root", check: bool = True,
            timeout: Optional[float] = 60, input: Optional[str] = None,
            env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess:
        """Run cmd (a str for bash -c, or an argv list) as user in host; text mode."""
        argv, full_env = self._command(host, cmd, user, env)
        proc = LabProcess(argv, env=full_env, text=True, start_new_session=True,
                          stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:  # a daemon the command left behind may still hold its pipes
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                out, err = "", ""
            raise subprocess.TimeoutExpired(cmd, timeout or 0, out, err) from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if check and proc.returncode != 0:
            raise LabCommandError(host, user, proc.returncode, cmd, out, err)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def popen(self, host: str, cmd: Command, user: str = "root",
              **popen_kwargs: object) -> LabProcess:
        """Start cmd as user in host; kill()/terminate() reach the command itself."""
        env = popen_kwargs.pop("env", None)
        argv, full_env = self._command(host, cmd, user, env)  # type: ignore[arg-type]
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        popen_kwargs["start_new_session"] = True
        return LabProcess(argv, env=full_env, **popen_kwargs)  # type: ignore[arg-type]

    # ----- services (the hosts have no systemd) --------------------------------------

    def start_unit(self, host: str, unit_path: str, **popen_kwargs: object) -> LabProcess:
        """Run a systemd service unit of host as systemd would with Restart=always.

        The unit file is read inside the host now (parse_unit says what is
        understood); its ExecStart runs as its User with its Environment and
        systemd's PATH, and again RestartSec after each exit, until stop_unit or
        down(). A unit this Lab runs already is stopped first, as a restart after
        its file changed. Output goes to unit_log() unless stdout is given.
        """
        try:
            text = self.host_path(host, unit_path).read_text()
        except OSError as exc:
            raise LabError(f"{host}: cannot read {unit_path}: {exc.strerror}") from None
        unit = parse_unit(text, f"{host}:{unit_path}")
        self.stop_unit(host, unit_path)
        loop = f"while :; do {shlex.join(unit.exec_start)}; sleep {unit.restart_sec:g}; done"
        env = {"PATH": _ROOT_ENV["PATH"], **dict(unit.environment)}  # systemd's PATH for services
        log_file = None
        if "stdout" not in popen_kwargs:
            log_file = open(self.unit_log(host, unit_path), "ab")
            popen_kwargs.update(stdout=log_file, stderr=subprocess.STDOUT)
        try:
            proc = self.popen(host, ["bash", "-c", loop], user=unit.user, env=env, **popen_kwargs)
        finally:
            if log_file is not None:
                log_file.close()
        self._units[host, unit_path] = proc
        return proc

    def stop_unit(self, host: str, unit_path: str, timeout: float = 10) -> None:
        """Stop what start_unit runs: SIGTERM to the loop and everything in its process
        group, SIGKILL after timeout s, as systemd's stop. A unit not running is fine."""
        proc = self._units.pop((host, unit_path), None)
        if proc is None:
            return
        proc.terminate()
        # nsenter, the group's leader, stays unreaped until the group is empty, so
        # that its id cannot have been given to another process meanwhile.
        deadline = time.monotonic() + timeout
        while members := _group_members(proc.pid):
            if time.monotonic() > deadline + 5:
                raise LabError(f"{host}: {unit_path} will not stop: processes {members}")
            if time.monotonic() > deadline:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        _finish(proc)

    def unit_running(self, host: str, unit_path: str) -> bool:
        """Whether start_unit's loop for the unit runs (it was started and not stopped)."""
        proc = self._units.get((host, unit_path))
        return proc is not None and proc.poll() is None

    def unit_log(self, host: str, unit_path: str) -> Path:
        """Where start_unit's loop writes its output (the journal's stand-in), on the machine."""
        return self.state_dir / "hosts" / host / f"{Path(unit_path).name}.log"

    def account(self, host: str, user: str) -> Account:
        """The user's entry in the host's own /etc/passwd."""
        passwd = self.host_path(host, "/etc/passwd").read_text()
        for line in passwd.splitlines():
            fields = line.split(":")
            if len(fields) >= 7 and fields[0] == user:
                return Account(fields[0], int(fields[2]), int(fields[3]), fields[5], fields[6])
        raise LabError(f"no user {user!r} on {host}")

    # ----- faults -----------------------------------------------------------------

    def set_link(self, host: str, up: bool) -> None:
        """Take the host's eth0 (natpi's uplink) down or up.

        Down flushes the routes through it; up restores the default route too,
        as the host's network configuration would.
        """
        self._ip(host, "link", "set", "eth0", "up" if up else "down")
        for routed, via in DEFAULT_ROUTES:
            if up and routed == host:
                self._ip(host, "route", "replace", "default", "via", via)

    def netem(self, host: str, spec: Optional[str]) -> None:
        """Impair what leaves the host's eth0, in netem's words ("delay 50ms 10ms loss 1%",
        "rate 1mbit"); None removes it.

        Uses the kernel's netem qdisc. A kernel built without it (this CI machine's)
        gets delay, jitter and loss from tests/lab/netem.py, through NFQUEUE where
        the link arrives at its far end (queueing a packet in its sender's own
        stack would stall TCP's small-queue accounting; the far end holds packets
        no socket owns any more), and rates from tbf. Other netem options are
        then refused with a LabError.
        """
        netns = self._netns(host)
        self._clear_netem(host)
        if spec is None:
            return
        words = shlex.split(spec)
        native = subprocess.run(["tc", "-netns", netns, "qdisc", "replace", "dev", "eth0", "root",
                                 "netem", *words], capture_output=True, text=True)
        if native.returncode == 0:
            return
        if "unknown" not in native.stderr:
            raise LabError(f"tc netem {spec!r} on {host}: {native.stderr.strip()}")
        try:
            impairment = emulated_netem.parse(words)
        except ValueError as exc:
            raise LabError(f"{host}: {exc} (this kernel has no netem qdisc)") from None
        if host not in NETEM_FAR_END:
            raise LabError(f"{host} has no eth0 to impair")
        if impairment.rate:
            _check(["tc", "-netns", netns, "qdisc", "replace", "dev", "eth0", "root", "tbf",
                    "rate", impairment.rate, "burst", "16kb", "latency", "1s"])
        if not impairment.needs_queue:
            return
        far, arriving = NETEM_FAR_END[host]
        queue = HOSTS.index(host)
        proc = self.popen(far, ["bash", "-c", f'exec -a "pi2pi-lab-netem-{host}" /usr/bin/python3 - "$@"',
                                "netem", "--queue", str(queue), *words],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(NETEM_SOURCE.read_bytes())
        proc.stdin.close()
        if _readline(proc.stdout, 10).strip() != b"ready":
            proc.kill()
            raise LabError(f"{host}: the netem emulator did not start: {proc.communicate()[1]!r}")
        proc.stdout.close()
        self._netem_procs[host] = proc
        self.run(far, f"iptables -t mangle -A PREROUTING {_netem_rule(host)}")

    def _clear_netem(self, host: str) -> None:
        subprocess.run(["tc", "-netns", self._netns(host), "qdisc", "del", "dev", "eth0", "root"],
                       capture_output=True)  # none in place is fine
        if host in NETEM_FAR_END:
            far = NETEM_FAR_END[host][0]
            self.run(far, f"while iptables -t mangle -D PREROUTING {_netem_rule(host)} 2>/dev/null;"
                          f" do :; done; pkill -f '^pi2pi-lab-netem-{host} ' || true")
        proc = self._netem_procs.pop(host, None)
        if proc is not None:
            proc.kill()
            _finish(proc)

    def set_natpi_public(self, addr: str) -> None:
        """Give the ISP's WAN (natpi's public address) a new address on the Internet segment."""
        address = ipaddress.ip_address(addr.split("/")[0])
        if address not in INTERNET or address in (INTERNET.network_address,
                                                  INTERNET.broadcast_address):
            raise LabError(f"natpi's public address must be a host of {INTERNET}, not {addr}")
        # MASQUERADE follows the interface's address; removing the old one drops
        # the connections translated to it, as a real address change does.
        self._ip("isp", "addr", "flush", "dev", "eth0")
        self._ip("isp", "addr", "add", f"{address}/{INTERNET.prefixlen}", "dev", "eth0")
        self.natpi_public = str(address)

    # ----- building ---------------------------------------------------------------

    def _build(self) -> None:
        self._teardown()  # leftovers of a crashed or persistent earlier lab
        _remove_state_dir(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / STATE_MARK).write_text("pi2pi lab state; removed by `python -m tests.lab down`\n")
        self._wire()
        self._start_holders()
        self._setup_hosts()
        self._seed_ssh()

    def _wire(self) -> None:
        for host in HOSTS:
            _check(["ip", "netns", "add", self._netns(host)])
            self._ip(host, "link", "set", "lo", "up")
            _sysctl(self._netns(host), "net.ipv4.ip_forward", FORWARDING.get(host, 0))
        for host, bridge in BRIDGES.items():
            # nf_call_iptables: iptables sees its packets, with their ports (-m physdev),
            # whatever the namespace's bridge-nf-call-iptables says.
            self._ip(host, "link", "add", bridge, "type", "bridge", "forward_delay", "0",
                     "nf_call_iptables", "1")
            self._ip(host, "link", "set", bridge, "up")
        for a, a_if, b, b_if in LINKS:
            _check(["ip", "link", "add", a_if, "netns", self._netns(a), "type", "veth",
                    "peer", "name", b_if, "netns", self._netns(b)])
            self._ip(a, "link", "set", a_if, "up")
            self._ip(b, "link", "set", b_if, "up")
            if b in BRIDGES:
                self._ip(b, "link", "set", b_if, "master", BRIDGES[b])
        for host, ifname, cidr in ADDRESSES:
            self._ip(host, "addr", "add", cidr, "dev", ifname)
        for host, via in DEFAULT_ROUTES:
            self._ip(host, "route", "add", "default", "via", via)

    def _start_holders(self) -> None:
        starting = {}
        script = self.state_dir / "holder.sh"
        script.write_text(HOLDER_SCRIPT)
        for host in HOSTS:
            host_dir = self.state_dir / "hosts" / host
            for d in OVERLAY_DIRS:
                (host_dir / "upper" / d).mkdir(parents=True, exist_ok=True)
                (host_dir / "work" / d).mkdir(parents=True, exist_ok=True)
            if self._is_systemd_host(host):
                self._boot(host, first=True)
                continue
            argv = ["nsenter", f"--net=/run/netns/{self._netns(host)}", "--",
                    "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child",
                    "--propagation", "private", "--",
                    "bash", str(script), str(host_dir), host, self._hidden_state_dir(), str(REPO)]
            with open(host_dir / "holder.log", "wb") as log_file:
                proc = subprocess.Popen(argv, env=dict(_ROOT_ENV), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE,
                                        stderr=log_file, start_new_session=True,
                                        pass_fds=(self._lock.fileno(),) if self._lock else ())
            self._holder_procs.append(proc)
            starting[host] = proc
        for host, proc in starting.items():
            assert proc.stdout is not None
            line = _readline(proc.stdout, UP_TIMEOUT)
            proc.stdout.close()
            if line.strip() != b"ready":
                log_text = (self.state_dir / "hosts" / host / "holder.log").read_text(errors="replace")
                raise LabError(f"{host}: the namespace holder did not start:\n{log_text}")
            pid = _only_child(proc.pid)
            self._holders[host] = pid
            (self.state_dir / "hosts" / host / "holder.pid").write_text(f"{pid}\n")
        for host in self._systemd_procs:
            self._wait_booted(host)

    def _setup_hosts(self) -> None:
        errors: List[BaseException] = []

        def setup(host: str) -> None:
            env = {}
            if host in FIREWALLS:
                env["LAB_FIREWALL"] = FIREWALLS[host]
            if host in LOGINS:
                env["LAB_USER"] = LOGINS[host].user
                env["LAB_SSHD_LISTEN"] = LOGINS[host].sshd_listen
            try:
                self.run(host, HOST_SETUP_SCRIPT, env=env, timeout=UP_TIMEOUT)
            except BaseException as exc:  # reported below, from the main thread
                errors.append(exc)

        # A systemd host was set up before it booted (SYSTEMD_HOLDER_SCRIPT).
        threads = [threading.Thread(target=setup, args=(host,)) for host in HOSTS
                   if not self._is_systemd_host(host)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        deadline = time.monotonic() + UP_TIMEOUT
        for host in LOGINS:
            if self._is_systemd_host(host):
                continue  # ssh.service is active: the boot waited for it
            while not self.host_path(host, "/run/sshd.pid").exists():
                if time.monotonic() > deadline:
                    raise LabError(f"{host}: sshd did not start")
                time.sleep(0.02)

    def _seed_ssh(self) -> None:
        """What the administrator did before any Ansible run: the controller's key
        (natpi's pi) authorized on every host, its known_hosts seeded."""
        self.run("natpi", ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pi@natpi",
                           "-f", CONTROLLER_KEY], user="pi")
        controller = self.host_path("natpi", CONTROLLER_KEY + ".pub").read_text()
        for host, login in LOGINS.items():
            self.run(host, "umask 077; cat >> ~/.ssh/authorized_keys", user=login.user,
                     input=controller)
        key = {host: self.host_path(host, HOST_KEY + ".pub").read_text().split()[:2]
               for host in LOGINS}
        known = [
            f"[{ADDR['gw_public']}]:{ADDR['gw_ssh_port']} {' '.join(key['gw'])}",
            f"{ADDR['gwpi']} {' '.join(key['gwpi'])}",
            f"{ADDR['natpi']},localhost {' '.join(key['natpi'])}",
        ]
        self.run("natpi", "umask 077; cat >> ~/.ssh/known_hosts", user="pi",
                 input="\n".join(known) + "\n")

    # ----- systemd hosts ----------------------------------------------------------

    def _is_systemd_host(self, host: str) -> bool:
        return self.systemd and host in SYSTEMD_HOSTS

    def _boot(self, host: str, first: bool) -> None:
        """Start host's container (SYSTEMD_HOLDER_SCRIPT); _wait_booted finds its PID 1."""
        host_dir = self.state_dir / "hosts" / host
        script = self.state_dir / "systemd-holder.sh"
        if not script.exists():  # never rewritten: a booting host's bash is still reading it
            script.write_text(SYSTEMD_HOLDER_SCRIPT)
        env = dict(_ROOT_ENV, LAB_SETUP=HOST_SETUP_SCRIPT, LAB_INIT=SYSTEMD_INIT,
                   LAB_MASKED=" ".join(SYSTEMD_MASKED),
                   LAB_CGROUPS=" ".join(h for h in _cgroup_hierarchies()))
        if host in FIREWALLS:
            env["LAB_FIREWALL"] = FIREWALLS[host]
        if host in LOGINS:
            env["LAB_USER"] = LOGINS[host].user
            env["LAB_SSHD_LISTEN"] = LOGINS[host].sshd_listen
        argv = ["nsenter", f"--net=/run/netns/{self._netns(host)}", "--",
                "unshare", "--mount", "--uts", "--fork", "--kill-child", "--propagation", "private", "--",
                "bash", str(script), str(host_dir), host, self._hidden_state_dir(), str(REPO),
                "1" if first else "0", f"{CGROUP_ROOT}/{host}"]
        _remove_cgroups(f"{CGROUP_ROOT}/{host}")  # an earlier boot's
        with open(host_dir / "holder.log", "ab") as log_file:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    pass_fds=(self._lock.fileno(),) if self._lock else ())
        self._holder_procs.append(proc)
        self._systemd_procs[host] = proc
        self._holders.pop(host, None)
        self._boot_started[host] = time.monotonic()

    def _wait_booted(self, host: str, timeout: float = UP_TIMEOUT) -> None:
        """Wait for host's systemd to be PID 1 of its container and to finish booting."""
        proc = self._systemd_procs[host]
        log_path = self.state_dir / "hosts" / host / "holder.log"
        deadline = time.monotonic() + timeout
        pid = None
        while pid is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"{host}: systemd-nspawn did not start its container"
                               f" (exit status {proc.returncode}):\n"
                               + log_path.read_text(errors="replace")[-3000:])
            pid = _container_init(proc.pid, host)
            if pid is None:
                time.sleep(0.02)
        self._holders[host] = pid
        (self.state_dir / "hosts" / host / "holder.pid").write_text(f"{pid}\n")
        # systemctl says nothing until systemd listens on its private socket, and "offline"
        # until systemd has made /run/systemd/system (sd_booted): a systemd that has just
        # been exec'd as the container's PID 1 is not booting yet, to systemctl. Both: look again.
        while True:
            result = self.run(host, ["systemctl", "is-system-running", "--wait"], check=False,
                              timeout=max(1.0, deadline - time.monotonic()))
            state = result.stdout.strip()
            if state not in ("", "offline") or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if state != "running":
            failed = self.run(host, "systemctl --failed --no-legend --plain", check=False).stdout
            raise LabError(f"{host}: systemd is {state!r} after booting ({result.stderr.strip()});"
                           f" failed units:\n{failed}")
        # boot_HOST: from starting nspawn to `systemctl is-system-running` saying running
        self.timings[f"boot_{host}"] = time.monotonic() - self._boot_started[host]
        log.info("%s: systemd up in %.2f s", host, self.timings[f"boot_{host}"])

    def reboot(self, host: str, timeout: float = 60) -> None:
        """Reboot a systemd host: `systemctl poweroff` in its container, what the kernel
        forgets at a reboot forgotten (its netfilter rules, ip_forward), then boot it again
        from the same disk (its overlays' upper layers), and wait until systemd is running.
        Its network namespace, links and addresses stay (the lab's wiring, not the host's)."""
        if not self._is_systemd_host(host):
            raise LabError(f"{host} does not run systemd (Lab(systemd=True) boots {', '.join(SYSTEMD_HOSTS)})")
        proc = self._systemd_procs[host]
        self.run(host, ["systemctl", "poweroff"], check=False)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise LabError(f"{host}: did not power off within {timeout:.0f} s") from None
        self._reap_holders()
        netns = self._netns(host)
        _check(["nsenter", f"--net=/run/netns/{netns}", "--", "nft", "flush", "ruleset"])
        _sysctl(netns, "net.ipv4.ip_forward", FORWARDING.get(host, 0))
        self._boot(host, first=False)
        self._wait_booted(host, timeout)

    # ----- teardown ---------------------------------------------------------------

    def _teardown(self) -> None:
        names = _lab_netns()
        deadline = time.monotonic() + 10
        while True:
            pids = _netns_pids(names)
            pids.update(pid for pid in self._holders.values() if _pid_alive(pid))
            if not pids:
                break
            if time.monotonic() > deadline:
                raise LabError(f"lab processes will not die: {sorted(pids)}")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._reap_holders()
            time.sleep(0.05)
        self._reap_holders()
        self._holders.clear()
        for proc in [*self._netem_procs.values(), *self._units.values()]:
            _finish(proc)
        self._netem_procs.clear()
        self._units.clear()
        self._systemd_procs.clear()
        _remove_cgroups(CGROUP_ROOT)
        for name in names:
            result = subprocess.run(["ip", "netns", "delete", name], capture_output=True, text=True)
            if result.returncode != 0 and os.path.exists(f"/run/netns/{name}"):
                raise LabError(f"cannot delete netns {name}: {result.stderr.strip()}")

    def _reap_holders(self) -> None:
        for proc in list(self._holder_procs):
            if proc.poll() is not None:
                self._holder_procs.remove(proc)

    # ----- helpers ----------------------------------------------------------------

    def _acquire(self, wait: float) -> float:
        """Take the machine's lab lock; returns the seconds spent waiting for another session."""
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        started = time.monotonic()
        deadline = started + wait
        waited = 0.0
        told = False
        while True:
            try:
                lock.bind(LOCK_NAME)
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    lock.close()
                    raise
            owner = _read_owner()
            pid = owner.get("pid", 0)
            if time.monotonic() > deadline:
                lock.close()
                raise LabError(f"the lab is in use by process {pid}; gave up after {wait:.0f} s")
            if not owner and time.monotonic() < started + 1:
                time.sleep(0.1)  # its owner is writing the owner file right now
                continue
            if pid == os.getpid():
                lock.close()
                raise LabError("another Lab object of this process has the lab up; down() it first")
            if _pid_alive(pid) and not owner.get("persistent"):
                if not told:
                    log.warning("the lab is in use by process %s (another test session); waiting", pid)
                    told = True
                time.sleep(0.5)
                waited += 0.5
            else:
                # Left up by `python -m tests.lab up` or by a run that crashed:
                # its holders keep the lock until they are gone.
                log.info("tearing down a lab left up by process %s", pid or "?")
                self._teardown()
                time.sleep(0.05)
        self._lock = lock
        return waited

    def _hidden_state_dir(self) -> str:
        for d in OVERLAY_DIRS:
            if self.state_dir.is_relative_to("/" + d):
                return str(self.state_dir)
        return ""

    @staticmethod
    def _netns(host: str) -> str:
        if host not in HOSTS:
            raise LabError(f"no host {host!r} in the lab (hosts: {', '.join(HOSTS)})")
        return PREFIX + host

    def _ip(self, host: str, *args: str) -> None:
        _check(["ip", "-n", self._netns(host), *args])

    def _find_holder(self, host: str) -> Optional[int]:
        pid = self._holders.get(host)
        if pid is None:
            try:
                pid = int((self.state_dir / "hosts" / host / "holder.pid").read_text())
            except (OSError, ValueError):
                return None
        # The pid must still be this host's holder, not a recycled number.
        netns = f"/run/netns/{self._netns(host)}"
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat(netns).st_ino:
                return None
            if not (Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"pi2pi-lab-holder")
                    or _is_container_init(pid, host)):
                return None
        except OSError:
            return None
        self._holders[host] = pid
        return pid

    def _holder(self, host: str) -> int:
        self._netns(host)
        pid = self._find_holder(host)
        if pid is None:
            raise LabError(f"the lab is not up ({host} has no holder); run `python -m tests.lab up`")
        return pid

    def host_path(self, host: str, path: str) -> Path:
        """A path inside the host's file system view, seen from the machine (to read a file
        a host wrote, such as a framebuffer, without running anything in it)."""
        return Path(f"/proc/{self._holder(host)}/root") / path.lstrip("/")


    def _command(self, host: str, cmd: Command, user: str,
                 env: Optional[Mapping[str, str]]) -> "tuple[List[str], Dict[str, str]]":
        pid = self._holder(host)
        account = self.account(host, user)
        home = account.home if self.host_path(host, account.home).is_dir() else "/"
        argv = ["nsenter", "-t", str(pid), "-m", "-u", "-n", "-p", f"--wdns={home}", "--",
                "setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--init-groups",
                "--"]
        argv += ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        # A login's environment, as sshd would give it; never the caller's (a
        # pyenv or venv PATH of the machine's user would leak into the host).
        full_env = {"HOME": account.home, "USER": account.name, "LOGNAME": account.name,
                    "SHELL": account.shell or "/bin/sh",
                    "PATH": _ROOT_ENV["PATH"] if account.uid == 0 else USER_PATH,
                    "LANG": "C.UTF-8"}
        if "TERM" in os.environ:
            full_env["TERM"] = os.environ["TERM"]
        full_env.update(env or {})
        return argv, full_env

    def shell_argv(self, host: str, user: str = "root") -> "tuple[List[str], Dict[str, str]]":
        """argv and environment of an interactive login shell in host (for the command line)."""
        argv, env = self._command(host, ["bash", "--login"], user, None)
        return argv, env


def leftovers(state_dir: Path = DEFAULT_STATE_DIR) -> List[str]:
    """What a lab could leave on the machine: namespaces, sshd, mounts, files."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    found += [f"netns {line.split()[0]}" for line in netns.splitlines() if line.startswith("pi2pi-")]
    machine_net = os.stat("/proc/self/ns/net").st_ino
    machine_mnt = os.stat("/proc/self/ns/mnt").st_ino
    sshd = subprocess.run(["pgrep", "-a", "sshd"], capture_output=True, text=True).stdout
    for line in sshd.splitlines():
        pid = line.split()[0]
        try:  # the machine's own sshd may run; one in any other namespace is the lab's
            if (os.stat(f"/proc/{pid}/ns/net").st_ino, os.stat(f"/proc/{pid}/ns/mnt").st_ino) \
                    != (machine_net, machine_mnt):
                found.append(f"sshd {line}")
        except FileNotFoundError:
            pass
    found += [f"cgroup {h}/{CGROUP_ROOT}" for h in _cgroup_hierarchies() if os.path.isdir(f"{h}/{CGROUP_ROOT}")]
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {line}" for line in mounts.splitlines() if "pi2pi" in line]
    if state_dir.exists():
        found.append(f"state dir {state_dir}")
    return found


# ----- module helpers ---------------------------------------------------------------


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network and mount namespaces, iptables)")


def _open_repo_to_lab_users() -> None:
    """The hosts' users (pi, admin) run the repository's .venv and playbooks, so every
    directory down to it must let others pass. A clone into `mktemp -d` (mode 0700)
    does not: such a directory gets o+x (the repository root o+rx), and says so."""
    for path in (*reversed(REPO.parents), REPO):
        mode = stat.S_IMODE(path.stat().st_mode)
        wanted = mode | stat.S_IXOTH | (stat.S_IROTH if path == REPO else 0)
        if wanted != mode:
            log.warning("%s was mode %04o: now %04o, so the lab's users reach the repository", path, mode, wanted)
            os.chmod(path, wanted)


def _finish(proc: subprocess.Popen) -> None:
    """Reap a process that was killed, and close its pipes."""
    proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _netem_rule(host: str) -> str:
    arriving = NETEM_FAR_END[host][1]
    return (f"{arriving} -m comment --comment pi2pi-lab-netem-{host}"
            f" -j NFQUEUE --queue-num {HOSTS.index(host)} --queue-bypass")


def _check(argv: List[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise LabError(f"`{shlex.join(argv)}` failed: {result.stderr.strip()}")


def _sysctl(netns: str, key: str, value: int) -> None:
    # /proc/sys/net shows the network namespace of whoever opens it.
    _check(["nsenter", f"--net=/run/netns/{netns}", "--", "sysctl", "-q", "-w", f"{key}={value}"])


def _lab_netns() -> List[str]:
    """The lab's own namespaces only: a benchmark's pi2pi-bench-* pair is not the lab's."""
    mine = {PREFIX + host for host in HOSTS}
    try:
        return sorted(n for n in os.listdir("/run/netns") if n in mine)
    except FileNotFoundError:
        return []


def _netns_pids(names: List[str]) -> set:
    """Every process in one of the named network namespaces (as `ip netns pids`)."""
    inodes = set()
    for name in names:
        try:
            inodes.add(os.stat(f"/run/netns/{name}").st_ino)
        except OSError:
            pass
    pids = set()
    if not inodes:
        return pids
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes and not _zombie(int(entry)):
                pids.add(int(entry))
        except OSError:
            pass
    return pids


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _split_words(text: str, where: str) -> List[str]:
    """A unit's list of words: quoted as systemd does without escapes, as a shell does."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise LabError(f"{where}: {exc}: {text!r}") from None


def _group_members(pgid: int) -> List[int]:
    """The live (not zombie) processes of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def _pid_alive(pid: int) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _cgroup_hierarchies() -> List[str]:
    """Where a container's cgroup must be made: the hierarchies nspawn may use here
    (cgroup v2's, and on a hybrid machine the name=systemd one beside it)."""
    found = []
    for path in CGROUP_HIERARCHIES:
        if os.path.exists(f"{path}/cgroup.procs") and not any(p.startswith(path + "/") or path.startswith(p + "/")
                                                             for p in found):
            found.append(path)
    return found


def _remove_cgroups(relative: str) -> None:
    """Remove the lab's cgroups (deepest first) once their processes are gone."""
    for hierarchy in _cgroup_hierarchies():
        top = Path(hierarchy) / relative
        if not top.is_dir():
            continue
        deadline = time.monotonic() + 5
        for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise LabError(f"cannot remove cgroup {path}: {exc}") from None
                    time.sleep(0.05)


def _container_init(unshare_pid: int, host: str) -> Optional[int]:
    """The PID 1 of host's container (a child of systemd-nspawn, itself the child of unshare)."""
    try:
        for nspawn in Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split():
            for child in Path(f"/proc/{nspawn}/task/{nspawn}/children").read_text().split():
                if _is_container_init(int(child), host):
                    return int(child)
    except OSError:
        pass
    return None


def _is_container_init(pid: int, host: str) -> bool:
    """Is pid the systemd that nspawn started as host's PID 1?"""
    try:
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] != SYSTEMD_INIT.encode():
            return False
        ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        parent = Path(f"/proc/{ppid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return parent[0].endswith(b"systemd-nspawn") and f"--machine=pi2pi-lab-{host}".encode() in parent


def _only_child(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(children) != 1:
        raise LabError(f"expected one child of unshare {pid}, found {children}")
    return int(children[0])


def _readline(stream, timeout: float) -> bytes:
    """One line from a pipe, or b'' if none comes within timeout."""
    import select

    fd = stream.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    return data


def _read_owner() -> dict:
    try:
        return json.loads(OWNER_PATH.read_text())
    except (OSError, ValueError):
        return {}


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _remove_state_dir(path: Path) -> None:
    if not path.exists():
        return
    if not (path / STATE_MARK).exists():
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
            return
        raise LabError(f"{path} is not a lab state dir (no {STATE_MARK}); not removing it")
    shutil.rmtree(path)
