"""Draws a QR code PNG (as W-API gives it) in the terminal with half-block characters.

The PNG is read with pypng; the module size is measured on the top-left finder pattern (7 modules
wide), so any scale and quiet zone work. Two rows of modules per text line keep it square.
"""

from __future__ import annotations

import png  # type: ignore[import-untyped]  # pypng ships no type hints


class NotAQrImage(ValueError):
    pass


def qr_modules(data: bytes) -> list[list[bool]]:
    """The QR's dark modules (True) from a PNG, quiet zone removed."""
    try:
        width, height, rows, _info = png.Reader(bytes=data).asRGBA8()
    except png.Error as error:
        raise NotAQrImage(f"not a PNG: {error}") from None
    dark: list[list[bool]] = []
    for row in rows:
        line = []
        for x in range(width):
            r, g, b, a = row[4 * x : 4 * x + 4]
            line.append(a > 127 and (r + g + b) < 384)
        dark.append(line)
    top = next((y for y in range(height) if any(dark[y])), None)
    if top is None:
        raise NotAQrImage("blank image")
    left = min(x for y in range(height) for x in range(width) if dark[y][x])
    right = max(x for y in range(height) for x in range(width) if dark[y][x])
    bottom = max(y for y in range(height) if any(dark[y]))
    run = 0
    while left + run < width and dark[top][left + run]:
        run += 1
    module = run / 7.0  # the finder pattern's top edge is 7 dark modules
    if module < 1:
        raise NotAQrImage("no finder pattern")
    count = round((right - left + 1) / module)
    if count < 21 or abs(round((bottom - top + 1) / module) - count) > 1:
        raise NotAQrImage("not a square QR code")
    grid = []
    for j in range(count):
        y = min(height - 1, int(top + (j + 0.5) * module))
        grid.append([dark[y][min(width - 1, int(left + (i + 0.5) * module))] for i in range(count)])
    return grid


def render(data: bytes, *, quiet: int = 2) -> str:
    """Lines of '█▀▄ ' (dark on light) that a phone can scan from the screen."""
    grid = qr_modules(data)
    size = len(grid) + 2 * quiet
    padded = [[False] * size for _ in range(quiet)]
    padded += [[False] * quiet + row + [False] * quiet for row in grid]
    padded += [[False] * size for _ in range(quiet)]
    if len(padded) % 2:
        padded.append([False] * size)
    # Printed as light-on-dark cells: a "dark" module is a space on a light background, which is
    # the inverse, so draw the light modules as blocks instead.
    lines = []
    for y in range(0, len(padded), 2):
        upper, lower = padded[y], padded[y + 1]
        chars = []
        for x in range(size):
            top_light, bottom_light = not upper[x], not lower[x]
            chars.append("█" if top_light and bottom_light else "▀" if top_light else "▄" if bottom_light else " ")
        lines.append("".join(chars))
    return "\n".join(lines)
