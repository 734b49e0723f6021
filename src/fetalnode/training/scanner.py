"""What a scanner adds to an ultrasound image, drawn on purpose: training augmentation and robustness checks
of the view model.

A site's scanner is a new source. Its images carry burned-in banner text, the sonographer's callipers with
their labels, a sector of its own depth and width, its grey map or colour tint, its gain, speckle and JPEG
compression. None of that says which view the image shows, so the view model is trained on images given
those things at random (:class:`ScannerAugment`, on batches of network inputs), and checked on held-out
images given them at their own resolution (:func:`draw_callipers_and_text`, :func:`jpeg_round_trip`): the
same drawing code, in fonts the training never used.
"""

from __future__ import annotations

import io
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

# The overlays of training and of the robustness check are drawn in different fonts (and other random draws).
TRAINING_FONTS = ("DejaVuSans.ttf", "DejaVuSansMono.ttf", "DejaVuSansCondensed.ttf", "DejaVuSans-Bold.ttf")
CHECK_FONTS = ("DejaVuSerif.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerifCondensed-Bold.ttf")
_FONT_DIR = "/usr/share/fonts/truetype/dejavu/"

_SCANNERS = ("Voluson E8", "LOGIQ P9", "EPIQ 7G", "Aplio i800", "RS85", "HS70A", "Affiniti 70", "SonixOP", "ACUSON")
_PROBES = ("RAB6-D", "C1-5-D", "C5-1", "PVT-375BT", "CA1-7A", "C2-9", "RM6C", "C6-1")
_PRESETS = ("OB/GYN", "OB 2/3", "Obstetric", "Fetal Echo", "OB early", "Gyn", "Abdomen", "Pelvis", "Labour")


def font(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in (name, _FONT_DIR + name):
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _banner_lines(rng: np.random.Generator) -> list[str]:
    """What a scanner writes at the top or side of a frame: device, probe, preset, acoustic output, date."""
    pick = rng.choice
    lines = [
        f"{pick(_SCANNERS)}  {pick(_PROBES)}  {pick(_PRESETS)}",
        f"TIs {rng.uniform(0.1, 1.2):.1f}  MI {rng.uniform(0.2, 1.4):.1f}  FR {int(rng.integers(8, 60))}Hz",
        f"20{int(rng.integers(10, 30))}/{int(rng.integers(1, 13)):02d}/{int(rng.integers(1, 29)):02d} "
        f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}:{int(rng.integers(0, 60)):02d}",
        f"Gn {int(rng.integers(-10, 25))}  D {rng.uniform(4, 20):.1f}cm  DR {int(rng.integers(40, 95))}",
        f"GA {int(rng.integers(11, 41))}w{int(rng.integers(0, 7))}d   LMP",
        f"{pick(('Harmonic', 'HI RES', 'CHI', 'SRI II', 'XBeam', 'MV-Flow'))} {int(rng.integers(1, 6))}",
        f"ID {int(rng.integers(10**5, 10**7))}",
    ]
    return [lines[i] for i in rng.permutation(len(lines))[: int(rng.integers(1, 5))]]


def _measurement_label(rng: np.random.Generator) -> str:
    pick = rng.choice
    kind = pick(("BPD", "HC", "OFD", "AC", "FL", "CRL", "NT", "D1", "D2", "Dist", "EFW", "AoP", "HSD", "CI"))
    if kind in ("D1", "D2", "Dist"):
        return f"{kind} {rng.uniform(0.3, 12):.2f} cm"
    if kind == "EFW":
        return f"EFW {int(rng.integers(80, 4500))} g"
    if kind == "AoP":
        return f"AoP {rng.uniform(90, 160):.0f}°"
    if kind == "CI":
        return f"CI {rng.uniform(60, 90):.0f}%"
    return f"{kind} {rng.uniform(1, 360):.1f} mm"


def _cross(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, value: int, width: int, plus: bool) -> None:
    if plus:
        draw.line([(x - r, y), (x + r, y)], fill=value, width=width)
        draw.line([(x, y - r), (x, y + r)], fill=value, width=width)
    else:
        draw.line([(x - r, y - r), (x + r, y + r)], fill=value, width=width)
        draw.line([(x - r, y + r), (x + r, y - r)], fill=value, width=width)


def _dotted(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], value: int, dot: float, step: float) -> None:
    """Dots every ``step`` pixels along a polyline (a scanner's calliper line or traced ellipse)."""
    carry = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        length = math.hypot(x1 - x0, y1 - y0)
        t = carry
        while t < length:
            x, y = x0 + (x1 - x0) * t / length, y0 + (y1 - y0) * t / length
            draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=value)
            t += step
        carry = t - length


def draw_overlay(
    draw: ImageDraw.ImageDraw,
    hw: tuple[int, int],
    rng: np.random.Generator,
    fonts: tuple[str, ...],
    value: int = 255,
    text: bool = True,
    callipers: bool = True,
) -> None:
    """Banner text and callipers with their labels, as a scanner burns them into a ``hw`` frame.

    Text: one to four lines at the top (sometimes also at the bottom or down one side). Callipers: one to
    three measurements, each two crosses joined by a dotted line, or a dotted ellipse, numbered, with
    their values in a results box.
    """
    h, w = hw
    scale = max(h, w) / 640
    size = max(7, int(rng.uniform(10, 17) * scale))
    face = font(str(rng.choice(fonts)), size)
    grey = int(np.clip(value * rng.uniform(0.7, 1.0), 0, 255))
    if text:
        lines = _banner_lines(rng)
        where = rng.choice(["top-left", "top-right", "bottom", "side"], p=[0.45, 0.2, 0.15, 0.2])
        for i, line in enumerate(lines):
            tw = draw.textlength(line, font=face)
            if where == "top-left":
                x, y = 4 * scale, 3 * scale + i * size * 1.2
            elif where == "top-right":
                x, y = w - tw - 4 * scale, 3 * scale + i * size * 1.2
            elif where == "bottom":
                x, y = 4 * scale, h - (len(lines) - i) * size * 1.2 - 3 * scale
            else:
                x, y = w - tw - 3 * scale, h * 0.25 + i * size * 1.4
            draw.text((x, y), line, fill=grey, font=face)
    if callipers:
        labels = []
        for k in range(int(rng.integers(1, 4))):
            number = str(k + 1) if rng.random() < 0.6 else "+x*"[k % 3]
            r = max(2.0, rng.uniform(3, 7) * scale)
            width = max(1, round(scale * rng.uniform(0.8, 2)))
            plus = bool(rng.random() < 0.5)
            if rng.random() < 0.35:  # a traced ellipse (HC, AC)
                cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
                a, b = rng.uniform(0.1, 0.35) * min(h, w), rng.uniform(0.08, 0.3) * min(h, w)
                t0 = rng.uniform(0, math.pi)
                pts = [
                    (
                        cx + a * math.cos(t) * math.cos(t0) - b * math.sin(t) * math.sin(t0),
                        cy + a * math.cos(t) * math.sin(t0) + b * math.sin(t) * math.cos(t0),
                    )
                    for t in np.linspace(0, 2 * math.pi, 90)
                ]
                _dotted(draw, pts, grey, max(0.8, scale), rng.uniform(5, 9) * scale)
                x0, y0 = pts[0]
                _cross(draw, x0, y0, r, grey, width, plus)
            else:
                x0, y0 = rng.uniform(0.1, 0.9) * w, rng.uniform(0.15, 0.9) * h
                length, angle = rng.uniform(0.05, 0.5) * min(h, w), rng.uniform(0, 2 * math.pi)
                x1, y1 = x0 + length * math.cos(angle), y0 + length * math.sin(angle)
                _cross(draw, x0, y0, r, grey, width, plus)
                _cross(draw, x1, y1, r, grey, width, plus)
                if rng.random() < 0.8:
                    _dotted(draw, [(x0, y0), (x1, y1)], grey, max(0.7, scale * 0.8), rng.uniform(4, 8) * scale)
            draw.text((x0 + r + 2, y0 - r - size), number, fill=grey, font=face)
            labels.append(f"{number} {_measurement_label(rng)}")
        bx = rng.choice([4 * scale, w * rng.uniform(0.5, 0.75)])
        by = rng.choice([h * rng.uniform(0.6, 0.8), h * rng.uniform(0.1, 0.25)])
        if rng.random() < 0.4:
            tw = max(draw.textlength(s, font=face) for s in labels)
            draw.rectangle([bx - 2, by - 2, bx + tw + 2, by + len(labels) * size * 1.2 + 2], outline=grey // 2)
        for i, label in enumerate(labels):
            draw.text((bx, by + i * size * 1.2), label, fill=grey, font=face)


def draw_callipers_and_text(
    gray: np.ndarray,
    rng: np.random.Generator,
    fonts: tuple[str, ...] = CHECK_FONTS,
    head: tuple[float, float, float, float, float] | None = None,
) -> np.ndarray:
    """``gray`` (0..255) with banner text and measurement callipers burned in at its own resolution.

    ``head``: an ellipse (cx, cy, semi-axis a, semi-axis b, angle in degrees; pixels) the sonographer traced,
    as a stored HC image shows it: a dotted trace on the skull, the BPD callipers across it, their values.
    """
    image = Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), mode="L")
    draw = ImageDraw.Draw(image)
    value = int(rng.uniform(200, 256))
    draw_overlay(draw, gray.shape, rng, fonts, value=value)
    if head is not None:
        cx, cy, a, b, angle = head
        t0 = math.radians(angle)
        scale = max(gray.shape) / 640
        pts = [
            (
                cx + a * math.cos(t) * math.cos(t0) - b * math.sin(t) * math.sin(t0),
                cy + a * math.cos(t) * math.sin(t0) + b * math.sin(t) * math.cos(t0),
            )
            for t in np.linspace(0, 2 * math.pi, 120)
        ]
        _dotted(draw, pts, value, max(0.8, scale), 7 * scale)
        for k in (-1, 1):
            _cross(
                draw, cx - k * b * math.sin(t0), cy + k * b * math.cos(t0), 5 * scale, value, max(1, round(scale)), True
            )
        face = font(str(rng.choice(fonts)), max(7, int(13 * scale)))
        hc = math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))
        draw.text((4 * scale, gray.shape[0] * 0.8), f"HC {hc:.0f} px  BPD {2 * b:.0f} px", fill=value, font=face)
    return np.asarray(image, dtype=np.float32)


def jpeg_round_trip(gray: np.ndarray, quality: int) -> np.ndarray:
    """``gray`` (0..255) encoded as a baseline JPEG of ``quality`` and decoded again."""
    buffer = io.BytesIO()
    Image.fromarray(np.clip(gray, 0, 255).round().astype(np.uint8), mode="L").save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as im:
        return np.asarray(im.convert("L"), dtype=np.float32)


@dataclass
class OverlayBank:
    """Text and calliper overlays drawn once at 448x448 and shrunk to the network input: ``alpha`` is the
    coverage of each input pixel, ``paint`` the premultiplied grey (both in [0, 1], (N, size, size))."""

    alpha: torch.Tensor
    paint: torch.Tensor

    @classmethod
    def draw(cls, n: int, size: int, seed: int, fonts: tuple[str, ...] = TRAINING_FONTS) -> OverlayBank:
        rng = np.random.default_rng(seed)
        side = 448
        alpha = np.zeros((n, size, size), np.float32)
        paint = np.zeros((n, size, size), np.float32)
        for i in range(n):
            value = Image.new("L", (side, side), 0)
            mask = Image.new("L", (side, side), 0)
            grey = int(rng.uniform(150, 256))
            text, callipers = [(True, False), (False, True), (True, True)][int(rng.integers(0, 3))]
            state = rng.bit_generator.state
            draw_overlay(ImageDraw.Draw(value), (side, side), rng, fonts, grey, text, callipers)
            rng.bit_generator.state = state  # the same strokes again, as coverage
            draw_overlay(ImageDraw.Draw(mask), (side, side), rng, fonts, 255, text, callipers)
            a = torch.from_numpy(np.asarray(mask, np.float32) / 255)[None, None]
            v = torch.from_numpy(np.asarray(value, np.float32) / 255)[None, None]
            alpha[i] = F.interpolate(a, size=(size, size), mode="bilinear", antialias=True)[0, 0].numpy()
            paint[i] = F.interpolate(a * v, size=(size, size), mode="bilinear", antialias=True)[0, 0].numpy()
        return cls(torch.from_numpy(np.clip(alpha, 0, 1)), torch.from_numpy(np.clip(paint, 0, 1)))


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return torch.empty(n).uniform_(lo, hi, generator=gen)


def _chance(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) < p


def fan_masks(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Sector masks of random apex, depth, width and inner radius (a curved probe's fan), (n, 1, size, size)."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    ax = _uniform(n, -0.2, 0.2, gen).view(n, 1, 1)
    ay = _uniform(n, -1.6, -0.7, gen).view(n, 1, 1)
    r = torch.sqrt((xs - ax) ** 2 + (ys - ay) ** 2)
    angle = torch.atan2(xs - ax, ys - ay).abs()
    half = torch.deg2rad(_uniform(n, 20, 50, gen)).view(n, 1, 1)
    outer = ay.abs() + _uniform(n, 0.9, 2.2, gen).view(n, 1, 1)
    inner = ay.abs() * _uniform(n, 0.5, 1.1, gen).view(n, 1, 1)
    return ((angle <= half) & (r <= outer) & (r >= inner)).float()[:, None]


def tone_curves(x: torch.Tensor, gen: torch.Generator, knots: int = 6) -> torch.Tensor:
    """A random grey map per image (what a scanner's grey map or a colour tint does to the luminance): a
    piecewise-linear curve through sorted random knots, now and then with a bump (a hue map's luminance).
    :class:`ScannerAugment` takes it half and half with the image's own grey levels."""
    n = x.shape[0]
    ys = torch.sort(torch.rand(n, knots, generator=gen), dim=1).values
    ys = torch.cat([torch.zeros(n, 1), ys, torch.ones(n, 1)], 1)
    bump = _chance(n, 0.15, gen)
    if bump.any():
        k = torch.randint(1, knots + 1, (n,), generator=gen)
        ys[bump, k[bump]] = torch.rand(int(bump.sum()), generator=gen)
    pos = x.clamp(0, 1) * (knots + 1)
    lo = pos.floor().long().clamp(max=knots)
    frac = pos - lo
    table = ys.view(n, 1, 1, 1, knots + 2).expand(*x.shape, knots + 2)
    y0 = torch.gather(table, -1, lo[..., None])[..., 0]
    y1 = torch.gather(table, -1, (lo + 1).clamp(max=knots + 1)[..., None])[..., 0]
    return y0 + (y1 - y0) * frac


def colour_box(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A Doppler colour box seen in grey: a rectangle in which smooth blobs replace the tissue grey."""
    n, _, size, _ = x.shape
    noise = F.interpolate(torch.rand(n, 1, 8, 8, generator=gen), size=(size, size), mode="bicubic", align_corners=False)
    blobs = (noise > 0.6).float() * _uniform(n, 0.3, 0.8, gen).view(n, 1, 1, 1)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    x0, y0 = _uniform(n, 0.1, 0.6, gen).view(n, 1, 1), _uniform(n, 0.1, 0.6, gen).view(n, 1, 1)
    w, h = _uniform(n, 0.15, 0.4, gen).view(n, 1, 1), _uniform(n, 0.15, 0.4, gen).view(n, 1, 1)
    box = ((xs >= x0) & (xs <= x0 + w) & (ys >= y0) & (ys <= y0 + h)).float()[:, None]
    return torch.where((box > 0) & (blobs > 0), blobs, x)


def jpeg_batch(x: torch.Tensor, gen: torch.Generator, lo: int = 40, hi: int = 90) -> torch.Tensor:
    """Each image of ``x`` ([0, 1]) through a JPEG round trip of a random quality."""
    q = torch.randint(lo, hi + 1, (x.shape[0],), generator=gen)
    out = [
        torch.from_numpy(jpeg_round_trip(img[0].numpy() * 255, int(qi)) / 255)[None]
        for img, qi in zip(x, q, strict=True)
    ]
    return torch.stack(out).to(x.dtype)


@dataclass
class ScannerAugment:
    """What scanners do to a frame, at random, on a batch of network inputs ([0, 1], (N, 1, S, S)).

    Each with its own probability: a fan mask of another depth and width; a strong zoom into the content (no
    fan edge left); burned-in text and callipers (:class:`OverlayBank`); a grey map or colour tint; a
    Doppler colour box; gain; speckle; blur; a JPEG round trip.
    """

    bank: OverlayBank
    p_fan: float = 0.25
    p_overlay: float = 0.5
    p_tone: float = 0.2
    p_colour_box: float = 0.05
    p_speckle: float = 0.3
    p_blur: float = 0.1
    p_jpeg: float = 0.2

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, size, _ = x.shape
        fan = _chance(n, self.p_fan, gen)
        if fan.any():
            x = torch.where(fan.view(n, 1, 1, 1), x * fan_masks(n, size, gen), x)
        tone = _chance(n, self.p_tone, gen)
        if tone.any():
            x = torch.where(tone.view(n, 1, 1, 1), 0.5 * (x + tone_curves(x, gen)), x)
        box = _chance(n, self.p_colour_box, gen)
        if box.any():
            x = torch.where(box.view(n, 1, 1, 1), colour_box(x, gen), x)
        speckle = _chance(n, self.p_speckle, gen).float().view(n, 1, 1, 1) * _uniform(n, 0.05, 0.25, gen).view(
            n, 1, 1, 1
        )
        grain = F.interpolate(torch.randn(n, 1, size // 2, size // 2, generator=gen), size=(size, size), mode="nearest")
        x = x * (1 + speckle * grain)
        x = x * _uniform(n, 0.8, 1.25, gen).view(n, 1, 1, 1)  # gain
        blur = _chance(n, self.p_blur, gen)
        if blur.any():
            x = torch.where(blur.view(n, 1, 1, 1), F.avg_pool2d(x, 3, stride=1, padding=1), x)
        overlay = _chance(n, self.p_overlay, gen)
        if overlay.any():
            x = torch.where(overlay.view(n, 1, 1, 1), self.overlaid(x, gen), x)
        x = x.clamp(0, 1)
        jpeg = _chance(n, self.p_jpeg, gen)
        if jpeg.any():
            idx = torch.nonzero(jpeg)[:, 0]
            x[idx] = jpeg_batch(x[idx], gen)
        return x

    def overlaid(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Every image of ``x`` with one overlay of the bank (text, callipers or both) burned in."""
        n = x.shape[0]
        pick = torch.randint(0, len(self.bank.alpha), (n,), generator=gen)
        a, p = self.bank.alpha[pick][:, None], self.bank.paint[pick][:, None]
        brightness = _uniform(n, 0.6, 1.0, gen).view(n, 1, 1, 1)
        return (x * (1 - a) + p * brightness).clamp(0, 1)
