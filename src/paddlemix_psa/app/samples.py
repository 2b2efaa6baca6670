"""Offline sample media for the demo, the examples and the tests.

`sample_image_path()` is a small PNG shipped as package data (made by `make_sample_image`, so it can be
regenerated); `make_sample_video()` writes a short synthetic clip (moving shapes over a gradient) with PyAV.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

SAMPLE_IMAGE = "sample_image.png"


def sample_image_path() -> Path:
    """The bundled sample image (896 x 672 PNG: 768 image tokens at the default budget)."""
    return Path(str(resources.files("paddlemix_psa") / "data" / SAMPLE_IMAGE))


def _scene(width: int, height: int, t: float) -> np.ndarray:
    """uint8 [H, W, 3]: a colour gradient, a sun, a moving square and a bouncing disc at time t (0..1)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 40 + 120 * y / height
    img[..., 1] = 90 + 100 * x / width
    img[..., 2] = 200 - 110 * y / height
    ground = y > 0.7 * height
    img[ground] = (60, 140, 60)
    sx, sy = 0.8 * width, 0.2 * height
    img[(x - sx) ** 2 + (y - sy) ** 2 < (0.08 * height) ** 2] = (250, 220, 60)
    qx = (0.05 + 0.6 * t) * width
    sq = (x > qx) & (x < qx + 0.18 * width) & (y > 0.45 * height) & (y < 0.7 * height)
    img[sq] = (200, 40, 40)
    bx, by = (0.7 - 0.4 * t) * width, (0.55 - 0.25 * abs(np.sin(np.pi * 2 * t))) * height
    img[(x - bx) ** 2 + (y - by) ** 2 < (0.07 * height) ** 2] = (30, 60, 220)
    return img.clip(0, 255).astype(np.uint8)


def make_sample_image(path: str | os.PathLike, width: int = 896, height: int = 672) -> Path:
    from PIL import Image

    Image.fromarray(_scene(width, height, 0.3)).save(path, optimize=True)
    return Path(path)


def make_sample_video(path: str | os.PathLike, *, seconds: float = 4.0, fps: int = 8, width: int = 336,
                      height: int = 252) -> Path:
    """Write an MPEG-4 clip of `seconds` at `fps` (even sizes; about 20 kB for the defaults)."""
    import av

    path = Path(path)
    n = max(1, int(round(seconds * fps)))
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(_scene(width, height, i / max(n - 1, 1)), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


__all__ = ["sample_image_path", "make_sample_image", "make_sample_video"]
