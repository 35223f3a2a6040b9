"""The memcheck harness's positive control: leak one TurboJPEG decompressor on purpose.

`python -m tests.memcheck.leaky` opens a tjInitDecompress handle through ctypes,
as PyTurboJPEG does, and drops it without tjDestroy. Under the same valgrind
command, environment and report reading as the real programs, the check must
name it: a definitely lost block allocated inside libturbojpeg. If it does not,
a clean report from the calls would prove nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util


def leak_a_decompressor() -> None:
    library = ctypes.CDLL(ctypes.util.find_library("turbojpeg") or "libturbojpeg.so.0")
    library.tjInitDecompress.restype = ctypes.c_void_p
    if not library.tjInitDecompress():
        raise RuntimeError("tjInitDecompress failed")
    # The address is dropped here without tjDestroy: the leak.


if __name__ == "__main__":
    leak_a_decompressor()
