"""Reading the data files every experiment names, with one clear error per bad file.

A file that is missing, a folder, not UTF-8 text, binary, or a truncated or corrupt gzip
becomes a UsageError naming the file and what is wrong with it (exit 2), never a decoding
traceback. `probe` is what `tdx data check` runs on each file it lists.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from tdx.errors import UsageError

IMAGES = (".png", ".bmp", ".jpg", ".jpeg")


def read_text(path: Path) -> str:
    """The whole text of a UTF-8 file, gunzipped if it ends in .gz."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"Data file {path} not found.")
    if path.is_dir():
        raise UsageError(f"Data file {path} is a folder, not a file.")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise UsageError(f"Data file {path} is not a complete gzip file ({e}).") from None
    except OSError as e:
        raise UsageError(f"Data file {path} cannot be read ({e.strerror}).") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"Data file {path} is not UTF-8 text: byte 0x{raw[e.start]:02x} at "
                         f"offset {e.start} ({e.reason}); convert it to UTF-8.") from None
    if "\x00" in text:
        raise UsageError(f"Data file {path} holds NUL bytes: it is binary, not text.")
    return text.removeprefix("\ufeff")


def read_lines(path: Path) -> list[str]:
    """Lines of a text file, gzipped or not, stripped (newlines as Python's text mode
    reads them: \n, \r\n or \r)."""
    text = read_text(path).replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    return [line.strip() for line in (lines[:-1] if text.endswith("\n") else lines)]


def check_image(path: Path) -> None:
    """A UsageError unless `path` is an image Pillow can decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"Data file {path} is not a readable image ({e}).") from None


def probe(path: Path) -> str | None:
    """What is wrong with a data file (None: it reads): texts are read whole (a gzip to its
    end), images decoded, a folder's images each."""
    path = Path(path)
    try:
        if path.is_dir() and not path.suffix:  # a folder of images (SR-NAM's sets)
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGES)
            if not images:
                raise UsageError(f"Data file {path} is a folder without images.")
            for image in images:
                check_image(image)
        elif path.suffix.lower() in IMAGES:
            check_image(path)
        else:
            read_text(path)
    except UsageError as e:
        return str(e)
    return None
