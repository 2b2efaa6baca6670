"""Media inputs for the user tool: local paths or http(s) URLs, images (Pillow) and videos (PyAV).

Everything that can go wrong with an input raises `MediaError` with a one-line message; the CLI prints that
line and exits non-zero. Pixel budgets follow Qwen2.5-VL's rules (both sides multiples of
`patch_size * merge_size` = 28, area clamped to [min_pixels, max_pixels], aspect ratio kept as well as the
rounding allows); the arithmetic is implemented here from that description.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

FACTOR = 28                      # patch_size (14) x spatial_merge_size (2): one LLM token per 28x28 pixels
MIN_PIXELS = 4 * FACTOR * FACTOR          # 2x2 LLM tokens at least
MAX_PIXELS = 16384 * FACTOR * FACTOR      # Qwen2.5-VL's image ceiling (~12.8 MP)
VIDEO_MAX_PIXELS = 768 * FACTOR * FACTOR  # per frame; keeps long videos within a prompt budget
VIDEO_TOTAL_PIXELS = 24576 * FACTOR * FACTOR  # all sampled frames together (before the 2-frame temporal merge)
MAX_ASPECT_RATIO = 200
FRAME_FACTOR = 2                 # temporal_patch_size: the number of sampled frames is rounded to a multiple
DEFAULT_MAX_FRAMES = 64
DOWNLOAD_TIMEOUT_S = 30.0

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".gif"}

# CLIP normalisation used by Qwen2.5-VL's vision tower.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


class MediaError(ValueError):
    """An input could not be used; `str()` is a one-line message for the user."""


# ---------------------------------------------------------------------------------------------- sizes
def _round_to(x: float, factor: int) -> int:
    return max(factor, int(round(x / factor)) * factor)


def smart_resize(height: int, width: int, *, factor: int = FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Target (height, width): multiples of `factor`, area within [min_pixels, max_pixels], aspect kept.

    >>> smart_resize(480, 640)
    (476, 644)
    >>> smart_resize(4000, 3000, max_pixels=1000 * 28 * 28)
    (1008, 756)
    >>> smart_resize(10, 10)
    (56, 56)
    """
    if height <= 0 or width <= 0:
        raise MediaError(f"image has an empty size {width}x{height}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise MediaError(f"aspect ratio {max(height, width) / min(height, width):.0f}:1 exceeds "
                         f"{MAX_ASPECT_RATIO}:1, which Qwen2.5-VL does not accept")
    if min_pixels > max_pixels:
        raise MediaError(f"min_pixels={min_pixels} is larger than max_pixels={max_pixels}")
    if max_pixels < factor * factor:
        raise MediaError(f"max_pixels={max_pixels} is below one {factor}x{factor} token")
    h, w = _round_to(height, factor), _round_to(width, factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * scale / factor) * factor
        w = math.ceil(width * scale / factor) * factor
    while h * w > max_pixels and max(h, w) > factor:   # rounding up overshot a tight ceiling
        if h >= w:
            h -= factor
        else:
            w -= factor
    return h, w


def frame_pixel_budget(n_frames: int, *, max_pixels: int = VIDEO_MAX_PIXELS,
                       total_pixels: int = VIDEO_TOTAL_PIXELS, min_pixels: int = 128 * FACTOR * FACTOR) -> int:
    """Per-frame pixel ceiling for a video of `n_frames` sampled frames: the total budget shared, capped."""
    share = total_pixels / max(n_frames, 1) * FRAME_FACTOR
    return int(max(min(max_pixels, share), min(min_pixels, max_pixels)))


# ---------------------------------------------------------------------------------------------- sources
def default_cache_dir() -> Path:
    root = os.environ.get("PADDLEMIX_PSA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "paddlemix_psa")
    return Path(root) / "media"


def is_url(s: str) -> bool:
    return "://" in s and urllib.parse.urlsplit(s).scheme.lower() in ("http", "https")


def resolve_input(path_or_url: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                  quiet: bool = False, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """A local file for `path_or_url`; http(s) URLs are downloaded (with a progress bar) into a cache."""
    s = os.fspath(path_or_url)
    if not s:
        raise MediaError("empty input path")
    if "://" in s:
        scheme = urllib.parse.urlsplit(s).scheme.lower()
        if scheme == "file":
            s = urllib.request.url2pathname(urllib.parse.urlsplit(s).path)
        elif scheme not in ("http", "https"):
            raise MediaError(f"unsupported URL scheme {scheme!r} in {s!r}: use a local path or http(s)")
        else:
            return download(s, cache_dir=cache_dir, quiet=quiet, timeout=timeout)
    p = Path(s).expanduser()
    if not p.exists():
        raise MediaError(f"input not found: {s}")
    if p.is_dir():
        raise MediaError(f"input is a directory, not a file: {s}")
    if p.stat().st_size == 0:
        raise MediaError(f"input is empty (0 bytes): {s}")
    return p


def download(url: str, *, cache_dir: str | os.PathLike | None = None, quiet: bool = False,
             timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download `url` once into `cache_dir` (default `~/.cache/paddlemix_psa/media`) and return the file."""
    from tqdm.auto import tqdm

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = os.path.basename(urllib.parse.urlsplit(url).path) or "download"
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[-80:]
    target = cache / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    if target.exists() and target.stat().st_size > 0:
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MediaError(f"cannot create cache directory {cache}: {e.strerror or e}") from None
    part = target.with_name(target.name + f".part{os.getpid()}")
    req = urllib.request.Request(url, headers={"User-Agent": "paddlemix-psa"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(part, "wb") as fh:
            total = resp.headers.get("Content-Length")
            with tqdm(total=int(total) if total and total.isdigit() else None, unit="B", unit_scale=True,
                      desc=f"download {name}", disable=quiet, leave=False) as bar:
                while True:
                    chunk = resp.read(1 << 16)
                    if not chunk:
                        break
                    fh.write(chunk)
                    bar.update(len(chunk))
        if part.stat().st_size == 0:
            raise MediaError(f"download is empty (0 bytes): {url}")
        os.replace(part, target)
    except urllib.error.HTTPError as e:
        raise MediaError(f"download failed: HTTP {e.code} {e.reason} for {url}") from None
    except urllib.error.URLError as e:
        raise MediaError(f"download failed: {e.reason} for {url}") from None
    except (TimeoutError, OSError) as e:
        raise MediaError(f"download failed: {e.strerror or e} for {url}") from None
    finally:
        if part.exists():
            part.unlink()
    return target


# ---------------------------------------------------------------------------------------------- images
def load_image(path_or_url: str | os.PathLike, *, max_pixels: int | None = None, min_pixels: int = MIN_PIXELS,
               cache_dir: str | os.PathLike | None = None, quiet: bool = False):
    """RGB `PIL.Image` resized to the Qwen2.5-VL grid within the pixel budget."""
    from PIL import Image, UnidentifiedImageError

    path = resolve_input(path_or_url, cache_dir=cache_dir, quiet=quiet)
    try:
        with Image.open(path) as im:
            im.load()
            img = im.convert("RGB")
    except UnidentifiedImageError:
        raise MediaError(f"not a readable image (unsupported or corrupt): {path_or_url}") from None
    except (OSError, SyntaxError, ValueError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MediaError(f"not a readable image (corrupt or truncated): {path_or_url} ({detail})") from None
    h, w = smart_resize(img.height, img.width, min_pixels=min_pixels, max_pixels=max_pixels or MAX_PIXELS)
    if (h, w) != (img.height, img.width):
        img = img.resize((w, h), Image.BICUBIC)
    return img


# ---------------------------------------------------------------------------------------------- videos
@dataclasses.dataclass
class Video:
    frames: np.ndarray            # uint8 [T, H, W, 3], T a multiple of FRAME_FACTOR, H and W multiples of 28
    timestamps: list[float]       # seconds, one per sampled frame
    sample_fps: float             # frames per second actually sampled
    source_fps: float | None
    duration: float | None        # seconds, when the container knows it
    source_size: tuple[int, int]  # (width, height) of the decoded stream

    @property
    def seconds_per_grid(self) -> float:
        """Seconds covered by one temporal grid step (FRAME_FACTOR sampled frames)."""
        return FRAME_FACTOR / self.sample_fps if self.sample_fps > 0 else float(FRAME_FACTOR)


def _sample_times(duration: float, fps: float, max_frames: int) -> list[float]:
    n = int(round(duration * fps))
    n = max(FRAME_FACTOR, min(n, max_frames))
    n -= n % FRAME_FACTOR
    n = max(n, FRAME_FACTOR)
    step = duration / n
    return [step * (i + 0.5) for i in range(n)]


def load_video(path_or_url: str | os.PathLike, *, fps: float = 1.0, max_frames: int = DEFAULT_MAX_FRAMES,
               max_pixels: int | None = None, total_pixels: int = VIDEO_TOTAL_PIXELS,
               cache_dir: str | os.PathLike | None = None, quiet: bool = False) -> Video:
    """Decode with PyAV, sample `fps` frames per second (at most `max_frames`, rounded to an even count), resize
    every frame to one Qwen2.5-VL grid within the per-frame pixel budget."""
    import av
    from PIL import Image
    from tqdm.auto import tqdm

    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise MediaError(f"fps must be a positive number, got {fps!r}")
    if not isinstance(max_frames, int) or max_frames < FRAME_FACTOR:
        raise MediaError(f"max_frames must be an int >= {FRAME_FACTOR}, got {max_frames!r}")
    path = resolve_input(path_or_url, cache_dir=cache_dir, quiet=quiet)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"not a readable video (unsupported or corrupt): {path_or_url}"
                         f" ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    picked: list[tuple[float, Any]] = []
    with container:
        if not container.streams.video:
            raise MediaError(f"no video stream in {path_or_url}")
        stream = container.streams.video[0]
        src_fps = float(stream.average_rate) if stream.average_rate else None
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
        if duration is not None and duration <= 0:
            duration = None
        targets = _sample_times(duration, fps, max_frames) if duration else None
        total = stream.frames or None
        all_frames: list[tuple[float, Any]] = []
        last = None
        try:
            with tqdm(total=total, unit="frame", desc="decode video", disable=quiet, leave=False) as bar:
                ti = 0
                for idx, frame in enumerate(container.decode(stream)):
                    bar.update(1)
                    t = float(frame.time) if frame.time is not None else (idx / src_fps if src_fps else float(idx))
                    if targets is None:            # unknown duration: keep everything, sample afterwards
                        all_frames.append((t, frame.to_image()))
                        continue
                    last = (t, frame)
                    while ti < len(targets) and t + 1e-6 >= targets[ti]:
                        picked.append((t, frame.to_image()))
                        ti += 1
                    if ti >= len(targets):
                        break
        except av.error.FFmpegError as e:
            if not picked and not all_frames and last is None:
                raise MediaError(f"cannot decode video {path_or_url}: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if targets is not None and last is not None and len(picked) < len(targets):
            # the container's duration overstated the stream: repeat the last decoded frame
            img = picked[-1][1] if picked and picked[-1][0] == last[0] else last[1].to_image()
            picked.extend([(last[0], img)] * (len(targets) - len(picked)))
        if targets is None:
            if not all_frames:
                raise MediaError(f"no decodable frames in {path_or_url}")
            dur = all_frames[-1][0] - all_frames[0][0] + (1 / src_fps if src_fps else 0)
            duration = dur if dur > 0 else len(all_frames) / (src_fps or 1.0)
            want = _sample_times(duration, fps, max_frames)
            base = all_frames[0][0]
            j = 0
            for t in want:
                while j + 1 < len(all_frames) and all_frames[j][0] - base + 1e-6 < t:
                    j += 1
                picked.append(all_frames[j])
        if not picked:
            raise MediaError(f"no decodable frames in {path_or_url}")
        width, height = picked[0][1].size
    budget = frame_pixel_budget(len(picked), max_pixels=max_pixels or VIDEO_MAX_PIXELS, total_pixels=total_pixels)
    h, w = smart_resize(height, width, min_pixels=min(MIN_PIXELS, budget), max_pixels=budget)
    arr = np.stack([np.asarray(img.convert("RGB").resize((w, h), Image.BICUBIC)) for _, img in picked])
    times = [t for t, _ in picked]
    span = duration if duration else (times[-1] - times[0] if len(times) > 1 else 1.0)
    sample_fps = len(times) / span if span > 0 else float(fps)
    return Video(frames=arr, timestamps=times, sample_fps=sample_fps, source_fps=src_fps, duration=duration,
                 source_size=(width, height))


# ---------------------------------------------------------------------------------------------- patches
def to_patches(frames: np.ndarray, *, patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2,
               mean=IMAGE_MEAN, std=IMAGE_STD) -> tuple[np.ndarray, list[int]]:
    """Qwen2.5-VL vision input from uint8 frames `[T, H, W, 3]` (an image is T = 1).

    Returns `pixel_values` float32 `[t*h*w, 3*temporal_patch_size*patch_size**2]` and `grid_thw = [t, h, w]`
    (in patches). Rows are ordered so that every `merge_size x merge_size` group of neighbouring patches is
    contiguous (the order the patch merger expects); each row is laid out channel, time, row, column (the
    Conv3d patch embedding's input order). T is padded to a multiple of `temporal_patch_size` by repeating the
    last frame.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise MediaError(f"expected frames [T, H, W, 3], got shape {tuple(frames.shape)}")
    T, H, W, _ = frames.shape
    unit = patch_size * merge_size
    if H % unit or W % unit:
        raise MediaError(f"frame size {W}x{H} is not a multiple of {unit}; resize with smart_resize first")
    x = (frames.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    if T % temporal_patch_size:
        pad = temporal_patch_size - T % temporal_patch_size
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)], axis=0)
    t, h, w = x.shape[0] // temporal_patch_size, H // patch_size, W // patch_size
    m = merge_size
    # [t, tp, hm, m, p, wm, m, p, C]
    x = x.reshape(t, temporal_patch_size, h // m, m, patch_size, w // m, m, patch_size, 3)
    # -> [t, hm, wm, m(row), m(col), C, tp, p(row), p(col)]
    x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    pixel_values = np.ascontiguousarray(x.reshape(t * h * w, 3 * temporal_patch_size * patch_size * patch_size))
    return pixel_values, [t, h, w]


def image_to_array(img) -> np.ndarray:
    """PIL image -> uint8 `[1, H, W, 3]`."""
    return np.asarray(img.convert("RGB"))[None]


def guess_kind(path_or_url: str) -> str | None:
    """'image' / 'video' from the suffix, or None when it says nothing."""
    suffix = Path(urllib.parse.urlsplit(str(path_or_url)).path).suffix.lower()
    if suffix in VIDEO_SUFFIXES - {".gif"}:
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return None


__all__ = ["MediaError", "Video", "smart_resize", "frame_pixel_budget", "resolve_input", "download", "load_image",
           "load_video", "to_patches", "image_to_array", "default_cache_dir", "is_url", "guess_kind", "FACTOR",
           "MIN_PIXELS", "MAX_PIXELS", "VIDEO_MAX_PIXELS", "VIDEO_TOTAL_PIXELS", "DEFAULT_MAX_FRAMES"]

