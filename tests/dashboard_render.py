"""Render a page in headless Chromium and look at it: the DOM after the scripts ran, and the PNG.

Used by ``tests/e2e/test_dashboard.py``. Chromium is Debian's ``chromium`` package
(``make chromium``); PNGs are decoded here with ``zlib`` so the check needs no imaging library.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

# The dashboard's line colours (``COLORS`` in app/web/static/dashboard.html), used nowhere else on the page.
PLACED = (0x0A, 0x84, 0xFF)
FINISHED = (0x12, 0xA1, 0x50)
P50 = (0x8E, 0x44, 0xAD)
P99 = (0xE8, 0x59, 0x0C)
LAG = (0xC2, 0x18, 0x5B)
# The legend swatches are translucent, so pixels of a line's exact colour are plotted data; a
# lone point is a dot of about 20 of them.
MIN_LINE_PIXELS = 20

WINDOW = (1400, 1900)


def chromium() -> str | None:
    """The Chromium binary, or None where it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    binary = chromium()
    assert binary, "chromium is not installed (make chromium)"
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",  # tests may run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        "--mute-audio",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        # Timers run in virtual time, paused while a fetch is pending: several polls, no waiting.
        "--virtual-time-budget=7000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def dump_dom(url: str) -> str:
    """The page's DOM after its scripts ran."""
    run = _run(["--dump-dom", url])
    assert run.returncode == 0 and "<html" in run.stdout, run.stderr[-2000:]
    return run.stdout


def screenshot(url: str, path: Path) -> Path:
    """A PNG of the rendered page."""
    run = _run([f"--screenshot={path}", url])
    assert run.returncode == 0 and path.exists(), run.stderr[-2000:]
    return path


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str]] = {}
        self.text: dict[str, str] = {}
        self._open: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if "id" in values:
            self.by_id[values["id"]] = values
            self.text[values["id"]] = ""
            self._open.append((tag, values["id"]))

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            self.text[ident] += data


def elements(dom: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Attributes and text of every element with an id."""
    parser = _Elements()
    parser.feed(dom)
    return parser.by_id, parser.text


@dataclass
class Image:
    """A decoded 8-bit RGB(A) PNG."""

    width: int
    height: int
    rows: list[bytes]
    channels: int

    def count(self, rgb: tuple[int, int, int], tolerance: int = 24) -> int:
        """Pixels within ``tolerance`` of ``rgb`` on every channel."""
        r0, g0, b0 = rgb
        n = 0
        for row in self.rows:
            for i in range(0, len(row), self.channels):
                if (
                    abs(row[i] - r0) <= tolerance
                    and abs(row[i + 1] - g0) <= tolerance
                    and abs(row[i + 2] - b0) <= tolerance
                ):
                    n += 1
        return n


def read_png(path: Path) -> Image:
    """Decode a non-interlaced 8-bit RGB or RGBA PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return Image(width, height, rows, channels)
