"""A procedural image prior: parameter vectors theta in [0, 1]^d rendered as uint8 images.

The data-free thief of `attack.synthetic` owns no image of the victim's task, only the knowledge
of what kind of task it is (here: pictograms on a background, as traffic signs, logos or icons
are). `ImagePrior` maps each row of theta to one image at the victim's input size, vectorised
over the batch in numpy (no TensorFlow): a background (flat, a two-colour gradient, smooth
noise, or a crop of one of the thief's natural images), 1-3 generic shapes (circle, ring,
triangle, inverted triangle, square, diamond, octagon, 5-7-sided polygon; fill and border
colours in HSV, so vivid colours, white and black are as likely as muddy ones), inner glyphs
(PIL's digits, letters and two-digit numbers, arrows, bars, crosses, blobs, drawn once into an
atlas), an affine warp of the whole picture, blur, lighting (brightness, contrast, a light
gradient) and pixel noise. Nothing in it is a template of any task's classes: which shapes,
colours and glyphs matter is left to the victim's answers (`attack.synthetic`'s search moves
theta).

Edges are anti-aliased from signed distances (coverage = clamp(0.5 - distance in pixels)), so
one render at the target size costs no supersampling. The renderer is deterministic: the same
theta (and the same natural images) gives the same pixels; every source of randomness (noise
fields, blobs) is a fixed bank drawn from a seeded generator when the prior is built, indexed
by theta.

Glyph styles (``glyphs``): ``default`` draws each text at a fixed font size (two-digit numbers
at 0.6 of the atlas square, so they stay small inside their shape); ``fill`` scales each text
(digit, letter, two-digit number) to fill the atlas square's longer side, as the glyph of a
sign, logo or icon fills its shape. The symbols (arrows, bars, blobs) are the same in both. A
theta means the same parameters in both; only the drawn glyph differs, so a run's style is part
of what its theta mean (`attack.synthetic` records it and replays with it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common.errors import invalid

__all__ = ["GLYPH_STYLES", "KINDS", "PRIOR_VERSION", "ImagePrior", "glyph_atlas",
           "hsv_to_rgb"]

log = logging.getLogger(__name__)

KINDS = ("circle", "ring", "triangle", "inverted_triangle", "square", "diamond", "octagon",
         "polygon")
"""The shapes a theta's kind coordinate selects, in its order."""

PRIOR_VERSION = 2
"""What a theta means: raised whenever the renderer draws the same theta differently (a run's
stored theta are only replayed by the version that wrote them)."""

BACKGROUNDS = ("flat", "gradient", "noise", "natural")

GLYPH_STYLES = ("default", "fill")
"""How the atlas draws its texts (`glyph_atlas`): at a fixed font size, or scaled to fill the
square."""
_FILL = 0.95  # the share of the atlas square a "fill" text's longer side takes

_ATLAS = 32  # side of a glyph mask in the atlas
_BANK = 32  # fixed noise fields per bank
_SHAPES = 3
_GLYPHS = 2

# (name, width) of each parameter group, in theta's order
_BACKGROUND = [("bg_kind", 1), ("bg_colour", 3), ("bg_colour2", 3), ("bg_angle", 1),
               ("bg_noise", 1), ("bg_pick", 2)]
_SHAPE = [("on", 1), ("kind", 1), ("centre", 2), ("size", 1), ("aspect", 1), ("rotation", 1),
          ("fill", 3), ("border", 3), ("border_width", 1), ("sides", 1)]
_GLYPH = [("on", 1), ("index", 1), ("colour", 3), ("offset", 2), ("size", 1), ("rotation", 1)]
_GLOBAL = [("scale", 2), ("shear", 2), ("blur", 1), ("brightness", 1), ("contrast", 1),
           ("light_angle", 1), ("light", 1), ("noise", 1), ("noise_pick", 1)]


def _layout() -> dict[str, slice]:
    groups = [("", _BACKGROUND)] + [(f"s{i}_", _SHAPE) for i in range(_SHAPES)] + \
        [(f"g{i}_", _GLYPH) for i in range(_GLYPHS)] + [("", _GLOBAL)]
    slices, at = {}, 0
    for prefix, fields in groups:
        for name, width in fields:
            slices[prefix + name] = slice(at, at + width)
            at += width
    return slices


LAYOUT = _layout()
DIM = max(s.stop for s in LAYOUT.values())


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """HSV in [0, 1] (last axis 3) -> RGB in [0, 1], vectorised."""
    h, s, v = hsv[..., 0] * 6.0, hsv[..., 1], hsv[..., 2]
    k = np.stack([(5.0 + h) % 6.0, (3.0 + h) % 6.0, (1.0 + h) % 6.0], axis=-1)
    return v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0, 1)


def _colour(hsv: np.ndarray) -> np.ndarray:
    """theta's 3 colour coordinates -> RGB: hue as it is, saturation and value pushed towards
    their ends (vivid colours, white and black are common, as in pictograms)."""
    s = np.clip(1.5 * hsv[..., 1] - 0.25, 0, 1)
    v = np.clip(1.5 * hsv[..., 2] - 0.2, 0, 1)
    return hsv_to_rgb(np.stack([hsv[..., 0], s, v], axis=-1))


def _filled_text(text: str, size: int, font) -> np.ndarray:
    """`text` drawn at 4x `font`'s size, cropped to its ink and scaled (Lanczos) so its longer
    side is `_FILL` of a `size` square, centred: float32 [size, size] in [0, 1]."""
    big = 4 * size
    image = Image.new("L", (2 * big * max(1, len(text)), 2 * big), 0)
    ImageDraw.Draw(image).text((big // 2, big // 2), text, fill=255, font=font)
    ink = image.crop(image.getbbox())
    scale = _FILL * size / max(ink.size)
    ink = ink.resize((max(1, round(ink.size[0] * scale)), max(1, round(ink.size[1] * scale))),
                     Image.LANCZOS)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(ink, ((size - ink.size[0]) // 2, (size - ink.size[1]) // 2))
    return np.asarray(canvas, np.float32) / 255.0


def glyph_atlas(size: int = _ATLAS, seed: int = 0, style: str = "default") -> np.ndarray:
    """float32 [G, size, size] masks in [0, 1]: the digits, capital letters and two-digit
    numbers 00-99 of PIL's default font (`style`: at a fixed size, or "fill": each scaled to
    fill the square), an arrow in 8 directions, bars, a cross, a plus, a bent arrow and 4
    seeded blobs."""
    if style not in GLYPH_STYLES:
        raise invalid("glyphs", style, " or ".join(GLYPH_STYLES))
    masks = []
    font = ImageFont.load_default(size=int(size * 0.85))
    narrow = ImageFont.load_default(size=int(size * 0.6))
    texts = list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") + [f"{k:02d}" for k in range(100)]
    large = ImageFont.load_default(size=4 * size) if style == "fill" else None
    for text in texts:
        if large is not None:
            masks.append(_filled_text(text, size, large))
            continue
        image = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(image)
        face = font if len(text) == 1 else narrow
        left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
        draw.text(((size - (right - left)) / 2 - left, (size - (bottom - top)) / 2 - top),
                  text, fill=255, font=face)
        masks.append(np.asarray(image, np.float32) / 255.0)
    s = size
    arrow = [(0.15, 0.42), (0.55, 0.42), (0.55, 0.22), (0.88, 0.5), (0.55, 0.78), (0.55, 0.58),
             (0.15, 0.58)]
    shapes = {
        "bar": [(0.1, 0.4), (0.9, 0.4), (0.9, 0.6), (0.1, 0.6)],
        "thin_bars": None, "cross": None, "plus": None, "bent": None,
    }
    for k in range(8):  # the arrow, rotated by k * 45 degrees about the centre
        angle = k * np.pi / 4
        c, si = np.cos(angle), np.sin(angle)
        points = [((x - 0.5) * c - (y - 0.5) * si + 0.5, (x - 0.5) * si + (y - 0.5) * c + 0.5)
                  for x, y in arrow]
        image = Image.new("L", (s, s), 0)
        ImageDraw.Draw(image).polygon([(x * s, y * s) for x, y in points], fill=255)
        masks.append(np.asarray(image, np.float32) / 255.0)
    for name in shapes:
        image = Image.new("L", (s, s), 0)
        draw = ImageDraw.Draw(image)
        if name == "bar":
            draw.polygon([(x * s, y * s) for x, y in shapes["bar"]], fill=255)
        elif name == "thin_bars":
            for y in (0.3, 0.62):
                draw.rectangle([0.15 * s, y * s, 0.85 * s, (y + 0.08) * s], fill=255)
        elif name == "cross":
            draw.line([(0.2 * s, 0.2 * s), (0.8 * s, 0.8 * s)], fill=255, width=max(1, s // 8))
            draw.line([(0.8 * s, 0.2 * s), (0.2 * s, 0.8 * s)], fill=255, width=max(1, s // 8))
        elif name == "plus":
            draw.rectangle([0.42 * s, 0.15 * s, 0.58 * s, 0.85 * s], fill=255)
            draw.rectangle([0.15 * s, 0.42 * s, 0.85 * s, 0.58 * s], fill=255)
        else:  # an arrow bent upwards then to the right
            draw.rectangle([0.3 * s, 0.35 * s, 0.44 * s, 0.85 * s], fill=255)
            draw.rectangle([0.3 * s, 0.35 * s, 0.62 * s, 0.49 * s], fill=255)
            draw.polygon([(0.6 * s, 0.2 * s), (0.85 * s, 0.42 * s), (0.6 * s, 0.64 * s)],
                         fill=255)
        masks.append(np.asarray(image, np.float32) / 255.0)
    rng = np.random.default_rng([seed, 7])
    yy, xx = np.mgrid[0:s, 0:s] / (s - 1) * 2 - 1
    for _ in range(4):  # blobs: a thresholded sum of a few Gaussian bumps
        field_ = np.zeros((s, s))
        for _ in range(4):
            cx, cy = rng.uniform(-0.5, 0.5, 2)
            width = rng.uniform(0.15, 0.4)
            field_ += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width ** 2))
        masks.append(np.clip((field_ - 0.6) * 6, 0, 1).astype(np.float32))
    return np.stack(masks).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, count: int, size: tuple[int, int],
                  coarse: int) -> np.ndarray:
    """`count` smooth noise fields [count, H, W, 3] in [-1, 1]: coarse Gaussian noise upsampled
    bilinearly."""
    h, w = size
    grid = rng.standard_normal((count, coarse + 1, coarse + 1, 3))
    ys = np.linspace(0, coarse, h)
    xs = np.linspace(0, coarse, w)
    y0, x0 = np.minimum(ys.astype(int), coarse - 1), np.minimum(xs.astype(int), coarse - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = grid[:, y0][:, :, x0] * (1 - fx) + grid[:, y0][:, :, x0 + 1] * fx
    bottom = grid[:, y0 + 1][:, :, x0] * (1 - fx) + grid[:, y0 + 1][:, :, x0 + 1] * fx
    out = top * (1 - fy) + bottom * fy
    return np.clip(out / 2.0, -1, 1).astype(np.float32)


class ImagePrior:
    """Render parameter vectors theta [N, `dim`] in [0, 1] as uint8 images [N, H, W, 3].

    Args:
        size: (H, W) of the images (the victim's input size).
        backgrounds: optional uint8 [M, H, W, 3] natural images at that size: a theta whose
            background kind falls in the "natural" quarter takes one of them (flipped or not);
            without them that quarter is a gradient.
        seed: the seed of the fixed banks (noise fields, blobs); part of what a theta means.
        glyphs: the atlas's style (`GLYPH_STYLES`); part of what a theta means.
    """

    def __init__(self, size: Sequence[int], backgrounds: np.ndarray | None = None,
                 seed: int = 0, glyphs: str = "default") -> None:
        if len(size) != 2 or min(int(v) for v in size) < 8:
            raise invalid("size", tuple(size), "(height, width), each at least 8 pixels")
        self.size = (int(size[0]), int(size[1]))
        if backgrounds is not None:
            backgrounds = np.asarray(backgrounds)
            if backgrounds.dtype != np.uint8 or backgrounds.ndim != 4 or \
                    tuple(backgrounds.shape[1:]) != (*self.size, 3) or not len(backgrounds):
                raise invalid("backgrounds", f"{backgrounds.dtype} {backgrounds.shape}",
                              f"uint8 [M, {self.size[0]}, {self.size[1]}, 3] natural images")
        self.backgrounds = backgrounds
        self.seed = int(seed)
        self.dim = DIM
        self.glyphs = glyphs
        self.atlas = glyph_atlas(_ATLAS, seed, glyphs)
        rng = np.random.default_rng([self.seed, 5])
        self.texture = _smooth_noise(rng, _BANK, self.size, coarse=4)
        self.grain = np.clip(rng.standard_normal((_BANK, *self.size, 3)) / 2.5, -1, 1
                             ).astype(np.float32)
        h, w = self.size
        ys = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
        xs = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
        self._v, self._u = np.meshgrid(ys, xs, indexing="ij")  # [H, W] in [-1, 1]
        self._pixel = 2.0 / min(h, w)  # one pixel in these units

    def __repr__(self) -> str:
        natural = 0 if self.backgrounds is None else len(self.backgrounds)
        style = "" if self.glyphs == "default" else f", glyphs={self.glyphs!r}"
        return f"ImagePrior(size={self.size}, dim={self.dim}, natural={natural}{style})"

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` fresh parameter vectors, uniform on [0, 1]^dim, float32."""
        return rng.random((n, self.dim), dtype=np.float32)

    # -- rendering ---------------------------------------------------------------------------
    def render(self, theta: np.ndarray, chunk: int = 256) -> np.ndarray:
        """uint8 [N, H, W, 3] images of theta [N, dim] (values clipped to [0, 1])."""
        theta = np.asarray(theta, np.float32)
        if theta.ndim != 2 or theta.shape[1] != self.dim:
            raise invalid("theta", f"shape {theta.shape}", f"[N, {self.dim}]")
        theta = np.clip(theta, 0.0, 1.0)
        out = np.empty((len(theta), *self.size, 3), np.uint8)
        for start in range(0, len(theta), chunk):
            part = theta[start:start + chunk]
            out[start:start + len(part)] = np.clip(np.rint(self._render(part) * 255), 0, 255)
        return out

    def _p(self, theta: np.ndarray, name: str) -> np.ndarray:
        values = theta[:, LAYOUT[name]]
        return values[:, 0] if values.shape[1] == 1 else values

    def _render(self, t: np.ndarray) -> np.ndarray:
        n = len(t)
        p = self._p
        # the global warp: each output pixel looks up the picture at M (u, v)
        scale = 0.8 + 0.45 * p(t, "scale")  # [n, 2]
        shear = (p(t, "shear") - 0.5) * 0.6
        u = scale[:, 0, None, None] * self._u + shear[:, 0, None, None] * self._v
        v = scale[:, 1, None, None] * self._v + shear[:, 1, None, None] * self._u
        image = self._background(t, u, v)
        first_centre = first_size = None
        for i in range(_SHAPES):
            on = np.ones(n, bool) if i == 0 else p(t, f"s{i}_on") < 0.35
            centre, radius = self._shape(t, i, u, v, image, on)
            if i == 0:
                first_centre, first_size = centre, radius
        for i in range(_GLYPHS):
            on = p(t, f"g{i}_on") < (0.7 if i == 0 else 0.25)
            self._glyph(t, i, u, v, image, on, first_centre, first_size)
        return self._finish(t, image)

    def _background(self, t: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        p, n = self._p, len(t)
        kind = np.minimum((p(t, "bg_kind") * len(BACKGROUNDS)).astype(int), len(BACKGROUNDS) - 1)
        if self.backgrounds is None:
            kind = np.where(kind == 3, 1, kind)
        first, second = _colour(p(t, "bg_colour")), _colour(p(t, "bg_colour2"))
        angle = p(t, "bg_angle") * 2 * np.pi
        ramp = (np.cos(angle)[:, None, None] * u + np.sin(angle)[:, None, None] * v) * 0.5 + 0.5
        ramp = np.clip(ramp, 0, 1)[..., None]
        pick = p(t, "bg_pick")
        image = np.broadcast_to(first[:, None, None, :], (n, *self.size, 3)).copy()
        gradient = kind == 1
        image[gradient] = (first[gradient, None, None] * (1 - ramp[gradient])
                           + second[gradient, None, None] * ramp[gradient])
        noise = kind == 2
        if noise.any():
            index = np.minimum((pick[noise, 0] * _BANK).astype(int), _BANK - 1)
            amount = (0.2 + 0.6 * p(t, "bg_noise")[noise])[:, None, None, None]
            mix = np.clip(0.5 + amount * self.texture[index], 0, 1)
            image[noise] = first[noise, None, None] * (1 - mix) + second[noise, None, None] * mix
        natural = kind == 3
        if natural.any():
            m = len(self.backgrounds)
            index = np.minimum((pick[natural, 0] * m).astype(int), m - 1)
            chosen = self.backgrounds[index].astype(np.float32) / 255.0
            flip = pick[natural, 1] < 0.5
            chosen[flip] = chosen[flip, :, ::-1]
            image[natural] = chosen
        return image

    def _local(self, u, v, centre, radius, aspect, rotation):
        """Coordinates in a shape's frame (unit = its radius)."""
        du = u - centre[:, 0, None, None]
        dv = v - centre[:, 1, None, None]
        c, s = np.cos(rotation)[:, None, None], np.sin(rotation)[:, None, None]
        x = (c * du + s * dv) / (radius * aspect)[:, None, None]
        y = (-s * du + c * dv) / (radius / aspect)[:, None, None]
        return x, y

    def _shape(self, t, i, u, v, image, on):
        p = self._p
        prefix = f"s{i}_"
        kind = np.minimum((p(t, prefix + "kind") * len(KINDS)).astype(int), len(KINDS) - 1)
        centre = (p(t, prefix + "centre") - 0.5) * (0.5 if i == 0 else 1.4)
        radius = (0.35 + 0.55 * p(t, prefix + "size")) if i == 0 else \
            (0.12 + 0.5 * p(t, prefix + "size"))
        aspect = 0.8 + 0.4 * p(t, prefix + "aspect")
        rotation = (p(t, prefix + "rotation") - 0.5) * 0.8
        x, y = self._local(u, v, centre, radius, aspect, rotation)
        r = np.sqrt(x * x + y * y)
        # regular polygons: r cos(angle to the nearest edge normal) - 1 (unit apothem)
        sides = np.select([kind <= 3, kind <= 5, kind == 6],
                          [3, 4, 8], 5 + np.minimum((p(t, prefix + "sides") * 3).astype(int), 2))
        offset = np.select(
            [kind == 2, kind == 3, kind == 4, kind == 5],
            [np.pi / 2, -np.pi / 2, 0.0, np.pi / 4], np.pi / 2).astype(np.float32)
        sector = (2 * np.pi / sides).astype(np.float32)[:, None, None]
        phi = np.arctan2(y, x) - offset[:, None, None] + sector / 2
        phi -= sector * np.floor(phi / sector) + sector / 2
        distance = r * np.cos(phi) - 1.0
        distance = np.where(kind[:, None, None] == 0, r - 1.0, distance)
        ring = kind[:, None, None] == 1
        distance = np.where(ring, np.abs(r - 0.8) - 0.2, distance)
        to_pixels = (radius * np.minimum(aspect, 1 / aspect))[:, None, None] / self._pixel
        outer = np.clip(0.5 - distance * to_pixels, 0, 1)
        thin = np.where(kind == 1, np.float32(0.3), np.float32(1))  # a ring's border is thin
        width = 0.3 * p(t, prefix + "border_width") * thin
        inner = np.clip(0.5 - (distance + width[:, None, None]) * to_pixels, 0, 1)
        fill, border = _colour(p(t, prefix + "fill")), _colour(p(t, prefix + "border"))
        colour = (border[:, None, None] * (1 - inner[..., None])
                  + fill[:, None, None] * inner[..., None])
        cover = (outer * on[:, None, None])[..., None]
        image *= 1 - cover
        image += cover * colour
        return centre, radius

    def _glyph(self, t, i, u, v, image, on, centre, radius):
        if not on.any():
            return
        p = self._p
        prefix = f"g{i}_"
        g = len(self.atlas)
        index = np.minimum((p(t, prefix + "index") * g).astype(int), g - 1)
        where = centre + (p(t, prefix + "offset") - 0.5) * 0.8 * radius[:, None]
        size = radius * (0.3 + 0.5 * p(t, prefix + "size"))
        rotation = (p(t, prefix + "rotation") - 0.5) * 0.6
        x, y = self._local(u, v, where, size, np.ones_like(size), rotation)
        # bilinear look-up in the atlas, zero outside the glyph's square
        s = _ATLAS
        fx, fy = (x + 1) * 0.5 * s - 0.5, (y + 1) * 0.5 * s - 0.5
        x0, y0 = np.floor(fx).astype(int), np.floor(fy).astype(int)
        wx, wy = fx - x0, fy - y0
        mask = np.zeros_like(x)
        rows = index[:, None, None]
        for dy, wy_ in ((0, 1 - wy), (1, wy)):
            for dx, wx_ in ((0, 1 - wx), (1, wx)):
                yy, xx = y0 + dy, x0 + dx
                inside = (yy >= 0) & (yy < s) & (xx >= 0) & (xx < s)
                value = self.atlas[rows, np.clip(yy, 0, s - 1), np.clip(xx, 0, s - 1)]
                mask += np.where(inside, value, 0.0) * wy_ * wx_
        colour = _colour(p(t, prefix + "colour"))
        cover = (mask * on[:, None, None])[..., None]
        image *= 1 - cover
        image += cover * colour[:, None, None]

    def _finish(self, t: np.ndarray, image: np.ndarray) -> np.ndarray:
        p = self._p
        blur = p(t, "blur")
        blur = np.where(blur < 0.5, 0.0, (blur - 0.5) * 2)[:, None, None, None]
        padded = np.pad(image, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        h, w = self.size
        box = sum(padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9.0
        image = image + blur * (box - image)
        contrast = (0.55 + 0.75 * p(t, "contrast"))[:, None, None, None]
        brightness = ((p(t, "brightness") - 0.5) * 0.5)[:, None, None, None]
        angle = p(t, "light_angle") * 2 * np.pi
        light = ((np.cos(angle)[:, None, None] * self._u + np.sin(angle)[:, None, None] * self._v)
                 * (p(t, "light") * 0.3)[:, None, None])[..., None]
        image = (image - 0.5) * contrast + 0.5 + brightness + light
        index = np.minimum((p(t, "noise_pick") * _BANK).astype(int), _BANK - 1)
        sigma = np.where(p(t, "noise") < 0.5, 0.0, (p(t, "noise") - 0.5) * 0.2)
        return image + sigma[:, None, None, None] * self.grain[index]
