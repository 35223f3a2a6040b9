"""Run a program under valgrind's memcheck and read its XML report.

`command` builds the valgrind command line (memcheck, full leak check, the
definitely and indirectly lost kinds reported, CPython's suppressions);
`read_report` turns the --xml-file into records: kind (Leak_DefinitelyLost,
Leak_IndirectlyLost, or a memory error such as InvalidRead), bytes, blocks and
the stack as (shared object, function, file:line) frames. `library` names the
record's first frame outside the allocator and the interpreter, `owned`
tells whether the stack passes through a library (or our binding of it) whose
handles pi2pi owns: libturbojpeg, libopus, libasound and pyalsaaudio's module,
and `known` matches the one understood, bounded leak in those (KNOWN).
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

# Debian's python3 ships CPython's Misc/valgrind-python.supp (adapted) here.
PYTHON_SUPPRESSIONS = Path("/usr/lib/valgrind/python3.supp")
OWNED_LIBRARIES = ("libturbojpeg", "libopus", "libasound", "alsaaudio")
LEAK_KINDS = ("Leak_DefinitelyLost", "Leak_IndirectlyLost")
# Frames that say where memory was allocated, not who asked for it: the allocator,
# then the interpreter and the foreign-call machinery between Python and a library.
ALLOCATOR = ("vgpreload_memcheck", "ld-linux", "libc.so")
NOT_THE_OWNER = ALLOCATOR + ("python3", "libpython", "libffi", "_ctypes")


@dataclass(frozen=True)
class Known:
    """A leak outside pi2pi that is understood and bounded: accepted by the check, still reported."""

    function: str       # the frame of the owned library's binding that allocates
    allocator: str      # the call that allocated for it
    most_blocks: int    # more than this is not the known leak any more
    why: str


KNOWN = (
    Known("alsapcm_info", "PyLong_FromUnsignedLong", 4,
          "pyalsaaudio 0.11.0 (the newest release) PCM.info(): 'rate_numden' is PyTuple_Pack(2, "
          "PyLong_FromUnsignedLong(num), PyLong_FromUnsignedLong(den)) and the two ints are never released; "
          "one 28-byte int per info() call (den, 1, is a cached small int); alsa_io calls info() twice per "
          "device open, so a program leaks 56 bytes once, not per frame"),
)


def command(xml_file: Path, argv: Sequence[str]) -> List[str]:
    return ["valgrind", "--tool=memcheck", "--leak-check=full", "--show-leak-kinds=definite,indirect",
            "--errors-for-leak-kinds=definite,indirect", "--num-callers=50", "--xml=yes",
            f"--xml-file={xml_file}", f"--suppressions={PYTHON_SUPPRESSIONS}", *argv]


def environment(base: Dict[str, str]) -> Dict[str, str]:
    """PYTHONMALLOC=malloc: every Python allocation goes through malloc, which memcheck sees."""
    return dict(base, PYTHONMALLOC="malloc")


@dataclass(frozen=True)
class Frame:
    obj: str
    fn: str
    where: str

    def __str__(self) -> str:
        return f"{self.fn or '???'} ({os.path.basename(self.obj) or '?'}{', ' + self.where if self.where else ''})"


@dataclass(frozen=True)
class Record:
    kind: str
    what: str
    bytes: int
    blocks: int
    stack: Tuple[Frame, ...]

    def library(self) -> str:
        """The first shared object on the stack past the allocator and the interpreter
        (the interpreter itself when nothing else is there)."""
        for skipped in (NOT_THE_OWNER, ALLOCATOR):
            for frame in self.stack:
                name = os.path.basename(frame.obj)
                if name and not name.startswith(skipped):
                    return name
        return "?"

    def owned(self) -> bool:
        return any(os.path.basename(frame.obj).startswith(OWNED_LIBRARIES) for frame in self.stack)

    def is_leak(self) -> bool:
        return self.kind in LEAK_KINDS

    def known(self) -> Optional[Known]:
        functions = [frame.fn for frame in self.stack]
        for known in KNOWN:
            if known.function in functions and known.allocator in functions and self.blocks <= known.most_blocks:
                return known
        return None


def read_report(xml_file: Path) -> List[Record]:
    root = ET.parse(xml_file).getroot()
    records = []
    for error in root.iter("error"):
        kind = error.findtext("kind", "")
        xwhat = error.find("xwhat")
        what = (xwhat.findtext("text", "") if xwhat is not None else error.findtext("what", "")).strip()
        stack = error.find("stack")
        frames = tuple(Frame(frame.findtext("obj", ""), frame.findtext("fn", ""),
                             f"{frame.findtext('file')}:{frame.findtext('line')}" if frame.findtext("file") else "")
                       for frame in (stack.iter("frame") if stack is not None else ()))
        records.append(Record(kind, what, int(xwhat.findtext("leakedbytes", "0")) if xwhat is not None else 0,
                              int(xwhat.findtext("leakedblocks", "0")) if xwhat is not None else 0, frames))
    return records


def by_library(records: Sequence[Record]) -> Dict[Tuple[str, str], Tuple[int, int, int]]:
    """(library, kind) -> (records, bytes, blocks)."""
    summary: Dict[Tuple[str, str], Tuple[int, int, int]] = {}
    for record in records:
        key = (record.library(), record.kind)
        count, size, blocks = summary.get(key, (0, 0, 0))
        summary[key] = (count + 1, size + record.bytes, blocks + record.blocks)
    return summary
