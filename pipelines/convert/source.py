"""An ImageNet-layout folder (`root/<class>/<image>`) as a sorted list of samples, and robust reading.

Labels are the sorted class-folder names, as torchvision's `ImageFolder` assigns them, except that
hidden folders (`.ipynb_checkpoints`, `.Trash`) are never classes. Files are found recursively
under each class folder and kept when their extension is one `ImageFolder` accepts (any case).
Hidden files, files with other extensions and files outside a class folder are *ignored* (listed,
not counted as errors). Whether a kept file is really an image is only known when it is decoded:
`read_rgb` either returns an RGB image or raises `UnreadableImage` with a one-line reason.

Hostile layouts: symlinked folders are followed, but each real folder is read once (a symlink loop,
or a second link to a folder already read, is ignored with the first path as the reason), so no
file is counted twice. A folder that cannot be listed (permissions) is *unreadable*: listed with
its reason and counted against the converter's unreadable limit. File and folder names need not be
UTF-8: they are kept as the OS gives them (surrogate escapes) and shown with `printable`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.errors import DataError
from pipelines.convert.jpeg_check import early_end

# torchvision.datasets.folder.IMG_EXTENSIONS, compared in lower case.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Antialiased triangle filter, as torchvision's Resize: about 1.6x faster than bicubic here, where
# resizing 500x375 to 256 took as long as decoding it.
RESAMPLE = Image.Resampling.BILINEAR

# The most pixels one image may decode to (after JPEG draft scaling): 2**27 RGB pixels = 384 MiB.
# JPEGs of any size pass (they are decoded at 1/2, 1/4 or 1/8 scale); a larger PNG/TIFF is refused.
MAX_DECODED_PIXELS = 1 << 27


class UnreadableImage(Exception):
    """A file that cannot be decoded into an image; the message is the reason, in one line."""


@dataclass(frozen=True, slots=True)  # one per source image: no __dict__ each
class Sample:
    path: str  # relative to the source root, with forward slashes
    label: int


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str
    kind: str  # "ignored" (not an image by name) or "unreadable" (an image name that fails to decode)


@dataclass(frozen=True)
class Source:
    root: Path
    classes: tuple[str, ...]  # index = label; folder names as the OS gives them
    samples: tuple[Sample, ...]  # sorted by (label, path)
    ignored: tuple[Skipped, ...]
    unreadable: tuple[Skipped, ...] = ()  # folders that could not be listed

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Printable class name -> label, as a manifest records it."""
        return {printable(name): i for i, name in enumerate(self.classes)}


def printable(name: str | os.PathLike) -> str:
    """A path or name as text any output (JSON, a UTF-8 terminal) accepts: bytes of the name that
    are not UTF-8 (which Python keeps as surrogate escapes) are shown as \\xNN, and control characters
    (a newline in a file name) as \\n, \\xNN...: one name never spans two lines of a message or list."""
    return os.fsencode(name).decode("utf-8", "backslashreplace").translate(_CONTROL_ESCAPES)


_CONTROL_ESCAPES = {c: repr(chr(c))[1:-1] for c in [*range(32), 127]}


def _hidden(name: str) -> bool:
    return name.startswith(".")


def scan(root: str | os.PathLike, limit: int | None = None) -> Source:
    """List the candidate images under `root`. `limit` keeps that many, evenly spaced over the
    sorted list, so a quick trial still covers every class in proportion."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{printable(root)}: not a directory (expected an ImageNet-layout folder "
                        "root/<class>/<image>)")
    try:
        entries = _entries(root)
    except OSError as err:
        raise DataError(f"{printable(root)}: cannot be listed ({err.strerror})") from None
    classes = tuple(name for name, is_dir in entries if is_dir and not _hidden(name))
    if not classes:
        raise DataError(f"{printable(root)}: no class folders (expected root/<class>/<image>)")
    if len({printable(name) for name in classes}) < len(classes):
        raise DataError(f"{printable(root)}: two class folders print alike (names that are not "
                        "UTF-8); rename one")
    ignored = [Skipped(name + "/" * is_dir, why, "ignored") for name, is_dir in entries
               if (why := _why_ignored(name, is_dir, in_class=False))]
    unreadable = []
    seen = {}  # (device, inode) of every folder read -> its path: each is read once
    for rel in ("", *classes):
        with contextlib.suppress(OSError):  # a class folder that cannot be stat'ed fails when listed
            seen.setdefault(_identity(root / rel), (rel or ".") + "/")
    samples = []
    for label, name in enumerate(classes):
        for rel in _files_under(root, name, seen, ignored, unreadable):
            samples.append(Sample(rel, label))
    if limit is not None and limit < len(samples):
        samples = [samples[i * len(samples) // limit] for i in range(limit)]
    return Source(root, classes, tuple(samples), tuple(ignored), tuple(unreadable))


def _entries(folder: Path) -> list[tuple[str, bool]]:
    """(name, is a folder) of each entry, sorted by name; symlinks to folders count as folders."""
    with os.scandir(folder) as it:
        return sorted((e.name, e.is_dir()) for e in it)


def _identity(folder: Path) -> tuple[int, int]:
    st = os.stat(folder)  # follows symlinks: the real folder
    return st.st_dev, st.st_ino


def _why_ignored(name: str, is_dir: bool, in_class: bool) -> str | None:
    """Why a directory entry is passed over; None for a class folder, subfolder or image file."""
    if _hidden(name):
        return "hidden folder" if is_dir else "hidden file"
    if is_dir:
        return None
    if not in_class:
        return "not inside a class folder"
    if not name.lower().endswith(IMAGE_EXTENSIONS):
        return f"not an image extension ({Path(name).suffix or 'none'})"
    return None


def _files_under(root: Path, class_name: str, seen: dict, ignored: list[Skipped],
                 unreadable: list[Skipped]) -> list[str]:
    """Image-named files below one class folder, sorted; everything else goes to `ignored`, and
    folders that cannot be listed to `unreadable`. `seen`: the folders already read (see scan)."""
    found, folders = [], [class_name]
    while folders:
        rel_dir = folders.pop()
        try:
            entries = _entries(root / rel_dir)
        except OSError as err:
            unreadable.append(Skipped(rel_dir + "/", f"cannot list folder ({type(err).__name__}: "
                                      f"{err.strerror})", "unreadable"))
            continue
        for name, is_dir in entries:
            rel = f"{rel_dir}/{name}"
            why = _why_ignored(name, is_dir, in_class=True)
            if why:
                ignored.append(Skipped(rel + "/" * is_dir, why, "ignored"))
            elif not is_dir:
                found.append(rel)
            else:
                try:
                    first = seen.setdefault(_identity(root / rel), rel + "/")
                except OSError as err:
                    unreadable.append(Skipped(rel + "/", f"cannot stat folder ({err.strerror})", "unreadable"))
                    continue
                if first == rel + "/":
                    folders.append(rel)
                else:
                    ignored.append(Skipped(rel + "/", f"the same folder as {first} (a symlink "
                                           "loop or a second link): read once", "ignored"))
    return sorted(found)


# ---- reading ---------------------------------------------------------------------------------

def fit_within(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(w, h) scaled so the longest side is at most `max_side`; never enlarged."""
    w, h = size
    if max_side is None or max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


@contextlib.contextmanager
def _pil_size_check_off():
    # PIL refuses images over 2 * MAX_IMAGE_PIXELS when *opening*, before we could ask the JPEG
    # decoder for a reduced-scale (draft) decode; read_rgb applies its own limit to the decoded size.
    # Process-global while it lasts: the converter reads images in single-threaded processes.
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def read_rgb(path: str | os.PathLike, max_side: int | None = None) -> Image.Image:
    """Decode one file into an RGB image whose longest side is at most `max_side`.

    Handles CMYK and grayscale JPEGs, PNGs with a .JPEG name (the content decides, not the name),
    palette/alpha/16-bit images, and very large JPEGs (decoded at reduced scale). Raises
    UnreadableImage for empty, truncated, corrupt and non-image files. EXIF orientation is not
    applied, as in torchvision's loader.
    """
    try:
        f = open(path, "rb")
    except OSError as err:
        raise UnreadableImage(f"cannot open ({type(err).__name__}: {err.strerror})") from None
    try:
        with f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data", palette transparency
            if os.fstat(f.fileno()).st_size == 0:
                raise UnreadableImage("empty file (0 bytes)")
            with _pil_size_check_off():
                img = Image.open(f)
            target = fit_within(img.size, max_side)
            if img.format == "JPEG":
                img.draft(None, target)  # libjpeg DCT scaling: decodes at >= target, much cheaper
            w, h = img.size
            if w * h > MAX_DECODED_PIXELS:
                raise UnreadableImage(f"too large: {w}x{h} pixels to decode (limit {MAX_DECODED_PIXELS})")
            img.load()
            if img.format == "JPEG" and (why := early_end(img, f)):
                raise UnreadableImage(f"truncated or corrupt ({why})")
            rgb = _to_rgb(img)
    except UnreadableImage:
        raise
    except Image.UnidentifiedImageError:
        raise UnreadableImage("not an image (unknown format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        # OSError: truncated or broken data; SyntaxError/ValueError: PIL's parse errors.
        raise UnreadableImage(f"truncated or corrupt ({type(err).__name__}: {err})") from None
    if rgb.size != target:
        rgb = rgb.resize(target, RESAMPLE)
    return rgb


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16"):
        # 16-bit grayscale: PIL's convert would clip to 255; keep the top 8 bits instead.
        return Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")  # as torchvision's loader: alpha dropped, CMYK converted without ICC
