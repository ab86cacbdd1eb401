# The WebP, GIF, TIFF, BMP, EXIF-orientation and HEIC/AVIF fixtures of
# tests/fixtures/images.  Run by tools/make_image_fixtures.py (exec'd in
# its namespace: ramp, alpha_plane, pack_bits, add, p, OUT), not alone.
#
# Pillow writes what it can; the layouts it cannot write (16-bit RGB and
# associated-alpha TIFF, separate planes, tiles, min-is-white, 4-bit
# palettes; 16-bit, top-down, bitfield and RLE BMPs, the OS/2 header) are
# written by the small writers below, and Pillow reads them all: its
# reading is the oracle.  HEIC and AVIF (which Pillow 9.4 cannot read) are
# written by heif-enc; their oracle is heif-convert's PNG (libheif's own
# decode), and the pipeline output is Pillow's on that PNG.
import io
import subprocess
import tempfile

from PIL import ImageOps

extra_manifest = []


def rgba_ramp(w, h):
    im = ramp(w, h, "RGB").convert("RGBA")
    im.putalpha(alpha_plane(w, h))
    return im


def pipeline(im, n):
    """The reference: resize shorter side to n BICUBIC in the image's
    mode, centre crop, convert("RGB")."""
    w, h = im.size
    if w <= h:
        nw, nh = n, int(n * h / w)
    else:
        nw, nh = int(n * w / h), n
    im = im.resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - n) / 2.0)), int(round((nw - n) / 2.0))
    return im.crop((left, top, left + n, top + n)).convert("RGB")


# ---- WebP ------------------------------------------------------------------
ramp(53, 41, "RGB").save(p("webp_lossless.webp"), lossless=True)
ramp(53, 41, "RGB").save(p("webp_lossy.webp"), quality=80)
rgba_ramp(45, 60).save(p("webp_alpha.webp"), quality=85)
rgba_ramp(45, 60).save(p("webp_alpha_lossless.webp"), lossless=True)
frames = [rgba_ramp(48, 36), rgba_ramp(48, 36).transpose(Image.Transpose.FLIP_LEFT_RIGHT),
          ramp(48, 36, "RGB").convert("RGBA")]
frames[0].save(p("webp_anim.webp"), save_all=True, append_images=frames[1:], duration=80,
               quality=80)
for f in ("webp_lossless.webp", "webp_lossy.webp", "webp_alpha.webp", "webp_alpha_lossless.webp",
          "webp_anim.webp"):
    add(f, [32])

# ---- GIF -------------------------------------------------------------------
pal_im = ramp(47, 33, "RGB").quantize(colors=64)
pal_im.save(p("gif_interlaced.gif"))  # Pillow interlaces images of 16 px and more
pal_im.save(p("gif_pal.gif"), interlace=False)
pal_im.save(p("gif_trns.gif"), transparency=5)
g = [ramp(40, 30, "RGB").quantize(colors=32),
     ramp(40, 30, "RGB").transpose(Image.Transpose.ROTATE_180).quantize(colors=32)]
g[0].save(p("gif_anim.gif"), save_all=True, append_images=g[1:], duration=100)
# a gray-ramp palette (entry i = (i, i, i)): Pillow opens it as L
gray = Image.new("P", (36, 28))
gray.putpalette(bytes(v for i in range(256) for v in (i, i, i)))
gray.putdata([(x * 7 + y * 5) % 256 for y in range(28) for x in range(36)])
gray.save(p("gif_gray.gif"), optimize=False)


def gif_offset(src, dst, grow, at):
    """The first frame at `at` of a logical screen grown by `grow`."""
    b = bytearray(open(p(src), "rb").read())
    w, h = struct.unpack("<HH", b[6:10])
    b[6:10] = struct.pack("<HH", w + grow[0], h + grow[1])
    i = 13 + (3 << ((b[10] & 7) + 1) if b[10] & 0x80 else 0)
    while b[i] == 0x21:  # extensions: label, then sub-blocks
        i += 2
        while b[i]:
            i += b[i] + 1
        i += 1
    assert b[i] == 0x2C
    b[i + 1:i + 5] = struct.pack("<HH", *at)
    open(p(dst), "wb").write(bytes(b))


gif_offset("gif_trns.gif", "gif_offset_trns.gif", (9, 6), (4, 3))
gif_offset("gif_pal.gif", "gif_offset.gif", (5, 11), (5, 2))
for f in ("gif_interlaced.gif", "gif_pal.gif", "gif_trns.gif", "gif_anim.gif", "gif_gray.gif",
          "gif_offset_trns.gif", "gif_offset.gif"):
    add(f, [32])

# ---- TIFF ------------------------------------------------------------------
ramp(44, 31, "RGB").save(p("tiff_rgb.tif"))
ramp(44, 31, "RGB").save(p("tiff_lzw.tif"), compression="tiff_lzw")
ramp(44, 31, "RGB").save(p("tiff_jpeg.tif"), compression="jpeg", quality=90)
rgba_ramp(38, 50).save(p("tiff_rgba.tif"), compression="tiff_deflate")
ramp(44, 31, "L").save(p("tiff_gray.tif"))
ramp(44, 31, "L").convert("1").save(p("tiff_g4.tif"), compression="group4")
ramp(44, 31, "RGB").quantize(colors=40).save(p("tiff_pal.tif"))
ramp(44, 31, "RGB").convert("CMYK").save(p("tiff_cmyk.tif"), compression="packbits")
im = ramp(38, 50, "L").convert("LA")
im.putalpha(alpha_plane(38, 50))
im.save(p("tiff_la.tif"))
w16, h16 = 40, 29
# values 40..560: gray tones survive the convert("RGB") clip at 255
g16 = b"".join(struct.pack("<H", 40 + (x * 500) // (w16 - 1) + (y % 7) * 3)
               for y in range(h16) for x in range(w16))
Image.frombytes("I;16", (w16, h16), g16).save(p("tiff_gray16.tif"))
Image.frombytes("I;16B", (w16, h16), b"".join(g16[i + 1:i + 2] + g16[i:i + 1]
                                              for i in range(0, len(g16), 2))).save(p("tiff_gray16b.tif"))
for f in ("tiff_rgb.tif", "tiff_lzw.tif", "tiff_jpeg.tif", "tiff_rgba.tif", "tiff_gray.tif",
          "tiff_g4.tif", "tiff_pal.tif", "tiff_cmyk.tif", "tiff_la.tif", "tiff_gray16.tif",
          "tiff_gray16b.tif"):
    add(f, [32])


def write_tiff(path, samples, bps, photometric, be=False, extra=(), planar=1, orientation=None,
               colormap=None, rowsperstrip=None, tile=None):
    """An uncompressed TIFF of samples[y][x] = tuple of ints (spp each)."""
    E = ">" if be else "<"
    h, w, spp = len(samples), len(samples[0]), len(samples[0][0])

    def pack_row(vals):
        if bps == 16:
            return b"".join(struct.pack(E + "H", v) for v in vals)
        return bytes(vals) if bps == 8 else pack_bits(vals, bps)

    planes = [list(range(spp))] if planar == 1 else [[c] for c in range(spp)]
    chunks = []
    if tile:
        tw, th = tile
        for pl in planes:
            for ty in range(0, h, th):
                for tx in range(0, w, tw):
                    chunks.append(b"".join(
                        pack_row([(samples[y][x] if y < h and x < w else (0,) * spp)[c]
                                  for x in range(tx, tx + tw) for c in pl])
                        for y in range(ty, ty + th)))
    else:
        rps = rowsperstrip or h
        for pl in planes:
            for y0 in range(0, h, rps):
                chunks.append(b"".join(pack_row([samples[y][x][c] for x in range(w) for c in pl])
                                       for y in range(y0, min(h, y0 + rps))))
    tags = {256: (4, [w]), 257: (4, [h]), 258: (3, [bps] * spp), 259: (3, [1]),
            262: (3, [photometric]), 277: (3, [spp]), 284: (3, [planar])}
    if extra:
        tags[338] = (3, list(extra))
    if orientation:
        tags[274] = (3, [orientation])
    if colormap:
        tags[320] = (3, colormap)
    if tile:
        tags[322], tags[323] = (4, [tile[0]]), (4, [tile[1]])
        off_tag, cnt_tag = 324, 325
    else:
        tags[278] = (4, [rowsperstrip or h])
        off_tag, cnt_tag = 273, 279
    offsets, pos = [], 8
    for c in chunks:
        offsets.append(pos)
        pos += len(c)
    tags[off_tag], tags[cnt_tag] = (4, offsets), (4, [len(c) for c in chunks])
    ifd_off = pos + (pos & 1)
    entries = sorted(tags.items())
    blob_off = ifd_off + 2 + 12 * len(entries) + 4
    ifd, blob = struct.pack(E + "H", len(entries)), b""
    for tag, (typ, vals) in entries:
        raw = b"".join(struct.pack(E + ("H" if typ == 3 else "I"), v) for v in vals)
        if len(raw) <= 4:
            ifd += struct.pack(E + "HHI", tag, typ, len(vals)) + raw.ljust(4, b"\0")
        else:
            ifd += struct.pack(E + "HHII", tag, typ, len(vals), blob_off + len(blob))
            blob += raw + (b"\0" if len(raw) & 1 else b"")
    ifd += struct.pack(E + "I", 0)
    head = (b"MM\0*" if be else b"II*\0") + struct.pack(E + "I", ifd_off)
    open(path, "wb").write(head + b"".join(chunks) + (b"\0" if pos & 1 else b"") + ifd + blob)


W, H = 37, 26
rgb = ramp(W, H, "RGB").load()
al = alpha_plane(W, H).load()
px = [[rgb[x, y] for x in range(W)] for y in range(H)]
write_tiff(p("tiff_rgb16.tif"), [[tuple(min(65535, v * 257 + x) for v in px[y][x]) for x in range(W)]
                                 for y in range(H)], 16, 2)
# associated (premultiplied) alpha: Pillow unpremultiplies it
premul = [[tuple(v * al[x, y] // 255 for v in px[y][x]) + (al[x, y],) for x in range(W)]
          for y in range(H)]
write_tiff(p("tiff_rgba_assoc.tif"), premul, 8, 2, extra=(1,))
write_tiff(p("tiff_rgba16_assoc.tif"), [[tuple(v * 257 for v in q) for q in r] for r in premul], 16, 2,
           be=True, extra=(1,))
write_tiff(p("tiff_rgbx.tif"), [[px[y][x] + (al[x, y],) for x in range(W)] for y in range(H)], 8, 2,
           extra=(0,))
write_tiff(p("tiff_gray4_white.tif"), [[((x + 2 * y) % 16,) for x in range(W)] for y in range(H)], 4, 0)
write_tiff(p("tiff_gray2.tif"), [[((x // 3 + y) % 4,) for x in range(W)] for y in range(H)], 2, 1,
           be=True)
write_tiff(p("tiff_1bit_white.tif"), [[((x * y // 7) % 2,) for x in range(W)] for y in range(H)], 1, 0)
cmap = [(i * 4099) % 65536 for i in range(16)] + [(i * 9001 + 300) % 65536 for i in range(16)] + \
       [(65535 - i * 3000) % 65536 for i in range(16)]
write_tiff(p("tiff_pal4.tif"), [[((x * 3 + y) % 16,) for x in range(W)] for y in range(H)], 4, 3,
           colormap=cmap)
write_tiff(p("tiff_cmyk16.tif"), [[tuple(min(65535, v * 257 + x) for v in px[y][x]) + ((x * y) % 256 * 257,)
                                  for x in range(W)] for y in range(H)], 16, 5)
write_tiff(p("tiff_planar.tif"), px, 8, 2, planar=2, rowsperstrip=7)
write_tiff(p("tiff_tiled.tif"), px, 8, 2, tile=(16, 16), be=True)
write_tiff(p("tiff_orient3.tif"), px, 8, 2, orientation=3)
write_tiff(p("tiff_orient6.tif"), px, 8, 2, orientation=6)
for f in ("tiff_rgb16.tif", "tiff_rgba_assoc.tif", "tiff_rgba16_assoc.tif", "tiff_rgbx.tif",
          "tiff_gray4_white.tif", "tiff_gray2.tif", "tiff_1bit_white.tif", "tiff_pal4.tif",
          "tiff_cmyk16.tif",
          "tiff_planar.tif", "tiff_tiled.tif", "tiff_orient3.tif", "tiff_orient6.tif"):
    add(f, [32])

# ---- BMP -------------------------------------------------------------------
ramp(45, 31, "L").convert("1").save(p("bmp_1.bmp"))
ramp(45, 31, "L").save(p("bmp_8gray.bmp"))
ramp(45, 31, "RGB").quantize(colors=50).save(p("bmp_8pal.bmp"))
ramp(45, 31, "RGB").save(p("bmp_24.bmp"))
rgba_ramp(45, 31).save(p("bmp_32.bmp"))


def write_bmp(path, w, h, bits, rows=None, palette=None, topdown=False, compression=0, masks=None,
              hsize=40, pixel_data=None):
    """rows: top-down packed rows (padded here); or pixel_data as stored."""
    if pixel_data is None:
        stride = ((w * bits + 31) >> 3) & ~3
        pixel_data = b"".join(r.ljust(stride, b"\0") for r in (rows if topdown else rows[::-1]))
    pal = b"".join(bytes((b, g, r)) + (b"" if hsize == 12 else b"\0") for (r, g, b) in palette or [])
    after = b""
    if hsize == 12:
        header = struct.pack("<IHHHH", 12, w, h, 1, bits)
    else:
        header = struct.pack("<IiiHHIIiiII", hsize, w, -h if topdown else h, 1, bits, compression,
                             len(pixel_data), 2835, 2835, len(palette or []), 0)
        if hsize >= 56:
            header += struct.pack("<IIII", *(masks or (0, 0, 0, 0)))
        header = header.ljust(hsize, b"\0")
        if hsize == 40 and compression == 3:
            after = struct.pack("<III", *masks[:3])
    off = 14 + len(header) + len(after) + len(pal)
    off_pad = off & 1  # keep the pixel data word-aligned in the file
    head = b"BM" + struct.pack("<IHHI", off + off_pad + len(pixel_data), 0, 0, off + off_pad)
    open(path, "wb").write(head + header + after + pal + b"\0" * off_pad + pixel_data)


W, H = 37, 26
rgb = ramp(W, H, "RGB").load()
al = alpha_plane(W, H).load()
idx16 = [[(x * 3 + y * 2) % 16 for x in range(W)] for y in range(H)]
pal16 = [((i * 53) % 256, (i * 97 + 20) % 256, (255 - i * 13) % 256) for i in range(16)]
write_bmp(p("bmp_1pal.bmp"), W, H, 1, [pack_bits([(x // 4 + y // 3) % 2 for x in range(W)], 1)
                                       for y in range(H)], palette=[(200, 30, 40), (20, 60, 220)])
write_bmp(p("bmp_4pal.bmp"), W, H, 4, [pack_bits(r, 4) for r in idx16], palette=pal16)
write_bmp(p("bmp_24_topdown.bmp"), W, H, 24,
          [bytes(v for x in range(W) for v in rgb[x, y][::-1]) for y in range(H)], topdown=True)
write_bmp(p("bmp_32_alpha.bmp"), W, H, 32,
          [bytes(v for x in range(W) for v in rgb[x, y][::-1] + (al[x, y],)) for y in range(H)],
          compression=3, masks=(0xFF0000, 0xFF00, 0xFF, 0xFF000000), hsize=108)
write_bmp(p("bmp_32_xbgr.bmp"), W, H, 32,
          [bytes(v for x in range(W) for v in (al[x, y],) + rgb[x, y][::-1]) for y in range(H)],
          compression=3, masks=(0xFF000000, 0xFF0000, 0xFF00))
write_bmp(p("bmp_16_555.bmp"), W, H, 16,
          [b"".join(struct.pack("<H", (rgb[x, y][0] >> 3) << 10 | (rgb[x, y][1] >> 3) << 5 |
                                rgb[x, y][2] >> 3) for x in range(W)) for y in range(H)])
write_bmp(p("bmp_16_565.bmp"), W, H, 16,
          [b"".join(struct.pack("<H", (rgb[x, y][0] >> 3) << 11 | (rgb[x, y][1] >> 2) << 5 |
                                rgb[x, y][2] >> 3) for x in range(W)) for y in range(H)],
          compression=3, masks=(0xF800, 0x7E0, 0x1F))
write_bmp(p("bmp_os2.bmp"), W, H, 8, [bytes(r) for r in idx16], palette=pal16, hsize=12)


def rle(rows, rle4):
    """RLE8 / RLE4 of bottom-up rows of indices: encoded runs of 3 or
    more, absolute runs (even lengths for RLE4) between them, end of line,
    end of bitmap.  No delta: Pillow 9.4 reads four bytes for one (a bug;
    test_image.c checks deltas against the BMP specification)."""
    out = bytearray()
    for row in rows:
        x = 0
        while x < len(row):
            run = 1
            while x + run < len(row) and run < 255 and row[x + run] == row[x]:
                run += 1
            if run >= 3 or len(row) - x < 4:
                run = max(1, min(run, len(row) - x))
                v = row[x] << 4 | row[x] if rle4 else row[x]
                out += bytes((run, v))
                x += run
                continue
            n = 0  # an absolute run up to the next run of 3
            while x + n < len(row) and n < 254 and not (
                    x + n + 2 < len(row) and row[x + n] == row[x + n + 1] == row[x + n + 2]):
                n += 1
            if rle4:
                n &= ~1
            if n < 3:
                out += bytes((1, row[x] << 4 | row[x] if rle4 else row[x]))
                x += 1
                continue
            seg = row[x:x + n]
            data = bytes(seg[i] << 4 | seg[i + 1] for i in range(0, n, 2)) if rle4 else bytes(seg)
            out += bytes((0, n)) + data + (b"\0" if len(data) & 1 else b"")
            x += n
        out += b"\0\0"
    return bytes(out + b"\0\1")


src = [[(x // 5 + (y * x) % 3 + y // 4) % 16 for x in range(W)] for y in range(H)]
write_bmp(p("bmp_rle8.bmp"), W, H, 8, palette=pal16, compression=1,
          pixel_data=rle([r for r in src[::-1]], False))
write_bmp(p("bmp_rle4.bmp"), W, H, 4, palette=pal16, compression=2,
          pixel_data=rle([r for r in src[::-1]], True))
for f in ("bmp_1.bmp", "bmp_8gray.bmp", "bmp_8pal.bmp", "bmp_24.bmp", "bmp_32.bmp", "bmp_1pal.bmp",
          "bmp_4pal.bmp", "bmp_24_topdown.bmp", "bmp_32_alpha.bmp", "bmp_32_xbgr.bmp",
          "bmp_16_555.bmp", "bmp_16_565.bmp", "bmp_os2.bmp", "bmp_rle8.bmp", "bmp_rle4.bmp"):
    add(f, [32])

# ---- EXIF orientation ----------------------------------------------------------
def with_orientation(o):
    e = Image.Exif()
    e[0x0112] = o
    return e.tobytes()


upright_files = []
for o in range(1, 9):
    f = "exif_o%d.jpg" % o
    ramp(48, 32, "RGB").save(p(f), quality=90, exif=with_orientation(o))
    upright_files.append(f)
ramp(40, 28, "RGB").save(p("webp_exif.webp"), quality=85, exif=with_orientation(6))
ramp(40, 28, "RGB").save(p("png_exif.png"), exif=with_orientation(8))
upright_files += ["webp_exif.webp", "png_exif.png"]
for f in upright_files:
    add(f, [32])  # the CLIP reference ignores the orientation
    im = ImageOps.exif_transpose(Image.open(p(f)))
    rgb_name = "%s.e32.rgb" % f
    open(p(rgb_name), "wb").write(pipeline(im, 32).tobytes())
    extra_manifest.append({"file": f, "size": 32, "exif_transpose": True, "rgb": rgb_name})
    up = im.convert("RGB")
    open(p(f + ".upright.rgb"), "wb").write(up.tobytes())
    extra_manifest.append({"file": f, "upright": f + ".upright.rgb", "w": up.size[0],
                           "h": up.size[1], "channels": 3})
# a TIFF is upright once Pillow loads it
for f in ("tiff_orient3.tif", "tiff_orient6.tif"):
    up = Image.open(p(f)).convert("RGB")
    open(p(f + ".upright.rgb"), "wb").write(up.tobytes())
    extra_manifest.append({"file": f, "upright": f + ".upright.rgb", "w": up.size[0],
                           "h": up.size[1], "channels": 3})

# ---- HEIC / AVIF (heif-enc; oracle heif-convert) --------------------------------
with tempfile.TemporaryDirectory() as tmp:
    src_rgb, src_rgba = os.path.join(tmp, "rgb.png"), os.path.join(tmp, "rgba.png")
    ramp(52, 38, "RGB").save(src_rgb)
    rgba_ramp(40, 48).save(src_rgba)
    for f, src, args in (("heif_rgb.heic", src_rgb, ["-q", "70"]),
                         ("avif_rgb.avif", src_rgb, ["-A", "-q", "70"]),
                         ("avif_alpha.avif", src_rgba, ["-A", "-q", "70"])):
        subprocess.run(["heif-enc"] + args + [src, "-o", p(f)], check=True, capture_output=True)
        dec = os.path.join(tmp, f + ".png")
        subprocess.run(["heif-convert", p(f), dec], check=True, capture_output=True)
        im = Image.open(dec)
        im.load()
        ch = 4 if im.mode == "RGBA" else 3
        name = f + (".decoded.rgba" if ch == 4 else ".decoded.rgb")
        open(p(name), "wb").write(im.tobytes())
        extra_manifest.append({"file": f, "decoded": name, "w": im.size[0], "h": im.size[1],
                               "channels": ch, "oracle": "heif-convert"})
        open(p("%s.n32.rgb" % f), "wb").write(pipeline(im, 32).tobytes())
        extra_manifest.append({"file": f, "size": 32, "pil_mode": im.mode,
                               "oracle": "heif-convert"})
