"""gwpi's panel on natpi: the forced command of the panel's ssh key.

natpi's sshd runs this for every session of gwpi's panel key, whatever the
client asked (roles/panel writes the key into the controller user's
authorized_keys as `restrict,command="<checkout>/.venv/bin/python
<checkout>/controller/panel_remote.py --by gwpi [--inventory PATH]"`). What
the client asked is in SSH_ORIGINAL_COMMAND, and only these, word for word,
are allowed:

    call   call --video-only   call --audio-only   hangup   status   status --json

An allowed one replaces this process (os.execv, no shell) with the checkout's
own `.venv/bin/fab -r <checkout> <words>`, `fab call` with `--by <caller>`:
for this key the caller is always gwpi, whatever the client says. Anything
else (no command: a shell; other words; more arguments; shell metacharacters)
is refused with one line on stderr and exit status 2. Every decision is logged
to ~/.local/state/pi2pi/panel-remote.log (bounded: it rotates at 1 MB), the
refused command shown escaped and cut short.

The inventory is named here because sshd's environment is not a login's: a
PI2PI_INVENTORY set in the user's profile would not reach fab.
"""
from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

CHECKOUT = Path(__file__).resolve().parents[1]
ENV_COMMAND = "SSH_ORIGINAL_COMMAND"
ENV_INVENTORY = "PI2PI_INVENTORY"     # controller/site.py's: which inventory fab reads
# What the panel may ask, as typed, and the fab task's words for it.
ALLOWED: Dict[str, List[str]] = {
    "call": ["call"],
    "call --video-only": ["call", "--video-only"],
    "call --audio-only": ["call", "--audio-only"],
    "hangup": ["hangup"],
    "status": ["status"],
    "status --json": ["status", "--json"],
}
PLACES_A_CALL = "call"                # the one task that takes --by
REFUSED_EXIT = 2
LOG_PATH = "~/.local/state/pi2pi/panel-remote.log"
LOG_MAX_BYTES = 1 << 20               # a key that asks for junk in a loop cannot fill the disk
SHOWN_CHARS = 200                     # of a refused command, in the log

log = logging.getLogger("pi2pi.panel_remote")
Exec = Callable[[str, List[str]], None]


@dataclass(frozen=True)
class Verdict:
    """What to do with one request: the fab argv to exec, or why not."""

    argv: Optional[List[str]]
    why: str = ""

    @property
    def allowed(self) -> bool:
        return self.argv is not None


def task_words(original: Optional[str]) -> Optional[List[str]]:
    """The fab task's words for an allowed request; None for anything else.

    The whole request must be one of ALLOWED exactly: no splitting, trimming or
    quoting is applied first, so nothing a shell would read differently can match.
    """
    if original is None:
        return None
    words = ALLOWED.get(original)
    return list(words) if words is not None else None


def fab_argv(checkout: Path, words: Sequence[str], caller: str) -> List[str]:
    """`<checkout>/.venv/bin/fab -r <checkout> WORDS`, and `--by CALLER` for a call."""
    fab = str(checkout / ".venv" / "bin" / "fab")
    argv = [fab, "-r", str(checkout), *words]
    if words and words[0] == PLACES_A_CALL:
        argv += ["--by", caller]
    return argv


def decide(original: Optional[str], checkout: Path, caller: str) -> Verdict:
    words = task_words(original)
    if words is None:
        what = "a shell (no command)" if original is None else "not one of the panel's commands"
        return Verdict(None, what)
    return Verdict(fab_argv(checkout, words, caller))


def shown(original: Optional[str]) -> str:
    """The request for the log: escaped (no forged log lines) and cut short."""
    if original is None:
        return "(none)"
    text = repr(original[:SHOWN_CHARS])
    return text + (f" (+{len(original) - SHOWN_CHARS} chars)" if len(original) > SHOWN_CHARS else "")


def setup_log(path: Path) -> None:
    """Log to a bounded file; where it cannot be written, nowhere (never onto the client's stderr)."""
    logging.raiseExceptions = False   # a failing write must not print a traceback to the client
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=LOG_MAX_BYTES, backupCount=1, encoding="utf-8")
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The forced command's own arguments, as authorized_keys gives them (never the client's)."""
    parser = argparse.ArgumentParser(prog="panel_remote.py", description=__doc__.splitlines()[0])
    parser.add_argument("--by", required=True, metavar="NAME",
                        help="who this key's calls are placed by (gwpi's inventory name)")
    parser.add_argument("--inventory", metavar="PATH", help=f"the inventory fab reads (sets {ENV_INVENTORY})")
    return parser.parse_args(argv)


def main(argv: Sequence[str], environ: Mapping[str, str], run: Exec = os.execv,
         checkout: Path = CHECKOUT) -> int:
    """Refuse (exit 2) or exec fab; returns only when refused."""
    args = parse_arguments(argv)
    original = environ.get(ENV_COMMAND)
    peer = environ.get("SSH_CONNECTION", "?").split(" ")[0]
    verdict = decide(original, checkout, args.by)
    if not verdict.allowed:
        log.warning("refused from %s (key of %s): %s: %s", peer, args.by, verdict.why, shown(original))
        print(f"pi2pi panel: refused: {verdict.why}; this key may only ask for "
              f"{', '.join(ALLOWED)}", file=sys.stderr)
        return REFUSED_EXIT
    assert verdict.argv is not None
    log.info("from %s (key of %s): %s -> %s", peer, args.by, shown(original), " ".join(verdict.argv))
    if args.inventory:
        os.environ[ENV_INVENTORY] = args.inventory
    try:
        os.chdir(checkout)   # as a person runs fab: from the checkout, where ansible.cfg is
        run(verdict.argv[0], verdict.argv)
    except OSError as err:   # the checkout moved, or its .venv is gone: say so, in one line
        log.error("cannot run %s: %s", verdict.argv[0], err)
        print(f"pi2pi panel: natpi cannot run {verdict.argv[0]}: {err.strerror or err}", file=sys.stderr)
        return 1
    return 0   # only a stand-in for os.execv returns


if __name__ == "__main__":
    setup_log(Path(os.path.expanduser(LOG_PATH)))
    sys.exit(main(sys.argv[1:], os.environ))
