"""The `pi2pi` command: one entry point, one sub-command per program.

Each program module provides `Settings` (a dataclass extending config.Common),
`add_arguments(parser)` for its own flags (dest = the field name, default
SUPPRESS so only flags given override the config file) and `run(settings)`.
Module top levels stay light (stdlib and pi2pi only) so `pi2pi config` and
`--help` work without the media libraries.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional

from pi2pi import __version__, config, log

PROGRAMS = {
    "camera": "pi2pi.video.camera",
    "viewer": "pi2pi.video.viewer",
    "talk": "pi2pi.audio.talk",
    "listen": "pi2pi.audio.listen",
}
CLI_ONLY = ("command", "config", "verbose")


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
                        help="the call's token; the peer must prove it knows it")
    parser.add_argument("--stats", metavar="DIR", default=S, help="write DIR/<program>.json when done")
    parser.add_argument("--duration", type=float, metavar="SECONDS", default=S, help="stop after this long")
    parser.add_argument("--debug", type=int, choices=(0, 1, 2), default=S, help="diagnostics to the log file")
    parser.add_argument("--log-file", dest="log_file", metavar="PATH", default=S)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more on stderr")
    parser.add_argument("--config", metavar="PATH", help=f"config file (default ${config.ENV_PATH} or {config.DEFAULT_PATH})")


def make_parser(modules: Dict[str, ModuleType]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pi2pi", description="Pi-to-Pi video and audio calls.")
    parser.add_argument("--version", action="version", version=f"pi2pi {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name, module in modules.items():
        sub = commands.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(sub)
        add_common_arguments(sub)
    show = commands.add_parser("config", help="print the merged settings of every program")
    show.add_argument("--config", metavar="PATH")
    show.add_argument("--json", action="store_true", help="as one JSON object")
    show.add_argument("--check", action="store_true", help="only validate; exit 2 on a bad setting")
    return parser


def show_config(modules: Dict[str, ModuleType], args: argparse.Namespace) -> int:
    parser = config.load(args.config)
    unknown = set(parser.sections()) - set(modules)
    if unknown:
        raise config.ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}")
    merged = {name: config.as_dict(config.build(m.Settings, name, parser, {})) for name, m in modules.items()}
    if args.check:
        return 0
    if args.json:
        print(json.dumps(merged, indent=2, sort_keys=True))
    else:
        for name, values in merged.items():
            print(f"[{name}]")
            for key, value in values.items():
                print(f"{key} = {'' if value is None else value}")
            print()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    modules = program_modules()
    args = make_parser(modules).parse_args(argv)
    try:
        if args.command == "config":
            return show_config(modules, args)
        module = modules[args.command]
        overrides: Dict[str, Any] = {k: v for k, v in vars(args).items() if k not in CLI_ONLY}
        settings = config.build(module.Settings, args.command, config.load(args.config), overrides)
        log_file = settings.log_file or str(settings.stats_dir() / f"diagnostic_{args.command}.log")
        log.setup(args.command, args.verbose, settings.debug, Path(log_file))
        return int(module.run(settings))
    except config.ConfigError as err:
        print(f"pi2pi {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
