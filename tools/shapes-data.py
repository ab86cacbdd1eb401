#!/usr/bin/python3
"""Synthetic colour x shape pictures for training (tools/make-data.sh shapes).

The example catalogs teach a model what things are, but not the plain
vocabulary of colour and form: a model trained on them learns that "red"
means red pixels and has no word for a star.  This set draws flat shapes
(14 forms, 10 colours) at random sizes, positions, rotations and shades, on
white or pale backgrounds, sometimes outlined, and captions each with the
colour and the form in several phrasings.

One colour x shape combination in six is held out: its pictures go to
test.jsonl and never to train.jsonl, so that a model's right answers on
them come from composing a colour it knows with a form it knows, not from
having seen the pair.  The held-out combinations are listed in stats.json.

    /usr/bin/python3 tools/shapes-data.py --out data/shapes [--per 24]

Needs python3-numpy.  Deterministic: the same --seed writes the same bytes.
"""
import argparse
import json
import math
import os
import struct
import zlib

import numpy as np

COLOURS = {   # name: RGB, each shaded a little per picture
    "red": (215, 35, 35), "orange": (245, 135, 20), "yellow": (240, 205, 25),
    "green": (40, 160, 55), "blue": (35, 70, 215), "purple": (135, 45, 170),
    "pink": (245, 130, 185), "brown": (125, 75, 35), "black": (25, 25, 25),
    "grey": (135, 135, 135),
}

# forms: name -> (mask function of x, y in [-1, 1] with y down, rotates?)
def _poly(n, r=1.0, phase=-math.pi / 2):
    def f(x, y):
        a = np.arctan2(y, x) - phase
        sector = 2 * math.pi / n
        a = np.mod(a, sector) - sector / 2
        # distance to the edge of a regular n-gon of circumradius r
        return np.hypot(x, y) * np.cos(a) <= r * math.cos(math.pi / n)
    return f


def _star(x, y):
    a = np.arctan2(y, x) + math.pi / 2
    k = np.mod(a, 2 * math.pi / 5) / (2 * math.pi / 5)
    return np.hypot(x, y) <= 0.42 + 0.58 * np.abs(1 - 2 * k) ** 1.6


def _heart(x, y):
    X, Y = x * 1.25, -y * 1.25 + 0.25
    return (X * X + Y * Y - 1) ** 3 - X * X * Y ** 3 <= 0


def _crescent(x, y):
    return (x * x + y * y <= 1) & ((x - 0.45) ** 2 + (y + 0.1) ** 2 > 0.72)


def _arrow(x, y):
    shaft = (np.abs(y) <= 0.22) & (x >= -0.95) & (x <= 0.2)
    head = (x > 0.2) & (x <= 0.95) & (np.abs(y) <= (0.95 - x) * 0.9)
    return shaft | head


SHAPES = {
    "circle": (lambda x, y: x * x + y * y <= 1, False),
    "square": (lambda x, y: (np.abs(x) <= 0.82) & (np.abs(y) <= 0.82), True),
    "triangle": (_poly(3, 1.0), True),
    "star": (_star, True),
    "heart": (_heart, False),
    "diamond": (lambda x, y: np.abs(x) * 1.35 + np.abs(y) <= 1, False),
    "cross": (lambda x, y: ((np.abs(x) <= 0.3) & (np.abs(y) <= 0.95)) |
              ((np.abs(y) <= 0.3) & (np.abs(x) <= 0.95)), True),
    "ring": (lambda x, y: (x * x + y * y <= 1) & (x * x + y * y >= 0.36), False),
    "hexagon": (_poly(6, 1.0, 0.0), True),
    "pentagon": (_poly(5, 1.0), False),
    "crescent": (_crescent, True),
    "arrow": (_arrow, True),
    "rectangle": (lambda x, y: (np.abs(x) <= 0.95) & (np.abs(y) <= 0.5), True),
    "oval": (lambda x, y: (x / 0.95) ** 2 + (y / 0.6) ** 2 <= 1, True),
}

TEMPLATES = [
    "a {c} {s}", "{c} {s}", "a {s}, {c}", "a {c} {s} on a plain background",
    "a picture of a {c} {s}", "a simple {c} {s} shape", "the {s} is {c}",
    "a {s} coloured {c}", "{a} {c} {s} icon", "a flat {c} {s}",
]

BACKGROUNDS = [(255, 255, 255)] * 6 + [(242, 242, 242), (250, 246, 232),
                                       (234, 242, 250), (246, 236, 240)]


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def write_png(path, img):
    h, w, _ = img.shape
    raw = b"".join(b"\0" + img[y].tobytes() for y in range(h))

    def chunk(t, d):
        return (struct.pack(">I", len(d)) + t + d +
                struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF))
    with open(path + ".tmp", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" +
                chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
                chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    os.replace(path + ".tmp", path)


def render(rng, shape, rgb, size, ss=4):
    """One picture: the form, shaded, placed, rotated, antialiased."""
    fn, rotates = SHAPES[shape]
    n = size * ss
    scale = rng.uniform(0.24, 0.44) * n
    cx = rng.uniform(scale, n - scale)
    cy = rng.uniform(scale, n - scale)
    t = rng.uniform(-0.5, 0.5) if rotates else 0.0
    if shape == "arrow":
        t = rng.uniform(-math.pi, math.pi)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    u, v = (xx - cx) / scale, (yy - cy) / scale
    x = u * math.cos(t) + v * math.sin(t)
    y = -u * math.sin(t) + v * math.cos(t)
    inside = fn(x, y)
    shade = rng.uniform(0.85, 1.12)
    col = np.clip(np.array(rgb, np.float64) * shade, 0, 255)
    bg = np.array(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], np.float64)
    img = np.empty((n, n, 3), np.float64)
    img[:] = bg
    img[inside] = col
    if rng.random() < 0.3:   # a dark outline a few pixels wide
        w = ss * int(rng.integers(1, 3))
        grow = fn(x * (1 + w / scale), y * (1 + w / scale))
        edge = ~inside & grow
        img[edge] = col * 0.45
    img = img.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))
    return np.round(img).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--per", type=int, default=24, help="pictures per combination")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    png = os.path.join(a.out, "png")
    os.makedirs(png, exist_ok=True)
    colours, shapes = list(COLOURS), list(SHAPES)
    # hold out one combination in six, spread so that every colour and
    # every form keeps most of its other combinations in training
    held = {(c, s) for i, c in enumerate(colours) for j, s in enumerate(shapes)
            if (i + j) % 6 == 0}
    train, test = [], []
    for c in colours:
        for s in shapes:
            for v in range(a.per):
                img = render(rng, s, COLOURS[c], a.size)
                key = "shapes/%s-%s-%02d" % (c, s, v)
                path = os.path.abspath(os.path.join(png, "%s-%s-%02d.png" % (c, s, v)))
                write_png(path, img)
                caps = [t.format(c=c, s=s, a=article(c)) for t in TEMPLATES]
                order = rng.permutation(len(caps))
                row = {"key": key, "image": path, "text": caps[order[0]],
                       "texts": [caps[k] for k in order[1:]],
                       "colour": c, "shape": s}
                (test if (c, s) in held else train).append(row)
    for name, rows in (("train", train), ("test", test)):
        with open(os.path.join(a.out, name + ".jsonl.tmp"), "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
        os.replace(os.path.join(a.out, name + ".jsonl.tmp"),
                   os.path.join(a.out, name + ".jsonl"))
    stats = {"colours": colours, "shapes": shapes, "per_combination": a.per,
             "size": a.size, "seed": a.seed, "train_items": len(train),
             "test_items": len(test),
             "held_out": sorted("%s %s" % cs for cs in held)}
    with open(os.path.join(a.out, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
