"""zlib's compress and uncompress with the GIL held, for the dataflow thread.

Why: CPython's ``zlib`` gives the GIL up around every deflate and inflate. A thread that
gives it up while another thread is running Python (in `archwatch up`: the store writer
and the API hold it ≈ 15% of the time) gets it back only when that thread is made to
let go, up to the 5 ms switch interval later. The shards compress their change logs'
blobs on the dataflow thread a few thousand times a minute live (engine._blob): at
10,000 events/s their compressing took 2.2–2.5 s of the thread's wall time a 30 s run
for 0.6–0.75 s of CPU, and 1.7 s held (bench/RESULTS.md section 2, session 21). The
same reason, and the same means, as the blob files' writes (archwatch.blobstore).

Output is an ordinary zlib stream (``zlib.decompress`` reads it); :func:`uncompress`
needs the uncompressed length, which the caller keeps. Without a loadable libz both fall
back to the module, giving the GIL up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import zlib

_ULONG_P = ctypes.POINTER(ctypes.c_ulong)


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("z") or "libz.so.1"
    try:
        lib = ctypes.PyDLL(name)  # PyDLL: the GIL stays held during the call
        lib.compressBound.restype = ctypes.c_ulong
        lib.compressBound.argtypes = [ctypes.c_ulong]
        lib.compress2.argtypes = [ctypes.c_char_p, _ULONG_P, ctypes.c_char_p,
                                  ctypes.c_ulong, ctypes.c_int]
        lib.uncompress.argtypes = [ctypes.c_char_p, _ULONG_P, ctypes.c_char_p,
                                   ctypes.c_ulong]
    except (OSError, AttributeError):
        return None
    return lib


_lib = _load()


def compress(raw: bytes, level: int = 1) -> bytes:
    """``zlib.compress(raw, level)``, the GIL held throughout."""
    lib = _lib
    if lib is None:
        return zlib.compress(raw, level)
    size = ctypes.c_ulong(lib.compressBound(len(raw)))
    out = ctypes.create_string_buffer(size.value)
    rc = lib.compress2(out, ctypes.byref(size), raw, len(raw), level)
    if rc != 0:
        raise zlib.error(f"compress2 failed ({rc})")
    return out.raw[:size.value]


def uncompress(data: bytes, length: int) -> bytes:
    """The ``length`` bytes ``data`` (a zlib stream) holds, the GIL held throughout."""
    lib = _lib
    if lib is None:
        raw = zlib.decompress(data)
    else:
        size = ctypes.c_ulong(length)
        out = ctypes.create_string_buffer(max(length, 1))
        rc = lib.uncompress(out, ctypes.byref(size), data, len(data))
        if rc != 0:
            raise zlib.error(f"uncompress failed ({rc}): a damaged blob")
        raw = out.raw[:size.value]
    if len(raw) != length:
        raise zlib.error(f"uncompressed {len(raw)} bytes, not {length}: a damaged blob")
    return raw
