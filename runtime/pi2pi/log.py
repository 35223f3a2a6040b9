"""Logging: warnings to stderr (info with -v), diagnostics to a file with --debug.

The seed's programs wrote diagnostic_<program> files when their debug level was
1 or 2; --debug 1|2 does the same (info or debug detail).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def setup(program: str, verbose: int = 0, debug: int = 0, log_file: Optional[Path] = None) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    # On a terminal a person reads it as it happens; in a file (a call's logs) the time matters.
    stamp = "" if sys.stderr.isatty() else "%(asctime)s "
    console.setFormatter(logging.Formatter(f"{stamp}{program}: %(levelname)s %(message)s"))
    root.addHandler(console)
    if debug > 0 and log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setLevel(logging.DEBUG if debug > 1 else logging.INFO)
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
