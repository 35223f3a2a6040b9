"""The playbooks without the lab: ansible-lint, --syntax-check, and a bad
inventory value refused before any host is touched."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.provision.helpers import PLAYBOOK, REPO

LINT = REPO / ".venv" / "bin" / "ansible-lint"
PLAYBOOKS = ["site.yml", "playbooks/natpi_address.yml", "playbooks/wheelhouse.yml"]


def run(argv: list, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {"PATH": f"{REPO / '.venv' / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1", "LANG": "C.UTF-8"}
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_ansible_lint_production_profile_passes() -> None:
    result = run([str(LINT), "--profile", "production", "--offline"])
    assert result.returncode == 0, result.stdout + result.stderr
    config = (REPO / ".ansible-lint").read_text()
    assert "skip_list" not in config and "warn_list" not in config


def test_every_noqa_gives_its_reason() -> None:
    for path in [*REPO.glob("roles/**/*.yml"), *REPO.glob("playbooks/*.yml"), REPO / "site.yml"]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "noqa" in line:
                reason = line.split("noqa", 1)[1].split(None, 1)
                assert len(reason) == 2 and reason[1].strip(), f"{path}:{number}: noqa without a reason"


@pytest.mark.parametrize("inventory", ["inventory/example", "inventory/lab"])
@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_syntax_check(inventory: str, playbook: str) -> None:
    result = run([str(PLAYBOOK), "-i", inventory, playbook, "--syntax-check"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_inventories_differ_only_in_addresses_ports_and_toggles() -> None:
    def listing(inventory: str) -> dict:
        result = run([str(REPO / ".venv/bin/ansible-inventory"), "-i", inventory, "--list"])
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    example, lab = listing("inventory/example"), listing("inventory/lab")
    assert example["gateway"] == lab["gateway"] and example["pis"] == lab["pis"]
    assert set(example["_meta"]["hostvars"]) == set(lab["_meta"]["hostvars"]) == {"gw", "natpi", "gwpi"}
    for host, values in lab["_meta"]["hostvars"].items():
        assert set(values) - {"camera_hardware_enabled"} == set(example["_meta"]["hostvars"][host]), host
    assert lab["_meta"]["hostvars"]["natpi"]["camera_hardware_enabled"] is False


@pytest.mark.parametrize("variable, value", [
    ("pi2pi_tunnel_port", "ssh"),
    ("pi2pi_video_natpi_to_gwpi_port", "70000"),
    ("pi2pi_natpi_public_address", "172.72.143.300"),
    ("pi2pi_gw_public_address", "gateway"),
])
def test_bad_inventory_value_fails_first_naming_it(variable: str, value: str) -> None:
    # The lab's hosts do not exist here: any task that touched a host would
    # show as unreachable. The preflight must stop the run before that.
    result = run([str(PLAYBOOK), "-i", "inventory/lab", "site.yml", "-e", f"{variable}={value}"], timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert variable in output, output
    assert "Gathering Facts" not in output and "UNREACHABLE" not in output, output
    assert "unreachable=1" not in output and "changed=1" not in output, output
