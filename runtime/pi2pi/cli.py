"""The `pi2pi` command: one entry point, one sub-command per program, and the call.

Each program module provides `Settings` (a dataclass extending config.Common,
with `validate()`), `add_arguments(parser)` for its own flags (dest = the
field name, default SUPPRESS so only flags given override the config file) and
`run(settings)`. Help texts never repeat a default: `with_defaults` appends the
dataclass's own. Module top levels stay light (stdlib and pi2pi only) so
`pi2pi config`, `pi2pi status` and `--help` work without the media libraries.

`up`, `down` and `status` run one side of a call (call.py, supervisor.py);
`mute` and `volume` control the call that is up (controls.py); `panel` is the touch
panel (panel.py).
"""
from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional

from pi2pi import __version__, call, config, controls, log, panel, supervisor

PROGRAMS = {
    "camera": "pi2pi.video.camera",
    "viewer": "pi2pi.video.viewer",
    "talk": "pi2pi.audio.talk",
    "listen": "pi2pi.audio.listen",
}
CLI_ONLY = ("command", "config", "verbose")
PR_SET_PDEATHSIG = 1


def program_modules() -> Dict[str, ModuleType]:
    modules = {}
    for name, path in PROGRAMS.items():
        try:
            modules[name] = importlib.import_module(path)
        except ModuleNotFoundError as err:
            if err.name != path:  # a real missing dependency, not a program not built yet
                raise
    return modules


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    way = parser.add_mutually_exclusive_group()
    way.add_argument("--connect", metavar="HOST:PORT", default=S, help="dial the peer (retrying until it answers)")
    way.add_argument("--listen", metavar="[ADDR:]PORT", default=S, help="wait for the peer to dial")
    parser.add_argument("--token-file", dest="token_file", metavar="PATH", default=S,
                        help="the call's token; the peer must prove it knows it (none: the seed's bare protocol)")
    parser.add_argument("--stats", metavar="DIR", default=S, help="write DIR/<program>.json when done")
    parser.add_argument("--duration", type=float, metavar="SECONDS", default=S, help="stop after this long (0: never)")
    parser.add_argument("--debug", type=int, choices=(0, 1, 2), default=S, help="diagnostics to the log file")
    parser.add_argument("--log-file", dest="log_file", metavar="PATH", default=S,
                        help="the diagnostics file (none: <stats>/diagnostic_<program>.log)")
    parser.add_argument("--live", action="store_true", default=S,
                        help="publish <stats>/<program>.live.json (counters) while running")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more on stderr")
    parser.add_argument("--config", metavar="PATH", help=f"config file (default ${config.ENV_PATH} or {config.DEFAULT_PATH})")


def with_defaults(parser: argparse.ArgumentParser, settings_cls: Any) -> None:
    """Append each option's default, read from the settings dataclass, to its help."""
    defaults = config.field_defaults(settings_cls)
    for action in parser._actions:
        if action.dest not in defaults or action.help == argparse.SUPPRESS:
            continue
        value = defaults[action.dest]
        if value is None or value is False or isinstance(action, argparse.BooleanOptionalAction):
            continue
        action.help = f"{action.help or ''} (default: {value})".strip()


def make_parser(modules: Dict[str, ModuleType]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pi2pi", description="Pi-to-Pi video and audio calls.")
    parser.add_argument("--version", action="version", version=f"pi2pi {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name, module in modules.items():
        sub = commands.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(sub)
        add_common_arguments(sub)
        with_defaults(sub, module.Settings)
    show = commands.add_parser("config", help="print the merged settings of every program and of the call")
    show.add_argument("--config", metavar="PATH")
    show.add_argument("--json", action="store_true", help="as one JSON object")
    show.add_argument("--check", action="store_true",
                      help="only validate every section the file has, as the programs do; exit 2 on a bad setting")
    call.add_commands(commands)
    controls.add_commands(commands)
    panel.add_command(commands)
    return parser


def all_settings(modules: Dict[str, ModuleType], parser: Any) -> Dict[str, Any]:
    unknown = set(parser.sections()) - set(modules) - {supervisor.SECTION, panel.SECTION}
    if unknown:
        raise config.ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}")
    built: Dict[str, Any] = {name: config.build(m.Settings, name, parser, {}) for name, m in modules.items()}
    built[supervisor.SECTION] = config.build(supervisor.Settings, supervisor.SECTION, parser, {})
    built[panel.SECTION] = config.build(panel.Settings, panel.SECTION, parser, {})
    return built


def show_config(modules: Dict[str, ModuleType], args: argparse.Namespace) -> int:
    parser = config.load(args.config)
    built = all_settings(modules, parser)
    if args.check:
        for name in parser.sections():
            try:
                built[name].validate()
            except config.ConfigError as err:
                raise config.ConfigError(f"[{name}] {err}") from None
        return 0
    merged = {name: config.as_dict(settings) for name, settings in built.items()}
    if args.json:
        print(json.dumps(merged, indent=2, sort_keys=True))
    else:
        for name, values in merged.items():
            print(f"[{name}]")
            for key, value in values.items():
                print(f"{key} = {'' if value is None else value}")
            print()
    return 0


def call_command(modules: Dict[str, ModuleType], args: argparse.Namespace) -> int:
    """up, down, status and the detached supervise."""
    parser = config.load(args.config)
    built = all_settings(modules, parser)
    settings: supervisor.Settings = built[supervisor.SECTION]
    settings.validate()
    if args.command == "supervise":
        return supervisor.supervise(settings, args.call)
    if args.command == "up":
        media = ["video", "audio"] if args.media == "both" else [args.media]
        camera = {k: v for k, v in (("size", args.size), ("fps", args.fps), ("quality", args.quality))
                  if v is not None}
        request = supervisor.Request(args.call, media, camera,
                                     os.path.abspath(args.config) if args.config else None, by=args.by)

        def check() -> None:  # each program's own validation, with this call's camera settings
            for name in request.programs():
                overrides = camera if name == "camera" else {}
                try:
                    config.build(modules[name].Settings, name, parser, overrides).validate()
                except config.ConfigError as err:
                    raise config.ConfigError(f"{name}: {err}") from None

        token = sys.stdin.read() if args.token_stdin else None
        result = call.up(settings, request, token, check)
    elif args.command == "down":
        result = call.down(settings, senders_only=args.senders)
    else:
        dial_ports = [int(s.connect.rsplit(":", 1)[1]) for s in built.values()
                      if getattr(s, "connect", None) and ":" in s.connect]
        if args.wait_flowing is not None:
            ok = call.wait_flowing(settings, args.wait_flowing, lambda line: print(line, flush=True))
            return 0 if ok else 1
        result = call.status(settings, dial_ports)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for line in call.iter_lines(result):
            print(line)
    return 0


def die_with_supervisor() -> None:
    """A program the supervisor started ends (SIGTERM, stats written) when the supervisor dies,
    even by SIGKILL: the kernel's parent-death signal. A program started without the
    call's token refuses to run."""
    parent = os.environ.get(supervisor.ENV_SUPERVISOR)
    if not parent:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != int(parent):  # it died before we asked
        raise SystemExit("pi2pi: the supervisor that started this program is gone")


def main(argv: Optional[List[str]] = None) -> int:
    modules = program_modules()
    args = make_parser(modules).parse_args(argv)
    try:
        if args.command == "config":
            return show_config(modules, args)
        if args.command in ("up", "down", "status", "supervise"):
            log.setup(args.command, 0 if args.command == "status" else 1)
            return call_command(modules, args)
        if args.command in controls.COMMANDS:
            return controls.command(args)
        if args.command == "panel":
            log.setup("panel", args.verbose)
            return panel.command(all_settings(modules, config.load(args.config)), args)
        die_with_supervisor()
        module = modules[args.command]
        overrides: Dict[str, Any] = {k: v for k, v in vars(args).items() if k not in CLI_ONLY}
        settings = config.build(module.Settings, args.command, config.load(args.config), overrides)
        if os.environ.get(supervisor.ENV_SUPERVISOR) and not settings.token_file:
            raise config.ConfigError("started for a call without the call's token file: refusing")
        log_file = settings.log_file or str(settings.stats_dir() / f"diagnostic_{args.command}.log")
        log.setup(args.command, args.verbose, settings.debug, Path(log_file))
        return int(module.run(settings))
    except (config.ConfigError, supervisor.CallError) as err:
        print(f"pi2pi {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
