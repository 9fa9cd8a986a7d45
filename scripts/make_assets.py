"""Draw the example images in assets/ (run once; the files are committed)."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parents[1] / "assets"


def beach(w=640, h=420):
    rng = np.random.default_rng(1)
    y = np.linspace(0, 1, h)[:, None, None]
    sky = np.concatenate([110 + 90 * y, 170 + 60 * y, 240 - 20 * y], axis=2) * np.ones((1, w, 1))
    img = Image.fromarray(sky.astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse([480, 50, 560, 130], fill=(255, 236, 140))
    d.rectangle([0, 200, w, 300], fill=(30, 110, 170))
    for i in range(14):
        x = rng.integers(0, w)
        d.line([x, 210 + 6 * i, x + 60, 210 + 6 * i], fill=(200, 230, 250), width=2)
    d.polygon([(0, 300), (w, 280), (w, h), (0, h)], fill=(232, 206, 150))
    d.rectangle([120, 250, 126, 330], fill=(90, 60, 30))
    d.pieslice([60, 215, 190, 300], 180, 360, fill=(220, 60, 60))
    px = np.asarray(img).astype(np.int16)
    px[300:] += rng.integers(-12, 12, size=px[300:].shape)
    return Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)


def street(w=640, h=420):
    img = Image.new("RGB", (w, h), (150, 190, 230))
    d = ImageDraw.Draw(img)
    colors = [(180, 90, 70), (200, 180, 140), (120, 120, 140), (210, 150, 90), (90, 110, 100)]
    x = 0
    for i, c in enumerate(colors * 2):
        bw, bh = 70 + 13 * (i % 3), 140 + 37 * (i % 4)
        d.rectangle([x, 300 - bh, x + bw, 300], fill=c)
        for wy in range(300 - bh + 15, 290, 30):
            for wx in range(x + 10, x + bw - 15, 22):
                d.rectangle([wx, wy, wx + 10, wy + 14], fill=(240, 230, 160))
        x += bw + 4
    d.rectangle([0, 300, w, h], fill=(70, 70, 75))
    for sx in range(0, w, 60):
        d.rectangle([sx, 355, sx + 30, 362], fill=(240, 240, 240))
    d.rounded_rectangle([400, 320, 520, 370], 10, fill=(200, 30, 40))
    d.ellipse([410, 360, 435, 385], fill=(20, 20, 20))
    d.ellipse([485, 360, 510, 385], fill=(20, 20, 20))
    return img.filter(ImageFilter.SMOOTH)


def chart(w=640, h=420):
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((220, 15), "Visitors per month", fill="black")
    d.line([60, 360, 600, 360], fill="black", width=2)
    d.line([60, 40, 60, 360], fill="black", width=2)
    values = [120, 180, 150, 260, 300, 240]
    for i, (month, v) in enumerate(zip(["Jan", "Feb", "Mar", "Apr", "May", "Jun"], values, strict=True)):
        x = 90 + i * 85
        d.rectangle([x, 360 - v, x + 50, 360], fill=(60, 120, 200))
        d.text((x + 12, 368), month, fill="black")
        d.text((x + 12, 345 - v), str(v), fill="black")
    return img


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    beach().save(OUT / "beach.jpg", quality=85)
    street().save(OUT / "street.jpg", quality=85)
    chart().save(OUT / "chart.png", optimize=True)
