#!/usr/bin/env python
"""Generate ``sample_ortho.tif``, a synthetic aerial orthophoto of a town block.

The scene -- streets with markings and sidewalks, a parking lot, houses and
larger buildings, lawns, hedges, trees, cars and small clutter -- is drawn
procedurally with a seeded numpy RNG, so running

    python sample_data/make_sample.py [OUTPUT.tif]

always rewrites the same file (default: ``sample_ortho.tif`` next to this
script). Every surface carries a height in metres: roofs and tree crowns are
shaded from their slopes and everything casts shadows away from a south-east
sun. Only numpy and rasterio are needed.
"""
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.transform import from_origin

WIDTH, HEIGHT = 2048, 1536
RES = 0.10                          # metres per pixel
ORIGIN = (368000.0, 5808000.0)      # upper-left corner, near Potsdam
CRS = "EPSG:25833"                  # ETRS89 / UTM zone 33N
SEED = 25833
JPEG_QUALITY = 90
DESCRIPTION = ("Synthetic orthophoto-like urban scene (not real imagery), drawn by "
               "sample_data/make_sample.py of the isprs_seg project.")

PAD = 256                           # noise fields reach this far past the image edges
SUN_ELEV = np.radians(50.0)         # sun azimuth 135 deg (south-east)
LIGHT = np.array([np.cos(SUN_ELEV) * 0.7071, np.cos(SUN_ELEV) * 0.7071, np.sin(SUN_ELEV)])
SHADOW = np.array([0.40, 0.44, 0.55], np.float32)   # colour of shadowed light
FACE_GRAD = np.array([[0, 1], [0, -1], [1, 0], [-1, 0]], np.float32)  # N, S, W, E slopes

LAWN, DRY = (92, 114, 60), (150, 142, 98)
ASPHALT, LOT, SIDEWALK = (106, 106, 108), (96, 96, 99), (168, 164, 156)
CURB, PAINT, PAVING = (196, 194, 188), (228, 228, 222), (158, 148, 136)
ROOFS = [(166, 82, 58), (138, 76, 52), (182, 104, 72), (126, 124, 120), (72, 72, 78)]
GRAVEL = (150, 148, 142)
LEAVES = [(58, 88, 42), (70, 98, 48), (48, 76, 40), (80, 104, 54), (42, 64, 44)]
CARS = [(226, 226, 222), (224, 224, 220), (172, 174, 178), (150, 152, 156), (36, 36, 40),
        (78, 80, 84), (150, 30, 32), (40, 62, 122), (28, 38, 66), (190, 180, 150)]
UMBRELLAS = [(200, 60, 50), (230, 220, 200), (60, 110, 70)]
CLUTTER = [(60, 60, 62), (40, 70, 130), (110, 80, 50), (200, 180, 40), (210, 210, 205)]


def smooth_noise(rng, h, w, cell):
    """Zero-mean random field with features of about ``cell`` pixels (upsampled grid)."""
    g = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
    fy, fx = np.arange(h) / cell, np.arange(w) / cell
    iy, ix = fy.astype(int), fx.astype(int)
    ty, tx = (fy - iy)[:, None], (fx - ix)[None, :]
    ty, tx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)
    top = g[iy][:, ix] * (1 - tx) + g[iy][:, ix + 1] * tx
    bot = g[iy + 1][:, ix] * (1 - tx) + g[iy + 1][:, ix + 1] * tx
    return (top * (1 - ty) + bot * ty).astype(np.float32)


def fractal(rng, h, w, cells, gain=0.6):
    """Sum of smooth noise octaves, normalised to unit standard deviation."""
    f = sum(gain ** i * smooth_noise(rng, h, w, c) for i, c in enumerate(cells))
    return f / f.std()


def blur(a, n=1):
    """Separable [1, 2, 1] / 4 smoothing of the first two axes, applied ``n`` times."""
    pad = [(1, 1), (1, 1)] + [(0, 0)] * (a.ndim - 2)
    for _ in range(n):
        p = np.pad(a, pad, mode="edge")
        p = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
        a = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) / 4
    return a


def slope_shade(gx, gy):
    """Lambert shading relative to flat ground for slopes dz/dx, dz/dy (y points south)."""
    cos = (-gx * LIGHT[0] - gy * LIGHT[1] + LIGHT[2]) / np.sqrt(1 + gx ** 2 + gy ** 2)
    return 0.35 + 0.65 * np.clip(cos, 0, None) / LIGHT[2]


class Scene:
    """RGB image plus surface height (m); primitives paint where they are not below."""

    def __init__(self, seed=SEED):
        self.rng = np.random.default_rng(seed)
        self.img = np.zeros((HEIGHT, WIDTH, 3), np.float32)
        self.z = np.zeros((HEIGHT, WIDTH), np.float32)
        shape = (HEIGHT + 2 * PAD, WIDTH + 2 * PAD)
        self.coarse = fractal(self.rng, *shape, (300, 110, 40))
        self.fine = fractal(self.rng, *shape, (6, 2))

    def noise(self, x0, y0, w, h, coarse=False):
        """Slice of a global noise field covering the given pixel window."""
        f = self.coarse if coarse else self.fine
        return f[y0 + PAD:y0 + PAD + h, x0 + PAD:x0 + PAD + w]

    def paint(self, x0, y0, mask, rgb, z=0.0):
        """Paint ``rgb`` where ``mask`` is set and height ``z`` is not below the scene."""
        h, w = mask.shape
        gy0, gx0, gy1, gx1 = max(y0, 0), max(x0, 0), min(y0 + h, HEIGHT), min(x0 + w, WIDTH)
        if gy0 >= gy1 or gx0 >= gx1:
            return
        loc = (slice(gy0 - y0, gy1 - y0), slice(gx0 - x0, gx1 - x0))
        glob = (slice(gy0, gy1), slice(gx0, gx1))
        z = np.broadcast_to(np.float32(z), mask.shape)[loc]
        rgb = np.broadcast_to(np.asarray(rgb, np.float32), mask.shape + (3,))[loc]
        m = mask[loc] & (z >= self.z[glob])
        self.img[glob][m] = rgb[m]
        self.z[glob][m] = z[m]

    def rect(self, x0, y0, x1, y1, rgb, amp=0.05, z=0.0):
        """Axis-aligned rectangle with a little texture."""
        h, w = y1 - y0, x1 - x0
        col = np.asarray(rgb, np.float32) * (1 + amp * self.noise(x0, y0, w, h))[..., None]
        self.paint(x0, y0, np.ones((h, w), bool), col, z)

    def disc(self, cx, cy, r, rgb, z=0.0, amp=0.04):
        """Filled circle."""
        n = int(r) + 1
        yy, xx = np.mgrid[-n:n + 1, -n:n + 1]
        tex = 1 + amp * self.noise(cx - n, cy - n, 2 * n + 1, 2 * n + 1)
        col = np.asarray(rgb, np.float32) * tex[..., None]
        self.paint(cx - n, cy - n, np.hypot(xx, yy) < r, col, z)

    def roof(self, wings, rgb, kind="gable", eave=6.0, pitch=38.0, solar=False, chimney=True):
        """Roof over the union of rectangles ``wings`` (x0, y0, x1, y1).

        ``kind`` is "gable" (ridge along each wing's long side), "hip" or "flat"
        (with parapet and rooftop units). Overlapping wings meet in valleys.
        """
        X0, Y0 = min(w[0] for w in wings), min(w[1] for w in wings)
        X1, Y1 = max(w[2] for w in wings), max(w[3] for w in wings)
        yy, xx = np.mgrid[Y0:Y1, X0:X1] + 0.5
        dist = np.full(yy.shape, -np.inf)
        face, owner, gap = np.zeros(yy.shape, int), np.zeros(yy.shape, int), np.zeros(yy.shape)
        for i, (x0, y0, x1, y1) in enumerate(wings):
            d = np.stack([yy - y0, y1 - yy, xx - x0, x1 - xx])   # to N, S, W, E eaves
            inside = (d > 0).all(0)
            if kind == "gable":                                # slopes only across the ridge
                d[[2, 3] if x1 - x0 >= y1 - y0 else [0, 1]] = np.inf
            srt = np.sort(d, axis=0)
            better = inside & (srt[0] > dist)
            dist[better], face[better], owner[better] = srt[0][better], d.argmin(0)[better], i
            gap[better] = (srt[1] - srt[0])[better]
        mask = np.isfinite(dist)
        dist = np.maximum(dist, 0)
        k = 0.0 if kind == "flat" else np.tan(np.radians(pitch))
        grad = FACE_GRAD[face] * k
        shade = slope_shade(grad[..., 0], grad[..., 1])
        z = eave + k * RES * dist
        tex = 1 + 0.05 * self.noise(X0, Y0, X1 - X0, Y1 - Y0) \
            + 0.05 * self.noise(X0, Y0, X1 - X0, Y1 - Y0, coarse=True)
        col = np.asarray(rgb, np.float32)
        if kind == "flat":
            rim = dist < 4
            tex[rim] += 0.2
            z = z + 0.4 * rim
        else:
            tex += 0.04 * np.sin(2 * np.pi * dist / 3.6)      # courses of tiles
            tex[gap < 1.5] *= 0.82                             # ridge and hip tiles
        img = col * (shade * tex)[..., None]
        if solar:                                  # rectangular panels on the sunny face
            x0, y0, x1, y1 = wings[0]
            along = x1 - x0 >= y1 - y0             # ridge runs east-west: sunny face is S
            a, a0, a1 = (xx, x0, x1) if along else (yy, y0, y1)
            run = (y1 - y0 if along else x1 - x0) / 2
            end = max(run if kind == "hip" else 0, 0.2 * (a1 - a0)) + 3
            m = (owner == 0) & (face == (1 if along else 3)) & (dist > 5) & (dist < run - 5) \
                & (a > a0 + end) & (a < a1 - end)
            grid = ((a - a0) % 11 < 1) | (dist % 17 < 1)
            panel = np.where(grid[..., None], (88, 92, 108), (36, 42, 64)) * shade[..., None]
            img[m], z = panel[m], z + 0.15 * m
        self.paint(X0, Y0, mask, img, z)
        x0, y0, x1, y1 = wings[0]
        if kind == "flat":                                     # rooftop units
            size = max(min(x1 - x0, y1 - y0) // 5, 12)
            for _ in range(self.rng.integers(1, 2 + size // 6)):
                w, h = self.rng.integers(8, size, 2)
                ux = int(self.rng.integers(x0 + 10, max(x1 - w - 10, x0 + 11)))
                uy = int(self.rng.integers(y0 + 10, max(y1 - h - 10, y0 + 11)))
                top = eave + 0.4 + self.rng.uniform(0.8, 2.0)
                self.rect(ux, uy, ux + w, uy + h, (184, 184, 180), z=top)
        elif chimney:
            along = x1 - x0 >= y1 - y0
            t = self.rng.uniform(0.2, 0.8)
            cx = int(x0 + t * (x1 - x0)) if along else (x0 + x1) // 2 + 5
            cy = (y0 + y1) // 2 - 6 if along else int(y0 + t * (y1 - y0))
            top = float(z[cy - Y0, cx - X0]) + 1.0
            self.rect(cx - 4, cy - 4, cx + 4, cy + 4, (118, 70, 56), z=top)
            self.rect(cx - 2, cy - 2, cx + 2, cy + 2, (50, 45, 42), z=top)

    def foliage(self, x0, y0, mask, z, rgb):
        """Vegetation of height ``z`` (m) with a leafy, lumpy and shaded surface."""
        h, w = mask.shape
        z = z + 0.25 * smooth_noise(self.rng, h, w, 4) + 0.3 * smooth_noise(self.rng, h, w, 9)
        gy, gx = np.gradient(z / RES)
        shade = np.clip(slope_shade(gx, gy), 0.3, 1.4)
        shade = shade * (1 + 0.06 * self.noise(x0, y0, w, h))
        col = np.asarray(rgb, np.float32) * shade[..., None]
        self.paint(x0, y0, mask, col, z)

    def tree(self, cx, cy, r, top, rgb):
        """Round, slightly irregular crown of radius ``r`` px with its top at ``top`` m."""
        n = int(r * 1.2) + 3
        yy, xx = np.mgrid[-n:n + 1, -n:n + 1]
        rr = r * (1 + 0.12 * smooth_noise(self.rng, 2 * n + 1, 2 * n + 1, max(r // 3, 2)))
        d = np.hypot(xx, yy)
        z = top - r * RES + np.sqrt(np.clip(rr ** 2 - d ** 2, 0, None)) * RES
        self.foliage(cx - n, cy - n, d < rr, z, rgb)

    def hedge(self, x0, y0, x1, y1, height=1.8):
        """Clipped hedge along a rectangle."""
        yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
        across = (yy - (y0 + y1) / 2) if x1 - x0 > y1 - y0 else (xx - (x0 + x1) / 2)
        half = min(x1 - x0, y1 - y0) / 2
        z = height - half * RES + np.sqrt(np.clip(half ** 2 - across ** 2, 0, None)) * RES
        self.foliage(x0, y0, np.ones(yy.shape, bool), z, (44, 70, 36))

    def car(self, cx, cy, vertical=False, flip=False, rgb=None, length=45, width=18):
        """Car seen from above: body, bonnet, dark windscreen, roof and rear window."""
        rgb = np.asarray(CARS[self.rng.integers(len(CARS))] if rgb is None else rgb, np.float32)
        v, u = np.mgrid[0:width, 0:length] + 0.5
        cu, cv = np.clip(u, 4, length - 4), np.clip(v, 4, width - 4)
        mask = np.hypot(u - cu, v - cv) < 4
        f = u / length
        cabin = (f > 0.30) & (f < 0.80)
        glass = cabin & ((f < 0.42) | (f > 0.72) | (v < 3.5) | (v > width - 3.5))
        body = rgb * (1 - 0.2 * np.abs(v / width - 0.5))[..., None]   # rounded flanks
        col = np.where(cabin[..., None], rgb * 1.06, body)
        col = np.where(glass[..., None], (34, 38, 46), col).astype(np.float32)
        z = np.where(cabin, 1.45, 0.95)
        if flip:
            mask, col, z = mask[:, ::-1], col[:, ::-1], z[:, ::-1]
        if vertical:
            mask, col, z = mask.T, col.transpose(1, 0, 2), z.T
        h, w = mask.shape
        self.paint(cx - w // 2, cy - h // 2, mask, col, z)

    def is_lawn(self, x, y):
        """True if pixel (x, y) is inside the image and still bare, green ground."""
        if not (0 <= x < WIDTH and 0 <= y < HEIGHT) or self.z[y, x] > 0:
            return False
        r, g, b = self.img[y, x]
        return g > r + 8

    def random_trees(self, x0, y0, x1, y1, n, rmin=22, rmax=55):
        """Up to ``n`` trees with centres on lawn inside a rectangle."""
        for _ in range(n):
            for _ in range(20):
                cx, cy = int(self.rng.integers(x0, x1)), int(self.rng.integers(y0, y1))
                if self.is_lawn(cx, cy):
                    r = int(self.rng.integers(rmin, rmax))
                    self.tree(cx, cy, r, 5 + 0.16 * r + self.rng.uniform(0, 2),
                              LEAVES[self.rng.integers(len(LEAVES))])
                    break

    def shadows(self):
        """Darken every pixel whose ray towards the sun is blocked by a taller surface."""
        drop = RES * np.sqrt(2) * np.tan(SUN_ELEV)    # ray rise per diagonal pixel step
        z, lit = self.z, np.ones(self.z.shape, bool)
        for k in range(1, int(z.max() / drop) + 1):
            lit[:-k, :-k] &= z[k:, k:] - k * drop <= z[:-k, :-k] + 0.05
        s = blur(1 - lit.astype(np.float32), 2)[..., None]
        self.img *= 1 - s * (1 - SHADOW)

    def finish(self):
        """Slight optical blur, haze and sensor noise; returns a (3, H, W) uint8 array."""
        img = blur(self.img, 2) * 0.94 + 10
        img += self.rng.normal(0, 1.2, img.shape).astype(np.float32)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8).transpose(2, 0, 1)


def ground(s):
    """Lawn everywhere, with dry patches and fine texture."""
    c, f = s.noise(0, 0, WIDTH, HEIGHT, coarse=True), s.noise(0, 0, WIDTH, HEIGHT)
    dry = np.clip((c - 0.6) * 1.2, 0, 1)[..., None]
    col = (1 - dry) * np.float32(LAWN) + dry * np.float32(DRY)
    s.img[:] = col * (1 + 0.07 * c + 0.06 * f)[..., None]


def hstreet(s, x0, x1, y0, y1, walk):
    """East-west street sidewalks and curbs; the carriageway is drawn later."""
    s.rect(x0, y0 - walk, x1, y0, SIDEWALK, 0.04)
    s.rect(x0, y1, x1, y1 + walk, SIDEWALK, 0.04)
    s.rect(x0, y0 - 2, x1, y1 + 2, CURB, 0.03)


def vstreet(s, x0, x1, y0, y1, walk):
    """North-south street sidewalks and curbs; the carriageway is drawn later."""
    s.rect(x0 - walk, y0, x0, y1, SIDEWALK, 0.04)
    s.rect(x1, y0, x1 + walk, y1, SIDEWALK, 0.04)
    s.rect(x0 - 2, y0, x1 + 2, y1, CURB, 0.03)


def streets(s):
    """Main street, cross street with parked cars and zebra crossing, side street."""
    hstreet(s, -10, WIDTH + 10, 480, 580, 30)
    vstreet(s, 1185, 1255, -10, HEIGHT + 10, 25)
    hstreet(s, -10, 1190, 1200, 1260, 22)
    for box in [(-10, 480, WIDTH + 10, 580), (1185, -10, 1255, HEIGHT + 10),
                (-10, 1200, 1185, 1260)]:
        s.rect(*box, ASPHALT, 0.07)                           # carriageways
    for x0, y0, x1, y1 in [(0, 480, WIDTH, 580), (1185, 0, 1255, HEIGHT)]:
        for _ in range(6):                                    # repaired patches
            pw = int(s.rng.integers(12, min(60, (x1 - x0) // 2)))
            ph = int(s.rng.integers(12, min(60, (y1 - y0) // 2)))
            px, py = int(s.rng.integers(x0, x1 - pw)), int(s.rng.integers(y0, y1 - ph))
            s.rect(px, py, px + pw, py + ph, (92, 92, 95), 0.06)
    for x in range(0, WIDTH, 90):                             # lane and parking-lane lines
        if not 1120 < x < 1290:
            s.rect(x, 518, x + 30, 521, PAINT, 0.08)
    s.rect(-10, 556, 1130, 558, PAINT, 0.08)
    s.rect(1290, 556, WIDTH + 10, 558, PAINT, 0.08)
    for y in range(0, HEIGHT, 90):
        if not 440 < y < 620:
            s.rect(1219, y, 1222, y + 30, PAINT, 0.08)
    for y in range(484, 578, 10):                             # zebra crossing and stop line
        s.rect(1118, y, 1158, y + 5, PAINT, 0.08)
    s.rect(1100, 482, 1104, 519, PAINT, 0.08)
    for x in range(1189, 1253, 10):
        s.rect(x, 592, x + 5, 632, PAINT, 0.08)
    for x in range(15, 1100, 62):                             # parked along the main street
        if s.rng.random() < 0.75:
            s.car(x + int(s.rng.integers(0, 10)), 568, flip=s.rng.random() < 0.2)
    for y in list(range(30, 420, 60)) + list(range(660, 1500, 60)):
        if s.rng.random() < 0.6:
            s.car(1198, y + int(s.rng.integers(0, 8)), vertical=True)
    for x in range(20, 1120, 70):
        if s.rng.random() < 0.45:
            s.car(x, 1212, flip=True)
    s.car(420, 500, flip=True)
    s.car(1650, 540)
    s.car(1240, 880, vertical=True, flip=True)
    for x, y in [(300, 530), (900, 500), (1220, 300), (1230, 1100), (600, 1230)]:
        s.disc(x, y, 3.5, (70, 70, 72))                      # manhole covers


def parking_lot(s):
    """Parking lot east of the cross street: stall lines, parked cars, oil stains."""
    s.rect(1255, 700, 1300, 760, ASPHALT, 0.07)
    s.rect(1300, 630, 1985, 930, LOT, 0.07)
    for y0, y1 in [(635, 685), (755, 805), (805, 855)]:
        for i in range(27):
            x = 1310 + 25 * i
            s.rect(x, y0, x + 2, y1, PAINT, 0.1)
            if i < 26 and s.rng.random() < 0.65:
                s.car(x + 13 + int(s.rng.integers(-2, 3)), (y0 + y1) // 2, vertical=True,
                      flip=s.rng.random() < 0.5)
            elif i < 26:
                s.disc(x + 13, (y0 + y1) // 2, 6, (84, 84, 86), amp=0.1)
    s.rect(1310, 804, 1985, 806, PAINT, 0.1)
    s.rect(1940, 880, 1972, 925, (46, 88, 60), 0.05, z=1.6)   # recycling containers
    s.rect(1900, 888, 1930, 925, (150, 150, 150), 0.05, z=1.6)


def houses(s, x0, x1, front, back):
    """Row of detached houses between the street line ``front`` and the plot line ``back``."""
    rng = s.rng
    sgn = 1 if back > front else -1
    x = x0
    while x < x1 - 170:
        plot = int(min(rng.integers(200, 270), x1 - x))
        w, d = int(rng.integers(100, min(165, plot - 70))), int(rng.integers(85, 120))
        hx = x + 55 + int(rng.integers(0, plot - 70 - w + 1))
        ya = front + sgn * int(rng.integers(45, 75))
        hy0, hy1 = sorted((ya, ya + sgn * d))
        dy0, dy1 = sorted((front, ya + sgn * 45))             # driveway
        s.rect(x + 12, dy0, x + 44, dy1, PAVING, 0.04)
        if rng.random() < 0.6:
            s.car(x + 28, front + sgn * 30, vertical=True, flip=sgn < 0)
        for i in range(rng.integers(0, 4)):                   # bins
            s.rect(x + 46 + 8 * i, front + sgn * 8 - 3, x + 52 + 8 * i, front + sgn * 8 + 4,
                   CLUTTER[rng.integers(4)], z=1.1)
        wings = [(hx, hy0, hx + w, hy1)]
        back_edge = hy1 if sgn > 0 else hy0
        if rng.random() < 0.4:                               # L-shaped house
            ww, ext = int(rng.integers(40, 60)), int(rng.integers(40, 70))
            wx = hx if rng.random() < 0.5 else hx + w - ww
            wy0, wy1 = sorted((back_edge - sgn * 10, back_edge + sgn * ext))
            wings.append((wx, wy0, wx + ww, wy1))
            back_edge += sgn * ext
        kind = ["gable", "gable", "hip", "flat"][rng.integers(4)]
        colour = GRAVEL if kind == "flat" else ROOFS[rng.integers(len(ROOFS))]
        s.roof(wings, colour, kind, eave=rng.uniform(5.5, 7.0), pitch=rng.uniform(30, 45),
               solar=kind != "flat" and rng.random() < 0.3)
        tx = hx + int(rng.integers(5, max(w - 60, 6)))        # terrace with furniture
        ty0, ty1 = sorted((back_edge, back_edge + sgn * 32))
        s.rect(tx, ty0, tx + 55, ty1, (190, 176, 156), 0.05)
        s.rect(tx + 20, ty0 + 10, tx + 32, ty0 + 20, CLUTTER[4], 0.02, z=0.75)
        if rng.random() < 0.5:
            s.disc(tx + 45, ty0 + 16, 12, UMBRELLAS[rng.integers(3)], z=2.3)   # parasol
        g0, g1 = sorted((back_edge + sgn * 45, back))
        if g1 - g0 > 60 and rng.random() < 0.35:              # pool
            px, py = x + int(rng.integers(20, plot - 110)), int(rng.integers(g0, g1 - 50))
            s.rect(px - 4, py - 4, px + 84, py + 44, (205, 203, 196), 0.03)
            s.rect(px, py, px + 80, py + 40, (70, 160, 190), 0.03)
        elif g1 - g0 > 60 and rng.random() < 0.4:             # trampoline
            cx, cy = x + int(rng.integers(40, plot - 40)), int(rng.integers(g0 + 20, g1 - 20))
            s.disc(cx, cy, 20, (40, 42, 46), z=1.0)
        if g1 - g0 > 50 and rng.random() < 0.5:               # garden shed
            sx = x + int(rng.integers(10, plot - 40))
            sy = (back - 30) if sgn > 0 else back + 8
            s.roof([(sx, sy, sx + 30, sy + 22)], ROOFS[rng.integers(len(ROOFS))], eave=2.2,
                   pitch=20, chimney=False)
        s.random_trees(x + 15, g0, x + plot - 15, g1, int(rng.integers(1, 4)))
        if rng.random() < 0.6:
            s.hedge(x + plot - 6, min(front, back) + (10 if sgn > 0 else 0), x + plot + 6,
                    max(front, back) - (0 if sgn > 0 else 10))
        x += plot


def big_buildings(s):
    """Flat-roofed office, dark hip-roofed apartment block, L-shaped gabled block, playground."""
    s.rect(1300, 210, 1770, 440, (128, 126, 122), 0.05)       # office yard
    s.roof([(1330, 40, 1960, 200), (1780, 40, 1960, 410)], GRAVEL, "flat", eave=11.0)
    for x in range(1330, 1740, 70):
        if s.rng.random() < 0.7:
            s.car(x, 410, vertical=True)
    s.rect(1280, 1085, 1400, 1105, PAVING, 0.04)
    s.roof([(1400, 1000, 1880, 1200)], ROOFS[4], "hip", eave=9.0, pitch=30, chimney=False)
    s.roof([(1350, 1330, 1700, 1460), (1580, 1330, 1700, 1600)], ROOFS[0], eave=8.0, pitch=40,
           solar=True)
    s.rect(1760, 1290, 1960, 1440, (206, 190, 150), 0.08)     # playground with clutter
    s.rect(1790, 1320, 1850, 1326, (120, 80, 50), z=2.5)
    s.rect(1880, 1350, 1890, 1410, (190, 60, 50), z=1.5)
    s.disc(1820, 1400, 14, (60, 110, 170), z=0.8)


def build(seed=SEED):
    """Draw the whole scene; returns a (3, H, W) uint8 array."""
    s = Scene(seed)
    ground(s)
    streets(s)
    parking_lot(s)
    houses(s, -int(s.rng.integers(40, 120)), 1150, front=450, back=0)
    houses(s, -int(s.rng.integers(40, 120)), 1150, front=610, back=894)
    houses(s, -int(s.rng.integers(40, 120)), 1150, front=1178, back=894)
    houses(s, -int(s.rng.integers(40, 120)), 1150, front=1282, back=1600)
    big_buildings(s)
    for x in range(60, WIDTH, 130):                           # street trees
        if not 1100 < x < 1300:
            r = int(s.rng.integers(36, 48))
            s.tree(x + int(s.rng.integers(-10, 10)), 462, r, 13.0, LEAVES[1])
    for y in range(660, HEIGHT, 140):
        s.tree(1268, y, int(s.rng.integers(34, 44)), 12.0, LEAVES[3])
    s.random_trees(1290, 620, WIDTH, HEIGHT, 30, 25, 65)
    s.random_trees(1290, 200, WIDTH, 450, 6, 25, 50)
    s.shadows()
    return s.finish()


def write(img, path):
    """Write a tiled, JPEG/YCbCr-compressed GeoTIFF with internal average overviews."""
    profile = dict(driver="GTiff", width=WIDTH, height=HEIGHT, count=3, dtype="uint8", crs=CRS,
                   transform=from_origin(*ORIGIN, RES, RES), tiled=True, blockxsize=512,
                   blockysize=512, compress="JPEG", photometric="YCBCR", jpeg_quality=JPEG_QUALITY,
                   interleave="pixel")
    with rasterio.Env(JPEG_QUALITY_OVERVIEW=JPEG_QUALITY, GDAL_TIFF_OVR_BLOCKSIZE=512):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(img)
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
            dst.update_tags(TIFFTAG_IMAGEDESCRIPTION=DESCRIPTION)
            dst.build_overviews([2, 4, 8], Resampling.average)


def main(argv=None):
    """Write the sample to the path given as first argument, or next to this script."""
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else Path(__file__).resolve().parent / "sample_ortho.tif"
    write(build(), path)
    size = path.stat().st_size
    print(f"wrote {path} ({size} bytes)")
    if size >= 1_000_000:
        sys.exit("sample is too large for the repository (limit 1,000,000 bytes)")


if __name__ == "__main__":
    main()
