"""A labelled grid of images (PNG) for people to look at: rows are frames, columns are views."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


PERSON_TINT = (40, 220, 60)


def tint(rgb: np.ndarray, mask: np.ndarray, color=PERSON_TINT, alpha: float = 0.45) -> np.ndarray:
    """(H, W, 3) uint8 copy of rgb with the (H, W) bool mask's pixels blended towards `color` by `alpha`."""
    out = rgb.copy()
    out[mask] = (out[mask] * (1 - alpha) + np.asarray(color) * alpha).astype(np.uint8)
    return out


def contact_sheet(rows: list[list[np.ndarray | None]], column_titles: list[str], row_titles: list[str],
                  tile_height: int = 200) -> Image.Image:
    """Grid of (H, W, 3) uint8 or (H, W) images, each scaled to tile_height; None leaves a grey tile."""
    label_h, label_w, pad = 22, 150, 4
    widths = []
    for c in range(len(column_titles)):
        shapes = [r[c].shape for r in rows if r[c] is not None]
        widths.append(int(round(tile_height * shapes[0][1] / shapes[0][0])) if shapes else tile_height)
    sheet_w = label_w + sum(widths) + pad * (len(widths) + 1)
    sheet_h = label_h + len(rows) * (tile_height + pad) + pad
    sheet = Image.new("RGB", (sheet_w, sheet_h), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    x = label_w + pad
    for title, w in zip(column_titles, widths):
        draw.text((x + 4, 5), title, fill=(235, 235, 235))
        x += w + pad
    for r, (row, row_title) in enumerate(zip(rows, row_titles)):
        y = label_h + r * (tile_height + pad)
        draw.text((6, y + tile_height // 2 - 6), row_title, fill=(235, 235, 235))
        x = label_w + pad
        for image, w in zip(row, widths):
            if image is None:
                tile = Image.new("RGB", (w, tile_height), (90, 90, 90))
            else:
                tile = Image.fromarray(image if image.ndim == 3 else np.repeat(image[..., None], 3, -1))
                tile = tile.resize((w, tile_height), Image.BILINEAR)
            sheet.paste(tile, (x, y))
            x += w + pad
    return sheet
