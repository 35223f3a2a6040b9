"""The controller's record of calls: one directory per call, each Pi's call
directory copied into it by `fab hangup`, and control.json (what fab did: the
options, the hosts, call_setup_s, hangup_s).

    <store>/<call id>/control.json
    <store>/<call id>/<pi>/{camera,viewer,talk,listen}.json, summary.json, logs ...

<store> is $PI2PI_CALL_STORE, else ~/.local/state/pi2pi/controller.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List

ENV_STORE = "PI2PI_CALL_STORE"
CONTROL = "control.json"


def root() -> Path:
    return Path(os.environ.get(ENV_STORE) or "~/.local/state/pi2pi/controller").expanduser()


def call_dir(call_id: str) -> Path:
    return root() / call_id


def side_dir(call_id: str, host: str) -> Path:
    return call_dir(call_id) / host


def exists(call_id: str) -> bool:
    return (call_dir(call_id) / CONTROL).exists()


def _write(path: Path, record: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".control.")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def new_call(call_id: str, record: Dict[str, Any]) -> None:
    _write(call_dir(call_id) / CONTROL, record)


def control(call_id: str) -> Dict[str, Any]:
    try:
        return json.loads((call_dir(call_id) / CONTROL).read_text())
    except (OSError, ValueError):
        return {"call": call_id}


def update(call_id: str, fields: Dict[str, Any]) -> None:
    _write(call_dir(call_id) / CONTROL, {**control(call_id), **fields})


def calls() -> List[str]:
    """Every call recorded here, oldest first (call ids start with their time)."""
    if not root().is_dir():
        return []
    return sorted(d.name for d in root().iterdir() if (d / CONTROL).exists())
