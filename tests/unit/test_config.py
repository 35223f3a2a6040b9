"""Settings precedence and the errors a user sees for a bad config."""
from dataclasses import dataclass
from typing import Optional

import pytest

from pi2pi import config


@dataclass
class DemoSettings(config.Common):
    fps: int = 15
    quality: float = 75.0
    mirror: bool = False
    device: Optional[str] = None


def parser_from(text: str, tmp_path):
    path = tmp_path / "pi2pi.conf"
    path.write_text(text)
    return config.load(str(path))


def test_defaults_then_file_then_flags(tmp_path):
    parser = parser_from("[demo]\nfps = 30\nmirror = yes\ndevice = hw:1\n", tmp_path)
    settings = config.build(DemoSettings, "demo", parser, {"quality": 50.0, "fps": None})
    assert (settings.fps, settings.quality, settings.mirror, settings.device) == (30, 50.0, True, "hw:1")
    assert settings.duration == 3 * 3600.0  # the seed's camera stopped itself after 3 hours


def test_flag_connect_clears_listen_from_file(tmp_path):
    parser = parser_from("[demo]\nlisten = 5010\n", tmp_path)
    settings = config.build(DemoSettings, "demo", parser, {"connect": "gw:5010"})
    assert settings.connect == "gw:5010" and settings.listen is None


@pytest.mark.parametrize("line, message", [
    ("fps = fast", "demo.fps: 'fast' is not a valid int"),
    ("mirror = maybe", "demo.mirror: 'maybe' is not a valid bool"),
    ("fsp = 3", "unknown setting demo.fsp"),
])
def test_bad_values_name_the_setting(tmp_path, line, message):
    parser = parser_from(f"[demo]\n{line}\n", tmp_path)
    with pytest.raises(config.ConfigError, match=message):
        config.build(DemoSettings, "demo", parser, {})


def test_named_config_must_exist_default_may_not(tmp_path, monkeypatch):
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(str(tmp_path / "missing.conf"))
    monkeypatch.delenv(config.ENV_PATH, raising=False)
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.conf"))
    assert config.load(None).sections() == []


def test_broken_file_is_a_config_error(tmp_path):
    path = tmp_path / "broken.conf"
    path.write_text("fps = 3\n")  # no section header
    with pytest.raises(config.ConfigError, match="broken.conf"):
        config.load(str(path))


def test_help_shows_each_default_from_the_settings_dataclass(capsys):
    from pi2pi import cli
    from pi2pi.audio import settings as audio
    from pi2pi.video import camera

    parser = cli.make_parser(cli.program_modules())
    shown = {}
    for name in ("camera", "listen"):
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        shown[name] = " ".join(capsys.readouterr().out.split())
    # The one place a default is written is the dataclass: the help reads it.
    assert f"(default: {camera.Settings.inflight})" in shown["camera"].split("--inflight FRAMES", 1)[1]
    assert f"(default: {audio.ListenSettings.buffer})" in shown["listen"].split("--buffer MS", 1)[1]


@pytest.mark.parametrize("section, line, message", [
    ("camera", "quality = 0", "[camera] quality 0: want 1..100"),
    ("talk", "rate = 44100", "[talk] rate 44100: Opus takes"),
    ("viewer", "at = 208", "[viewer] --at '208': want X,Y"),
    ("viewer", "dct = float", "[viewer] dct 'float': want accurate or fast"),
    ("call", "side = moon", "[call] call.side 'moon'"),
])
def test_config_check_applies_each_programs_own_validation(tmp_path, capsys, section, line, message):
    """What provisioning runs on every rendered config: a bad value fails there, naming it,
    not at call time."""
    from pi2pi import cli

    endpoint = "" if section == "call" else "listen = 5000\n"
    path = tmp_path / "pi2pi.conf"
    path.write_text(f"[{section}]\n{endpoint}{line}\n")
    assert cli.main(["config", "--check", "--config", str(path)]) == 2
    assert message in capsys.readouterr().err
    path.write_text(f"[{section}]\n{endpoint}")   # control: the same file without the bad line passes
    assert cli.main(["config", "--check", "--config", str(path)]) == 0


def test_the_dct_names_settings_accept_are_the_ones_the_codec_knows():
    from pi2pi.video import jpeg

    assert set(config.DCTS) == set(jpeg.DCT_FLAGS)
