"""The site as the Ansible inventory describes it: who the Pis and the gateway are,
and how to reach them. Read from `ansible-inventory --list` (the same inventory
site.yml used), never from a second copy.

Which inventory: $PI2PI_INVENTORY if set, else Ansible's own choice
($ANSIBLE_INVENTORY, or `inventory` in ansible.cfg: the lab).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
ENV_INVENTORY = "PI2PI_INVENTORY"
PIS_GROUP = "pis"
GATEWAY_GROUP = "gateway"


class SiteError(Exception):
    """The inventory cannot be read or does not describe a site fab can use."""


@dataclass(frozen=True)
class Host:
    """How to reach one inventory host (what Ansible would use)."""

    name: str                       # the inventory name
    address: str
    port: int = 22
    user: Optional[str] = None
    local: bool = False             # ansible_connection: local (the controller itself)
    key_file: Optional[str] = None
    jump: Optional["Host"] = None   # -o ProxyJump=user@host:port

    def describe(self) -> str:
        if self.local:
            return f"{self.name} (this machine)"
        where = f"{self.user + '@' if self.user else ''}{self.address}{':' + str(self.port) if self.port != 22 else ''}"
        via = f" via {self.jump.describe()}" if self.jump else ""
        return f"{where}{via}" if where == self.name else f"{self.name} ({where}{via})"


@dataclass(frozen=True)
class Site:
    inventory: str
    pis: List[Host]
    gateway: Optional[Host]


def parse_jump(text: str, owner: str) -> Host:
    """'user@host:port' (ssh's ProxyJump, one hop)."""
    if "," in text:
        raise SiteError(f"{owner}: ProxyJump with more than one hop ({text}) is not supported")
    user, _, rest = text.rpartition("@")
    host, _, port = rest.partition(":")
    try:
        return Host(name=text, address=host, port=int(port or 22), user=user or None)
    except ValueError:
        raise SiteError(f"{owner}: ProxyJump {text!r}: the port is not a number") from None


def host_from_vars(name: str, hostvars: Dict[str, Any]) -> Host:
    local = hostvars.get("ansible_connection") == "local"
    jump: Optional[Host] = None
    words = shlex.split(str(hostvars.get("ansible_ssh_common_args", "")))
    i = 0
    while i < len(words):
        word = words[i]
        value = None
        if word in ("-o", "-J") and i + 1 < len(words):
            value, i = words[i + 1], i + 2
        else:
            value, i = word, i + 1
        if word == "-J" or value.lower().startswith("proxyjump="):
            jump = parse_jump(value.split("=", 1)[1] if "=" in value else value, name)
        else:
            raise SiteError(f"{name}: ansible_ssh_common_args {value!r}: fab understands only ProxyJump")
    try:
        port = int(hostvars.get("ansible_port", 22))
    except (TypeError, ValueError):
        raise SiteError(f"{name}: ansible_port {hostvars.get('ansible_port')!r} is not a number") from None
    return Host(name=name, address=str(hostvars.get("ansible_host", name)), port=port,
                user=hostvars.get("ansible_user"), local=local,
                key_file=hostvars.get("ansible_ssh_private_key_file"), jump=jump)


def inventory_argument() -> List[str]:
    chosen = os.environ.get(ENV_INVENTORY)
    return ["-i", chosen] if chosen else []


def load(ansible_inventory: Optional[str] = None) -> Site:
    """The site from `ansible-inventory --list`."""
    command = [ansible_inventory or str(REPO / ".venv" / "bin" / "ansible-inventory"), *inventory_argument(), "--list"]
    env = dict(os.environ, ANSIBLE_VERBOSITY="0", ANSIBLE_NOCOLOR="1")
    try:
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    except OSError as err:
        raise SiteError(f"cannot run {command[0]}: {err.strerror} (run `make setup` first)") from None
    if result.returncode != 0:
        raise SiteError(f"ansible-inventory failed: {result.stderr.strip()[-500:]}")
    try:
        data = json.loads(result.stdout)
    except ValueError:
        raise SiteError("ansible-inventory did not print JSON") from None
    hostvars = data.get("_meta", {}).get("hostvars", {})
    pis = [host_from_vars(n, hostvars.get(n, {})) for n in data.get(PIS_GROUP, {}).get("hosts", [])]
    gateways = data.get(GATEWAY_GROUP, {}).get("hosts", [])
    where = os.environ.get(ENV_INVENTORY) or os.environ.get("ANSIBLE_INVENTORY") or "ansible.cfg's inventory"
    if len(pis) != 2:
        raise SiteError(f"the inventory ({where}) must have two hosts in group '{PIS_GROUP}', "
                        f"not {[p.name for p in pis]}")
    gateway = host_from_vars(gateways[0], hostvars.get(gateways[0], {})) if gateways else None
    return Site(inventory=where, pis=pis, gateway=gateway)
