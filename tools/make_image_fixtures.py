#!/usr/bin/env python3
"""Write tests/fixtures/images/: test images in every PIL mode the decoder
meets, and for each the uint8 RGB image the reference pipeline produces
before ToTensor (PIL: resize shorter side to n BICUBIC, center crop n,
convert("RGB")), as <file>.n<N>.rgb (n*n*3 bytes, HWC).  Also Pillow's
plain RGB bicubic resizes of one photo as resize_<w>x<h>.rgb.
Needs Debian's python3-pil (made with Pillow 9.4.0 and libjpeg62-turbo
2.1.5, libwebp 1.2.4, libtiff 4.5.0); ycck.jpg comes from libjpeg directly
(PIL cannot write YCCK).  The other formats are written by
tools/make_image_fixtures_formats.py (run from here), HEIC and AVIF with
libheif's heif-enc, their expected pixels from heif-convert.
    python3 tools/make_image_fixtures.py tests/fixtures/images
"""
import json
import os
import struct
import sys
import zlib

from PIL import Image

OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)


def ramp(w, h, mode):
    """A deterministic picture with edges, gradients and texture."""
    im = Image.new("RGB", (w, h))
    px = im.load()
    for y in range(h):
        for x in range(w):
            r = (x * 255) // max(1, w - 1)
            g = (y * 255) // max(1, h - 1)
            b = 255 if ((x // 5 + y // 7) % 2) else 30
            if (x - w // 2) ** 2 + (y - h // 2) ** 2 < (min(w, h) // 3) ** 2:
                r, g, b = 250 - g // 2, 20 + r // 3, (x * y) % 256
            px[x, y] = (r, g, b)
    return im if mode == "RGB" else im.convert(mode)


def alpha_plane(w, h):
    a = Image.new("L", (w, h))
    px = a.load()
    for y in range(h):
        for x in range(w):
            px[x, y] = 0 if x < w // 6 else 255 if x > 5 * w // 6 else (x * 7 + y * 3) % 256
    return a


def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


def raw_png(path, w, h, ct, bd, rows, plte=None, trns=None):
    s = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bd, ct, 0, 0, 0))
    if plte:
        s += chunk(b"PLTE", plte)
    if trns:
        s += chunk(b"tRNS", trns)
    s += chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + r for r in rows))) + chunk(b"IEND", b"")
    open(path, "wb").write(s)


def pack_bits(vals, bd):
    out, acc, n = bytearray(), 0, 0
    for v in vals:
        acc = (acc << bd) | v
        n += bd
        if n == 8:
            out.append(acc)
            acc, n = 0, 0
    if n:
        out.append(acc << (8 - n))
    return bytes(out)


files = []


def add(name, sizes):
    files.append((name, sizes))


p = lambda n: os.path.join(OUT, n)

# JPEG variants
ramp(90, 60, "RGB").convert("CMYK").save(p("cmyk.jpg"), quality=90)
add("cmyk.jpg", [32])
add("ycck.jpg", [32])  # written by a libjpeg program, see the README
ramp(64, 80, "RGB").save(p("s444.jpg"), quality=92, subsampling=0)
add("s444.jpg", [32])
ramp(81, 64, "RGB").save(p("s422.jpg"), quality=92, subsampling=1)
add("s422.jpg", [32])
ramp(70, 90, "L").save(p("gray_prog.jpg"), quality=85, progressive=True)
add("gray_prog.jpg", [32])
ramp(800, 600, "RGB").save(p("big.jpg"), quality=75)
add("big.jpg", [224])

# PNG variants
im = ramp(50, 70, "L").convert("LA")
im.putalpha(alpha_plane(50, 70))
im.save(p("la.png"))
add("la.png", [32])
im = ramp(61, 40, "RGB").convert("RGBA")
im.putalpha(alpha_plane(61, 40))
im.save(p("rgba_wide.png"))
add("rgba_wide.png", [32])
im = ramp(32, 32, "RGB").convert("RGBA")
im.putalpha(alpha_plane(32, 32))
im.save(p("rgba_same.png"))
add("rgba_same.png", [32])
im = ramp(32, 50, "RGB").convert("RGBA")
im.putalpha(alpha_plane(32, 50))
im.save(p("rgba_vonly.png"))
add("rgba_vonly.png", [32])

# 16-bit PNGs, written by hand
w, h = 40, 52
g16 = [[(30 + (x * 190) // (w - 1)) * 257 + (y % 7) for x in range(w)] for y in range(h)]
raw_png(p("gray16.png"), w, h, 0, 16, [b"".join(struct.pack(">H", v) for v in r) for r in g16])
add("gray16.png", [32])
g16hi = [[(x * 65535) // (w - 1) for x in range(w)] for y in range(h)]
raw_png(p("gray16_high.png"), w, h, 0, 16, [b"".join(struct.pack(">H", v) for v in r) for r in g16hi])
add("gray16_high.png", [32])
src = ramp(w, h, "RGB").load()
al = alpha_plane(w, h).load()
rows = [b"".join(struct.pack(">HHH", min(65535, src[x, y][0] * 257 + x), min(65535, src[x, y][1] * 257 + y), src[x, y][2] * 257)
                 for x in range(w)) for y in range(h)]
raw_png(p("rgb16.png"), w, h, 2, 16, rows)
add("rgb16.png", [32])
rows = [b"".join(struct.pack(">HHHH", src[x, y][0] * 257, src[x, y][1] * 257, min(65535, src[x, y][2] * 257 + 3),
                             min(65535, al[x, y] * 257 + x)) for x in range(w)) for y in range(h)]
raw_png(p("rgba16.png"), w, h, 6, 16, rows)
add("rgba16.png", [32])
rows = [b"".join(struct.pack(">HH", min(65535, src[x, y][1] * 257 + 5), al[x, y] * 257) for x in range(w)) for y in range(h)]
raw_png(p("la16.png"), w, h, 4, 16, rows)
add("la16.png", [32])

# low bit depths and palettes
w, h = 37, 29
for bd in (1, 2, 4):
    rows = [pack_bits([((x // 3 + y // 2) * 5 + x * y) % (1 << bd) for x in range(w)], bd) for y in range(h)]
    raw_png(p("gray%d.png" % bd), w, h, 0, bd, rows)
    add("gray%d.png" % bd, [32])
    plte = bytes(((i * 97) % 256, (i * 31 + 60) % 256, (255 - i * 17) % 256)[c] for i in range(1 << bd) for c in range(3))
    raw_png(p("pal%d.png" % bd), w, h, 3, bd, rows, plte=plte)
    add("pal%d.png" % bd, [32])
rows = [bytes(((x * 7 + y * 3) % 16) for x in range(w)) for y in range(h)]
plte = bytes(((i * 53) % 256, (i * 19) % 256, (i * 101) % 256)[c] for i in range(16) for c in range(3))
raw_png(p("pal_trns.png"), w, h, 3, 8, rows, plte=plte, trns=bytes((i * 16) % 256 for i in range(10)))
add("pal_trns.png", [32])
rows = [bytes(((x * 11 + y * 5) % 256) for x in range(w)) for y in range(h)]
raw_png(p("gray_trns.png"), w, h, 0, 8, rows, trns=struct.pack(">H", 55))
add("gray_trns.png", [32])
ramp(w, h, "RGB").save(p("rgb_trns.png"), transparency=(250, 20, 0))
add("rgb_trns.png", [32])

# geometry: Python's round-half-even centre offsets, upscaling
for (w, h) in ((32, 41), (32, 43), (43, 32), (10, 30), (33, 47)):
    name = "geom_%dx%d.png" % (w, h)
    ramp(w, h, "RGB").save(p(name))
    add(name, [32])
add("geom_33x47.png", [16, 24])

# interlaced PNG: PIL cannot write Adam7, write the raw interlaced passes
w, h = 23, 19
img = ramp(w, h, "RGB").load()
passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
data = b""
for (x0, y0, dx, dy) in passes:
    xs = list(range(x0, w, dx))
    ys = list(range(y0, h, dy))
    if not xs or not ys:
        continue
    for y in ys:
        data += b"\x00" + b"".join(bytes(img[x, y]) for x in xs)
s = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1))
s += chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b"")
open(p("interlaced.png"), "wb").write(s)
add("interlaced.png", [32])

# ---- WebP, GIF, TIFF, BMP, EXIF orientation, HEIC/AVIF ----------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "make_image_fixtures_formats.py")).read())

manifest = []
for name, sizes in files:
    im0 = Image.open(p(name))
    for n in sizes:
        im = Image.open(p(name))
        # load first: Pillow turns a TIFF by its Orientation tag on load
        # (and Pillow >= 10.1 reports the turned size before it), so the
        # size is the loaded image's
        im.load()
        if im.mode in ("I;16", "I;16B"):
            # Pillow 9.4 cannot resize I;16 (10 can, as vlmdb does); its
            # "I" resize is the same where nothing overshoots below 0,
            # which these smooth pictures never do
            im = im.convert("I")
        w, h = im.size
        if w <= h:
            nw, nh = n, int(n * h / w)
        else:
            nw, nh = int(n * w / h), n
        im = im.resize((nw, nh), Image.BICUBIC)
        top, left = int(round((nh - n) / 2.0)), int(round((nw - n) / 2.0))
        im = im.crop((left, top, left + n, top + n)).convert("RGB")
        open(p("%s.n%d.rgb" % (name, n)), "wb").write(im.tobytes())
        manifest.append({"file": name, "size": n, "pil_mode": im0.mode})

photo = Image.open(os.path.join(OUT, "..", "clip-tiny", "photo_rgb.jpg")).convert("RGB")
small = Image.open(os.path.join(OUT, "..", "clip-tiny", "small_upscale.png")).convert("RGB")
for src, name, (w, h) in ((photo, "photo_rgb.jpg", (123, 77)), (photo, "photo_rgb.jpg", (640, 97)),
                          (small, "small_upscale.png", (40, 61)), (small, "small_upscale.png", (9, 50))):
    out = "resize_%s_%dx%d.rgb" % (name.split(".")[0], w, h)
    open(p(out), "wb").write(src.resize((w, h), Image.BICUBIC).tobytes())
    manifest.append({"resize_of": "clip-tiny/" + name, "size": [w, h], "rgb": out})
manifest += extra_manifest
json.dump(manifest, open(p("manifest.json"), "w"), indent=1)
