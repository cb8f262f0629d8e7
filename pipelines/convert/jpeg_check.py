"""Catch JPEGs whose scan data ends early although PIL decodes them "successfully".

A JPEG cut short by an EOI marker inside its scan (or whose header claims more rows or columns
than its data holds) decodes in PIL without an error: libjpeg warns "premature end of data
segment" (PIL drops libjpeg's warnings) and fills every block after the break with zero
coefficients, i.e. mid-gray. PIL's `load()` only raises when the *file* ends before the data.

The fill always reaches the last block, so a decoded JPEG whose bottom-right pixel is not the fill
value is complete (one pixel read: no cost). When it is the fill value (or a genuinely gray image
ends there), the file is decoded again at 1/8 scale with libturbojpeg, which reports libjpeg's
warnings. Without libturbojpeg, a suspect whose whole last row is the fill value is refused.
Misses: a progressive JPEG that ends after its first full scans decodes blurry, not gray, and
passes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import BinaryIO

from PIL import Image

# Zero coefficients decode to 128 in every channel; PIL reads Adobe (inverted) CMYK as 255 - 128.
_FILL = {"RGB": {(128, 128, 128)}, "L": {128}, "CMYK": {(127, 127, 127, 127), (128, 128, 128, 128)}}
_TJ_PIXEL_FORMAT = {"RGB": 0, "L": 6, "CMYK": 11}  # TJPF_RGB, TJPF_GRAY, TJPF_CMYK
_TJERR_WARNING = 0


def early_end(img: Image.Image, fp: BinaryIO) -> str | None:
    """Why the decoded JPEG `img` (loaded from the file `fp`) is incomplete, or None when whole."""
    fill = _FILL.get(img.mode)
    if fill is None or img.getpixel((img.width - 1, img.height - 1)) not in fill:
        return None
    lib = _turbojpeg()
    if lib is None:
        row = img.crop((0, img.height - 1, img.width, img.height)).getcolors(1)
        return "premature end of data (its last row is the decoder's gray fill)" if row else None
    fp.seek(0)
    return _turbojpeg_warning(lib, fp.read(), _TJ_PIXEL_FORMAT[img.mode])


@functools.cache
def _turbojpeg() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("turbojpeg")
    try:
        lib = ctypes.CDLL(name or "libturbojpeg.so.0")
    except OSError:
        return None
    lib.tjInitDecompress.restype = ctypes.c_void_p
    lib.tjDestroy.argtypes = [ctypes.c_void_p]
    lib.tjDecompressHeader3.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong] + [
        ctypes.POINTER(ctypes.c_int)] * 4
    lib.tjDecompress2.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p] + [
        ctypes.c_int] * 5
    lib.tjGetErrorStr2.argtypes = [ctypes.c_void_p]
    lib.tjGetErrorStr2.restype = ctypes.c_char_p
    lib.tjGetErrorCode.argtypes = [ctypes.c_void_p]
    return lib


def _turbojpeg_warning(lib: ctypes.CDLL, data: bytes, pixel_format: int) -> str | None:
    """libjpeg's first warning decoding `data` at 1/8 scale, or None when it has none."""
    handle = lib.tjInitDecompress()
    if not handle:
        return None
    try:
        w, h, subsamp, colorspace = (ctypes.c_int() for _ in range(4))
        if lib.tjDecompressHeader3(handle, data, len(data), *map(ctypes.byref, (w, h, subsamp, colorspace))):
            return None  # PIL read this header: keep what it decoded
        sw, sh = -(-w.value // 8), -(-h.value // 8)  # the 1/8 DCT scale: cheapest decode
        out = ctypes.create_string_buffer(sw * sh * 4)
        failed = lib.tjDecompress2(handle, data, len(data), out, sw, 0, sh, pixel_format, 0)
        # A warning (libjpeg went on, filling with gray) is the answer; a fatal error (a colour
        # conversion turbojpeg lacks) says nothing about the data, and PIL did decode it.
        if failed and lib.tjGetErrorCode(handle) == _TJERR_WARNING:
            return lib.tjGetErrorStr2(handle).decode("ascii", "replace").strip()
        return None
    finally:
        lib.tjDestroy(handle)
