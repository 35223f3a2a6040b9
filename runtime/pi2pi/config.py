"""Settings: dataclass defaults, then the Pi's config file, then command-line flags.

The config file is INI, one section per program ([camera], [viewer], [talk],
[listen]); its keys are the long option names with '-' turned into '_'. Ansible
renders it on each Pi; `pi2pi config --json` shows the merged result.
"""
from __future__ import annotations

import configparser
import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Type, TypeVar

DEFAULT_PATH = "/etc/pi2pi/pi2pi.conf"
ENV_PATH = "PI2PI_CONFIG"

T = TypeVar("T")


class ConfigError(Exception):
    """A setting that is missing, unknown or of the wrong form: the user's mistake."""


@dataclasses.dataclass
class Common:
    """Settings every program shares. Exactly one of connect/listen is set."""

    connect: Optional[str] = None    # HOST:PORT: this program dials (and retries)
    listen: Optional[str] = None     # [ADDR:]PORT: this program waits for its peer
    token_file: Optional[str] = None  # the call's token; none = the seed's bare protocol
    stats: str = "~/.local/state/pi2pi"
    duration: float = 3 * 3600.0     # seconds; the seed's camera stopped itself after 3 hours
    debug: int = 0                   # 0 off, 1 info, 2 debug, to the log file
    log_file: Optional[str] = None   # default: <stats>/diagnostic_<program>.log
    live: bool = False               # publish <stats>/<program>.live.json while running

    def stats_dir(self) -> Path:
        return Path(os.path.expanduser(self.stats))

    def validate(self) -> None:
        """The program's own checks of its settings (each program extends this):
        `pi2pi config --check`, the supervisor and the program itself all call it."""
        if bool(self.connect) == bool(self.listen):
            raise ConfigError("give exactly one of --connect HOST:PORT or --listen [ADDR:]PORT")
        if self.duration < 0:
            raise ConfigError(f"duration {self.duration}: want seconds >= 0 (0: no limit)")
        if self.debug not in (0, 1, 2):
            raise ConfigError(f"debug {self.debug}: want 0, 1 or 2")


DCTS = ("accurate", "fast")   # libjpeg's DCT methods camera and viewer offer (video.jpeg.DCT_FLAGS)


def check_dct(dct: str) -> None:
    if dct not in DCTS:
        raise ConfigError(f"dct {dct!r}: want {' or '.join(DCTS)}")


def field_defaults(cls: Type[Any]) -> Dict[str, Any]:
    """Each dataclass field's default: the one place a default is written."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


# Options where setting one on the command line clears the other from the file.
EXCLUSIVE = (("connect", "listen"),)


def config_path(explicit: Optional[str]) -> Tuple[Path, bool]:
    """The file to read and whether it must exist (it must if the user named it)."""
    if explicit:
        return Path(explicit), True
    if os.environ.get(ENV_PATH):
        return Path(os.environ[ENV_PATH]), True
    return Path(DEFAULT_PATH), False


def load(explicit: Optional[str] = None) -> configparser.ConfigParser:
    path, required = config_path(explicit)
    parser = configparser.ConfigParser(interpolation=None)
    if not path.exists():
        if required:
            raise ConfigError(f"config file {path} does not exist")
        return parser
    try:
        parser.read(path)
    except (configparser.Error, OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path}: {err}") from None
    return parser


def convert(text: str, kind: Any, name: str) -> Any:
    """Turn the config file's text into the field's type, or say which setting is wrong."""
    origin = typing.get_origin(kind)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in typing.get_args(kind) if a is not type(None)][0]
        if text.strip().lower() in ("", "none"):
            return None
        return convert(text, inner, name)
    text = text.strip()
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in ("1", "yes", "true", "on"):
                return True
            if lowered in ("0", "no", "false", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not a valid {kind.__name__}") from None
    return text


def build(cls: Type[T], section: str, parser: configparser.ConfigParser, overrides: Mapping[str, Any]) -> T:
    """Defaults < file section < overrides (command-line values already typed)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: Dict[str, Any] = {}
    if parser.has_section(section):
        for key, text in parser.items(section):
            if key not in fields:
                raise ConfigError(f"unknown setting {section}.{key} (known: {', '.join(sorted(fields))})")
            values[key] = convert(text, hints[key], f"{section}.{key}")
    given = {k: v for k, v in overrides.items() if k in fields and v is not None}
    for group in EXCLUSIVE:
        if any(k in given for k in group):
            for k in group:
                values.pop(k, None)
    values.update(given)
    return cls(**values)  # type: ignore[call-arg]


def as_dict(settings: Any) -> Dict[str, Any]:
    return dataclasses.asdict(settings)
