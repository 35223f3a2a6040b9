"""The roles' decisions without the lab: the camera's stack per kind and OS, the
legacy firmware config on a real file (gpu_mem never lowered), and the
runtime's config with and without the camera's wrapper, checked by the
runtime itself."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.provision.helpers import PLAYBOOK, REPO
from tests.provision.test_lint import run

ANSIBLE = REPO / ".venv" / "bin" / "ansible"


def camera_decision(**values) -> dict:
    shown = "{{ {'stack': camera_stack, 'module': camera_module, 'wrapper': camera_wrapper, " \
            "'firmware': camera_firmware_config} | to_json }}"
    argv = [str(ANSIBLE), "localhost", "-i", "localhost,", "-c", "local", "-o", "-m", "ansible.builtin.debug",
            "-a", f"msg={shown}", "-e", "@roles/camera/defaults/main.yml"]
    for key, value in values.items():
        argv += ["-e", json.dumps({key: value})]
    result = run(argv, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(json.loads(result.stdout.split("=>", 1)[1])["msg"])


@pytest.mark.parametrize("kind, os_major, stack, module, wrapper, firmware", [
    ("pi", 11, "legacy", "bcm2835_v4l2", "", "/boot/config.txt"),
    ("pi", 12, "libcamera", "", "libcamerify", "/boot/firmware/config.txt"),
    ("usb", 11, "uvc", "", "", "/boot/config.txt"),
    ("usb", 12, "uvc", "", "", "/boot/firmware/config.txt"),
    ("vivid", 12, "vivid", "vivid", "", "/boot/firmware/config.txt"),
])
def test_camera_stack_follows_kind_and_os(kind, os_major, stack, module, wrapper, firmware) -> None:
    decided = camera_decision(camera_kind=kind, camera_os_major=os_major)
    assert decided == {"stack": stack, "module": module, "wrapper": wrapper, "firmware": firmware}


def test_no_wrapper_where_the_camera_steps_are_off() -> None:
    # The namespaced lab: Debian 12, a "pi" camera, no libcamera to run under.
    assert camera_decision(camera_kind="pi", camera_os_major=12, camera_hardware_enabled=False)["wrapper"] == ""


def play_camera(tmp_path: Path, config_txt: str) -> tuple:
    firmware = tmp_path / "config.txt"
    firmware.write_text(config_txt)
    playbook = tmp_path / "camera.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "The camera role's legacy stack on a file", "hosts": "localhost", "connection": "local",
        "gather_facts": False, "roles": ["camera"],
        "vars": {"camera_kind": "pi", "camera_os_major": 11, "camera_module": "",
                 "camera_firmware_config": str(firmware), "camera_facts_dir": str(tmp_path / "facts")}}]))
    results = []
    for _ in range(2):
        result = run_with_env([str(PLAYBOOK), "-i", "localhost,", str(playbook)], {"ANSIBLE_ROLES_PATH": str(REPO / "roles")})
        assert result.returncode == 0, result.stdout + result.stderr
        results.append(result.stdout)
    return firmware.read_text(), results


def run_with_env(argv: list, extra: dict) -> subprocess.CompletedProcess:
    env = {"PATH": f"{REPO / '.venv' / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "ANSIBLE_NOCOLOR": "1", "LANG": "C.UTF-8", **extra}
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


MODEL_FILTERS = {"pi0", "pi0w", "pi02", "pi1", "pi2", "pi3", "pi3+", "pi4", "pi400", "cm4", "pi5", "cm5"}


def effective(config_txt: str, model: str) -> dict:
    """What the firmware of a Pi of `model` reads from config.txt: a line applies unless a
    model filter ([pi4], [cm4]) for another model stands before it, [all] ends the filter,
    and a later line overrides an earlier one."""
    settings, applies = {}, True
    for line in config_txt.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            if section == "all":
                applies = True
            elif section in MODEL_FILTERS:
                applies = section == model
        elif line and not line.startswith("#") and "=" in line and applies:
            key, value = line.split("=", 1)
            settings[key] = value
    return settings


def test_the_config_txt_reading_sees_sections() -> None:
    text = "gpu_mem=64\n[pi4]\ngpu_mem=256\nstart_x=1\n[all]\ncamera_auto_detect=0\n"
    assert effective(text, "pi3") == {"gpu_mem": "64", "camera_auto_detect": "0"}
    assert effective(text, "pi4") == {"gpu_mem": "256", "start_x": "1", "camera_auto_detect": "0"}


@pytest.mark.skipif(os.geteuid() != 0, reason="the role's files are root's")
@pytest.mark.parametrize("before, gpu_mem", [
    # OS 11's own: camera_auto_detect for all, a [pi4] section, then [all]
    ("# OS 11's own\ncamera_auto_detect=1\ndisplay_auto_detect=1\n[pi4]\ndtoverlay=vc4-fkms-v3d\n"
     "max_framebuffers=2\n[all]\n", {"pi3": "128", "pi4": "128"}),
    ("camera_auto_detect=1\ngpu_mem=256\n[all]\n", {"pi3": "256", "pi4": "256"}),   # the owner's higher value stays
    ("#start_x=0\ngpu_mem=64\n", {"pi3": "128", "pi4": "128"}),                       # a lower one is raised
    # The file ends inside [pi4], with the owner's gpu_mem there: a line appended as it is
    # would be the Pi 4's alone. Every model gets the camera, and no model a gpu_mem lowered.
    ("camera_auto_detect=1\ngpu_mem=64\n[pi4]\ngpu_mem=256\n", {"pi3": "256", "pi4": "256"}),
])
def test_legacy_firmware_config_applies_to_every_model_once_and_gpu_mem_never_lowered(tmp_path, before,
                                                                                       gpu_mem) -> None:
    after, (first, second) = play_camera(tmp_path, before)
    assert after.startswith(before), after   # the owner's lines as they were, pi2pi's block after them
    for model in ("pi3", "pi4"):
        assert effective(before, model).get("start_x") != "1", "the case must need the role"
        got = effective(after, model)
        assert (got.get("start_x"), got.get("camera_auto_detect"), got.get("gpu_mem")) == \
            ("1", "0", gpu_mem[model]), f"{model}:\n{after}"
    assert "changed=0" not in first.split("PLAY RECAP")[1]
    assert "changed=0" in second.split("PLAY RECAP")[1], second
    fact = json.loads((tmp_path / "facts" / "pi2pi_camera.fact").read_text())
    assert fact == {"kind": "pi", "stack": "legacy", "wrapper": ""}


def render_runtime_config(tmp_path: Path, wrapper: str) -> Path:
    out = tmp_path / f"pi2pi-{wrapper or 'none'}.conf"
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "The runtime's config file", "hosts": "natpi", "connection": "local", "gather_facts": False,
        "vars_files": [str(REPO / "roles/runtime/defaults/main.yml"), str(REPO / "inventory/lab/group_vars/all.yml"),
                       str(REPO / "inventory/lab/host_vars/natpi.yml")],
        "vars": {"role_path": str(REPO / "roles/runtime")},
        "tasks": [{"name": "Render", "ansible.builtin.template": {
            "src": str(REPO / "roles/runtime/templates/pi2pi.conf.j2"), "dest": str(out), "mode": "0644"}}]}]))
    # -e: above vars_files (the role's defaults), as the camera role's fact is above a default.
    result = run_with_env([str(PLAYBOOK), "-i", "natpi,", str(playbook),
                           "-e", json.dumps({"runtime_camera_wrapper": wrapper})], {})
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def check_config(path: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    return subprocess.run([str(REPO / ".venv/bin/pi2pi"), "config", "--check", "--config", str(path)],
                          env=env, capture_output=True, text=True, timeout=60)


def test_runtime_config_with_and_without_libcamerify(tmp_path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    plain = render_runtime_config(tmp_path, "")
    wrapped = render_runtime_config(tmp_path, "libcamerify")
    read = configparser.ConfigParser(interpolation=None)
    read.read(plain)
    assert "camera_wrapper" not in read["call"]
    read = configparser.ConfigParser(interpolation=None)
    read.read(wrapped)
    assert read["call"]["camera_wrapper"] == "libcamerify"
    assert check_config(plain, bin_dir).returncode == 0
    # Without libcamera-v4l2 installed the runtime says what is missing...
    missing = check_config(wrapped, bin_dir)
    assert missing.returncode != 0 and "camera_wrapper 'libcamerify': no such command" in missing.stderr, missing
    # ...and with it the file passes.
    (bin_dir / "libcamerify").write_text("#!/bin/sh\nexec \"$@\"\n")
    (bin_dir / "libcamerify").chmod(0o755)
    assert check_config(wrapped, bin_dir).returncode == 0, check_config(wrapped, bin_dir).stderr


FAKE_SYSTEMCTL = """#!/bin/sh
# systemd as it answers for a unit that is not on disk (what check mode leaves).
case "$1" in
show) echo "LoadState=not-found"; echo "ActiveState=inactive" ;;
is-enabled) echo "not-found"; exit 4 ;;
list-unit-files) exit 1 ;;
esac
exit 0
"""


@pytest.mark.parametrize("unit_changed", [True, False])
def test_check_mode_skips_enabling_a_unit_the_run_would_install(tmp_path, unit_changed) -> None:
    """ansible-core's systemd_service fails on a unit systemd cannot find (a fresh
    host in --check never wrote it): the tunnel's enable/start is skipped then."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    playbook = tmp_path / "service.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "The tunnel's service step in check mode", "hosts": "localhost", "connection": "local",
        "gather_facts": False, "vars": {"tunnel_unit_file": {"changed": unit_changed}},
        "tasks": [{"name": "Service", "ansible.builtin.include_role": {"name": "tunnel", "tasks_from": "service.yml"}}],
    }]))
    result = subprocess.run([str(PLAYBOOK), "-i", "localhost,", "--check", str(playbook)], cwd=REPO,
                            env={"PATH": f"{bin_dir}:{REPO / '.venv' / 'bin'}:/usr/bin:/bin", "HOME": "/root",
                                 "ANSIBLE_NOCOLOR": "1", "LANG": "C.UTF-8", "ANSIBLE_ROLES_PATH": str(REPO / "roles")},
                            capture_output=True, text=True, timeout=120)
    if unit_changed:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "skipping: [localhost]" in result.stdout, result.stdout
    else:  # the failure the guard avoids, from the real module (the control)
        assert result.returncode != 0 and "Could not find the requested service" in result.stdout, result.stdout
