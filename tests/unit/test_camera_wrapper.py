"""[call] camera_wrapper: the camera runs under it (libcamerify for a Pi camera
on Raspberry Pi OS 12); a wrapper that is not installed is a config error."""
import subprocess
from pathlib import Path

import pytest

from pi2pi import config, supervisor


def fake_command(tmp_path: Path, name: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text('#!/bin/sh\nexec "$@"\n')
    path.chmod(0o755)
    return bin_dir


def test_a_wrapper_that_is_not_installed_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(config.ConfigError, match="call.camera_wrapper 'libcamerify': no such command"):
        supervisor.Settings(camera_wrapper="libcamerify").validate()
    supervisor.Settings().validate()  # none: nothing to find


def test_an_installed_wrapper_passes(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_command(tmp_path, "libcamerify")))
    supervisor.Settings(camera_wrapper="libcamerify").validate()


@pytest.mark.parametrize("wrapper, prefix", [(None, []), ("libcamerify", ["libcamerify"]),
                                             ("env LIBCAMERA_LOG_LEVELS=3", ["env", "LIBCAMERA_LOG_LEVELS=3"])])
def test_only_the_camera_runs_under_the_wrapper(tmp_path, monkeypatch, wrapper, prefix):
    started = {}

    class Popen:
        def __init__(self, argv, **kwargs):
            started[argv[argv.index("pi2pi") + 1]] = argv
            self.pid = 1

    monkeypatch.setattr(subprocess, "Popen", Popen)
    settings = supervisor.Settings(camera_wrapper=wrapper, token_file=str(tmp_path / "token"))
    request = supervisor.Request("c1", ["video", "audio"], {"fps": 5}, None)
    sup = supervisor.Supervisor(settings, request, tmp_path)
    for name in ("camera", "viewer", "talk", "listen"):
        sup.spawn(name)
    assert started["camera"][:len(prefix)] == prefix
    assert started["camera"][len(prefix) + 1:len(prefix) + 4] == ["-m", "pi2pi", "camera"]
    assert "--fps" in started["camera"]
    for name in ("viewer", "talk", "listen"):
        assert started[name][1:4] == ["-m", "pi2pi", name], started[name]


def test_the_config_file_sets_it(tmp_path):
    path = tmp_path / "pi2pi.conf"
    path.write_text("[call]\nside = natpi\ncamera_wrapper = libcamerify\n")
    settings = config.build(supervisor.Settings, "call", config.load(str(path)), {})
    assert settings.camera_prefix() == ["libcamerify"]
    path.write_text("[call]\nside = natpi\n")
    assert config.build(supervisor.Settings, "call", config.load(str(path)), {}).camera_prefix() == []
