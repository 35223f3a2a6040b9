"""The lab for a person: `python -m tests.lab up|down|status|shell HOST|run HOST CMD...|unit HOST UNIT`.

    make lab-up                  # build it (tears down what an earlier run left)
    make lab-shell HOST=natpi    # a root shell on natpi; --user pi for the controller
    python -m tests.lab run gw iptables -t nat -S
    python -m tests.lab unit natpi /etc/systemd/system/pi2pi-tunnel.service   # until Ctrl-C
    make lab-down                # remove every namespace, process, mount and file
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import List, Optional

from tests.lab.lab import ADDR, HOSTS, Lab, LabError

TOPOLOGY = f"""\
  natpi     {ADDR['natpi']:<32} sshd :22, user pi: the controller (key ~pi/.ssh/id_ed25519)
  neighbour {ADDR['neighbour']:<32} another machine on natpi's LAN, behind the same NAT (root only)
  isp       {ADDR['isp_lan'] + ' | ' + ADDR['natpi_public']:<32} natpi's ISP: MASQUERADE, lets nothing in
  inet      {'(a bridge)':<32} the Internet
  gw        {ADDR['gw_public'] + ' | ' + ADDR['gw_lan']:<32} gateway: admin sshd {ADDR['gw_public']}:{ADDR['gw_ssh_port']}, user admin
  gwpi      {ADDR['gwpi']:<32} sshd :22, user pi
  stranger  {ADDR['stranger']:<32} someone else on the Internet"""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", help="where the hosts' overlay layers live (default /var/tmp/pi2pi-lab)")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="build the lab (after tearing down leftovers)")
    down = commands.add_parser("down", help="tear the lab down, leaving nothing behind")
    down.add_argument("--force", action="store_true", help="even the lab of a running test session")
    commands.add_parser("status", help="which hosts exist and what listens on them")
    shell = commands.add_parser("shell", help="an interactive shell on a host")
    shell.add_argument("host", choices=HOSTS)
    shell.add_argument("--user", default="root")
    run = commands.add_parser("run", help="run a command on a host")
    run.add_argument("--user", default="root")
    run.add_argument("host", choices=HOSTS)
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    unit = commands.add_parser("unit", help="run a host's systemd service unit as Restart=always would"
                                            " (the lab has no systemd), until Ctrl-C")
    unit.add_argument("host", choices=HOSTS)
    unit.add_argument("path", help="the unit file inside the host")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="lab: %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    # The lab from `up` outlives this command, until `down`.
    owner = os.environ.get("PI2PI_LAB_OWNER", "")
    lab = Lab(args.state_dir, persistent=True, owner_pid=int(owner) if owner.isdigit() else None)
    try:
        if args.command == "up":
            started = time.monotonic()
            lab.up()
            print(f"lab up in {time.monotonic() - started:.1f} s (state in {lab.state_dir})")
            print(TOPOLOGY)
            print("a shell: make lab-shell HOST=natpi  (python -m tests.lab shell natpi --user pi)")
            print("tear down: make lab-down")
        elif args.command == "down":
            other = lab.owned_elsewhere()
            if other and not args.force:
                print(f"lab: the lab belongs to a running test session (process {other}); "
                      "leaving it up (--force takes it down)", file=sys.stderr)
                return 1
            started = time.monotonic()
            lab.down(force=True)
            print(f"lab down in {time.monotonic() - started:.1f} s: no namespaces, processes, mounts or files left")
        elif args.command == "status":
            report = lab.status()
            if not any(entry["netns"] for entry in report.values()):
                print("lab down")
                return 1
            for host, entry in report.items():
                state = "up" if entry["holder"] else ("netns only (broken: run down)" if entry["netns"] else "missing")
                listening = ", ".join(entry.get("listening", [])) or "-"
                print(f"  {host:<9} {state:<8} listening: {listening}")
        elif args.command == "shell":
            shell_argv, env = lab.shell_argv(args.host, args.user)
            os.execvpe(shell_argv[0], shell_argv, env)
        elif args.command == "run":
            if not args.cmd:
                parser.error("run: which command?")
            cmd = args.cmd[0] if len(args.cmd) == 1 else args.cmd
            proc = lab.popen(args.host, cmd, user=args.user, stdin=None)
            try:
                return proc.wait()
            except KeyboardInterrupt:
                proc.send_signal(signal.SIGINT)
                proc.wait()
                return 130
        elif args.command == "unit":
            proc = lab.start_unit(args.host, args.path, stdout=None, stderr=None)
            try:
                return proc.wait()  # the loop never ends by itself
            except KeyboardInterrupt:
                lab.stop_unit(args.host, args.path)
                return 130
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "up":
            print("lab: interrupted; tearing down", file=sys.stderr)
            lab.down()
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
