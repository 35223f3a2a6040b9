"""talk/listen settings: a user's mistake is a clear error and exit 2, no traceback."""
from __future__ import annotations

import pytest

from pi2pi import cli


@pytest.mark.parametrize("argv, message", [
    (["talk", "--device", "null", "--stats", "{d}"], "exactly one of --connect"),
    (["talk", "--connect", "127.0.0.1:1", "--rate", "44100", "--stats", "{d}"], "Opus takes"),
    (["talk", "--connect", "127.0.0.1:1", "--bitrate", "1000", "--stats", "{d}"], "bitrate 1000"),
    (["talk", "--connect", "127.0.0.1:1", "--volume", "150", "--stats", "{d}"], "volume 150"),
    (["talk", "--connect", "nohost", "--device", "null", "--stats", "{d}"], "want HOST:PORT"),
    (["talk", "--connect", "127.0.0.1:1", "--device", "no_such_pcm", "--stats", "{d}"], "ALSA capture device 'no_such_pcm'"),
    (["listen", "--listen", "1", "--buffer", "900", "--buffer-max", "100", "--stats", "{d}"], "buffer 900"),
    (["listen", "--listen", "127.0.0.1:1", "--device", "null", "--record", "/nonexistent/x.wav", "--stats", "{d}"], "no directory"),
    (["listen", "--listen", "127.0.0.1:1", "--device", "null", "--token-file", "/nonexistent", "--stats", "{d}"], "token file"),
])
def test_user_mistakes_exit_2_with_a_clear_message(argv, message, tmp_path, capsys):
    argv = [a.replace("{d}", str(tmp_path)) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_config_file_defaults_reach_the_programs(tmp_path):
    conf = tmp_path / "pi2pi.conf"
    conf.write_text("[talk]\ndevice = plughw:1,0\nbitrate = 24000\n[listen]\nbuffer = 15\nbuffer_max = 300\n")
    from pi2pi import config
    from pi2pi.audio import listen, talk
    parser = config.load(str(conf))
    t = config.build(talk.Settings, "talk", parser, {})
    l = config.build(listen.Settings, "listen", parser, {"buffer": 20.0})
    assert (t.device, t.bitrate, t.rate, t.channels) == ("plughw:1,0", 24000, 48000, 1)
    assert (l.buffer, l.buffer_max) == (20.0, 300.0)
