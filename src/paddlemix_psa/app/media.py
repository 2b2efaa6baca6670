"""Media inputs for the user tool: local paths or http(s) URLs, images (Pillow) and videos (PyAV).

Everything that can go wrong with an input raises `MediaError` with a one-line message; the CLI prints that
line and exits 3. URLs go through `download` (complete files or nothing in the cache). Pixel budgets follow
Qwen2.5-VL's rules (both sides multiples of `patch_size * merge_size` = 28, area clamped to
[min_pixels, max_pixels], aspect ratio kept as well as the rounding allows); images are reduced while they are
decoded where Pillow can, and video frames are sampled while they are decoded, so memory stays bounded.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .download import READ_TIMEOUT_S, default_cache_dir, download
from .errors import DownloadError, MediaError

FACTOR = 28                      # patch_size (14) x spatial_merge_size (2): one LLM token per 28x28 pixels
MIN_PIXELS = 4 * FACTOR * FACTOR          # 2x2 LLM tokens at least
MAX_PIXELS = 16384 * FACTOR * FACTOR      # Qwen2.5-VL's image ceiling (~12.8 MP)
VIDEO_MAX_PIXELS = 768 * FACTOR * FACTOR  # per frame; keeps long videos within a prompt budget
VIDEO_TOTAL_PIXELS = 24576 * FACTOR * FACTOR  # all frames, counted per temporal patch (2 frames merge into one)
MAX_ASPECT_RATIO = 200
FRAME_FACTOR = 2                 # temporal_patch_size: the number of sampled frames is rounded to a multiple
DEFAULT_MAX_FRAMES = 64
DOWNLOAD_TIMEOUT_S = READ_TIMEOUT_S

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".gif"}


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


# ---------------------------------------------------------------------------------------------- sources
def is_url(s: str) -> bool:
    return "://" in s and urllib.parse.urlsplit(s).scheme.lower() in ("http", "https")


def resolve_input(path_or_url: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                  quiet: bool = False, timeout: float = DOWNLOAD_TIMEOUT_S, kind: str | None = None,
                  max_download_bytes: int | None = None) -> Path:
    """A local file for `path_or_url`; http(s) URLs are downloaded (with a progress bar) into a cache.

    `kind` ("image" | "video") picks the download size cap and content-type check (`download.download`).
    """
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
            return download(s, cache_dir=cache_dir, quiet=quiet, timeout=timeout, kind=kind,
                            max_bytes=max_download_bytes)
    p = Path(s).expanduser()
    if not p.exists():
        raise MediaError(f"input not found: {s}")
    if p.is_dir():
        raise MediaError(f"input is a directory, not a file: {s}")
    if p.stat().st_size == 0:
        raise MediaError(f"input is empty (0 bytes): {s}")
    return p


# ---------------------------------------------------------------------------------------------- images
def decode_pixel_limit() -> int | None:
    """The largest image (in pixels) that is decoded at all: Pillow's DecompressionBombError threshold."""
    from PIL import Image

    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None


def load_image(path_or_url: str | os.PathLike, *, max_pixels: int | None = None, min_pixels: int = MIN_PIXELS,
               cache_dir: str | os.PathLike | None = None, quiet: bool = False,
               max_download_bytes: int | None = None):
    """RGB `PIL.Image` resized to the Qwen2.5-VL grid within the pixel budget.

    Images above `decode_pixel_limit()` are refused from their header; below it, a JPEG is decoded at a reduced
    scale (`draft`) and other formats are box-reduced by an integer factor before the final resample.
    """
    path = resolve_input(path_or_url, cache_dir=cache_dir, quiet=quiet, kind="image",
                         max_download_bytes=max_download_bytes)
    with _uncached_if_unusable(path_or_url, path):
        return _decode_image(path, path_or_url, min_pixels=min_pixels, max_pixels=max_pixels or MAX_PIXELS)


def _decode_image(path: Path, path_or_url, *, min_pixels: int, max_pixels: int):
    """`load_image` after the input is a local file (`path_or_url` names it in messages)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # handled: reduced while decoding
            with Image.open(path) as im:
                h, w = smart_resize(im.height, im.width, min_pixels=min_pixels, max_pixels=max_pixels)
                return _decode_reduced(im, w, h)
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)) / 1e6:.0f} MP, " if found else ""
        limit = decode_pixel_limit() or 0
        raise MediaError(f"image too large to decode: {path_or_url} is {size}above the {limit / 1e6:.0f} MP limit "
                         f"(2 x PIL.Image.MAX_IMAGE_PIXELS; a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise MediaError(f"not a readable image (unsupported or corrupt): {path_or_url}") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, MediaError):
            raise
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MediaError(f"not a readable image (corrupt or truncated): {path_or_url} ({detail})") from None


def _decode_reduced(im, width: int, height: int):
    """Decode `im` (opened, not loaded) into an RGB image of exactly (width, height), reducing early."""
    from PIL import Image

    if im.format == "JPEG":
        im.draft("RGB", (width, height))       # DCT scaling: decodes at 1/2..1/8 size, never below the target
    im.load()
    img = im if im.mode in ("RGB", "RGBA", "L", "LA") else im.convert("RGB")
    factor = min(img.width // width, img.height // height) // 2   # keep >= 2x the target for the resample
    if factor >= 2:
        img = img.reduce(factor)
    img = img.convert("RGB")
    return img if img.size == (width, height) else img.resize((width, height), Image.BICUBIC)


# ---------------------------------------------------------------------------------------------- videos
@dataclasses.dataclass
class Video:
    frames: np.ndarray            # uint8 [T, H, W, 3], T a multiple of FRAME_FACTOR, H and W multiples of 28
    timestamps: list[float]       # seconds, one per sampled frame
    sample_fps: float             # frames per second actually sampled
    source_fps: float | None
    duration: float | None        # seconds: the container's, or measured by decoding when it has none
    source_size: tuple[int, int]  # (width, height) of the decoded stream
    frames_decoded: int = 0       # frames read from the stream (sampling kept at most 2 x max_frames of them)
    sampling: str = ""            # how the frame count was chosen, for the user
    sizing: str = ""              # how the frame size was chosen, for the user

    def info(self) -> dict[str, Any]:
        """What was sampled, as JSON-able data (the CLI prints it; `--stats-out` stores it)."""
        t, h, w = self.frames.shape[:3]
        return {"frames": t, "size": [w, h], "timestamps": [round(x, 3) for x in self.timestamps],
                "sample_fps": self.sample_fps, "duration_s": self.duration, "source_fps": self.source_fps,
                "tokens": (t + 1) // FRAME_FACTOR * h * w // FACTOR ** 2, "frames_decoded": self.frames_decoded,
                "sampling": self.sampling, "sizing": self.sizing}

    @property
    def seconds_per_grid(self) -> float:
        """Seconds covered by one temporal grid step (FRAME_FACTOR sampled frames)."""
        return FRAME_FACTOR / self.sample_fps if self.sample_fps > 0 else float(FRAME_FACTOR)


def max_frames_in_budget(total_pixels: int = VIDEO_TOTAL_PIXELS) -> int:
    """The most frames the total pixel budget holds at the smallest frame size (MIN_PIXELS each)."""
    return total_pixels * FRAME_FACTOR // MIN_PIXELS


def plan_frame_count(duration: float, fps: float, max_frames: int, source_frames: int | None) -> tuple[int, str]:
    """(frames to sample, the reason in words): `fps` over `duration`, within the stream and `max_frames`,
    then Qwen2.5-VL's rule that the count is a multiple of 2 (two frames merge into one temporal patch)."""
    wanted = duration * fps
    n, why = int(round(wanted)), []
    if source_frames and n > source_frames:
        n = source_frames
        why.append(f"capped at the {source_frames} frames in the stream")
    if n > max_frames:
        n = max_frames
        why.append(f"capped at max_frames={max_frames}")
    if n < FRAME_FACTOR:
        n = FRAME_FACTOR
        why.append(f"raised to the minimum of {FRAME_FACTOR} (one temporal patch)")
    if n % FRAME_FACTOR:
        n -= n % FRAME_FACTOR
        why.append(f"rounded down to a multiple of {FRAME_FACTOR} (Qwen2.5-VL merges {FRAME_FACTOR} frames "
                   f"per temporal patch)")
    text = f"{fps:g} fps x {duration:.2f} s = {wanted:.1f} frames" + ("; " + "; ".join(why) if why else "")
    return n, text + f" -> {n} frames, one every {duration / n:.2f} s ({n / duration:.2f} fps)"


def frame_pixel_budget(n_frames: int, *, max_pixels: int = VIDEO_MAX_PIXELS,
                       total_pixels: int = VIDEO_TOTAL_PIXELS) -> int:
    """Per-frame pixel ceiling for `n_frames` sampled frames: the total budget shared over the temporal
    patches, capped at `max_pixels`. There is no floor, so the total always holds (many frames get small)."""
    return int(min(max_pixels, total_pixels / max(n_frames, 1) * FRAME_FACTOR))


def _is_still_image(container) -> bool:
    """FFmpeg opens single images too (png_pipe, jpeg_pipe, image2, ...); animated GIFs count as video."""
    name = container.format.name or ""
    return name == "image2" or name.endswith("_pipe")


class _EvenSampler:
    """A bounded, evenly spaced subset of a stream of unknown length: frames are kept one per `spacing`
    seconds; past `2 * limit` kept frames the spacing doubles and every other kept frame is dropped."""

    def __init__(self, spacing: float, limit: int) -> None:
        self.spacing, self.capacity = spacing, 2 * limit
        self.kept: list[tuple[float, np.ndarray]] = []
        self.t0: float | None = None
        self.t_last = 0.0                 # the last decoded frame's time, kept or not

    def _slot(self, t: float) -> int:
        return math.floor((t - self.t0) / self.spacing + 1e-9)

    def offer(self, t: float, frame) -> None:
        if self.t0 is None:
            self.t0 = t
        self.t_last = max(self.t_last, t)
        if self.kept and self._slot(t) <= self._slot(self.kept[-1][0]):
            return
        self.kept.append((t, frame.to_ndarray(format="rgb24")))
        if len(self.kept) > self.capacity:
            self.spacing *= 2
            thinned, last = [], None
            for item in self.kept:
                if last is None or self._slot(item[0]) > last:
                    thinned.append(item)
                    last = self._slot(item[0])
            self.kept = thinned

    def pick(self, times: list[float]) -> list[tuple[float, np.ndarray]]:
        """The kept frame nearest to each time (seconds from the first frame)."""
        ts = np.asarray([t - self.t0 for t, _ in self.kept])
        return [self.kept[int(np.abs(ts - t).argmin())] for t in times]


def load_video(path_or_url: str | os.PathLike, *, fps: float = 1.0, max_frames: int = DEFAULT_MAX_FRAMES,
               max_pixels: int | None = None, total_pixels: int = VIDEO_TOTAL_PIXELS,
               cache_dir: str | os.PathLike | None = None, quiet: bool = False,
               max_download_bytes: int | None = None) -> Video:
    """Decode with PyAV, sample `fps` frames per second (at most `max_frames`, an even count) while decoding,
    and resize every frame to one Qwen2.5-VL grid within the per-frame and total pixel budgets.

    Memory is bounded by `max_frames` whatever the container says: with a known duration only the target
    frames are kept; without one, an evenly thinned subset of at most `2 * max_frames` frames.
    """
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise MediaError(f"fps must be a positive number, got {fps!r}")
    if not isinstance(max_frames, int) or max_frames < FRAME_FACTOR:
        raise MediaError(f"max_frames must be an int >= {FRAME_FACTOR}, got {max_frames!r}")
    path = resolve_input(path_or_url, cache_dir=cache_dir, quiet=quiet, kind="video",
                         max_download_bytes=max_download_bytes)
    with _uncached_if_unusable(path_or_url, path):
        return _decode_video(path, path_or_url, fps=fps, max_frames=max_frames, max_pixels=max_pixels,
                             total_pixels=total_pixels, quiet=quiet)


def _decode_video(path: Path, path_or_url, *, fps: float, max_frames: int, max_pixels: int | None,
                  total_pixels: int, quiet: bool) -> Video:
    """`load_video` after the input is a local file (`path_or_url` names it in messages)."""
    import av
    from tqdm.auto import tqdm

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"not a readable video (unsupported or corrupt): {path_or_url}"
                         f" ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    with container:
        if _is_still_image(container):
            raise MediaError(f"{path_or_url} is a still image ({container.format.name}), not a video: "
                             f"use --type image")
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
        source_frames = stream.frames or (int(duration * src_fps) if duration and src_fps else None)
        plan = plan_frame_count(duration, fps, max_frames, source_frames) if duration else None
        targets = [duration / plan[0] * (i + 0.5) for i in range(plan[0])] if plan else None
        sampler = None if targets else _EvenSampler(1.0 / fps, max_frames)
        picked: list[tuple[float, np.ndarray]] = []
        decoded, last = 0, None
        try:
            with tqdm(total=stream.frames or None, unit="frame", desc="decode video", disable=quiet,
                      leave=False) as bar:
                for frame in container.decode(stream):
                    bar.update(1)
                    t = float(frame.time) if frame.time is not None else decoded / (src_fps or 1.0)
                    decoded += 1
                    if sampler is not None:
                        sampler.offer(t, frame)
                        continue
                    last = (t, frame)
                    while len(picked) < len(targets) and t + 1e-6 >= targets[len(picked)]:
                        picked.append((t, frame.to_ndarray(format="rgb24")))
                    if len(picked) == len(targets):
                        break
        except av.error.FFmpegError as e:
            if decoded == 0:
                raise MediaError(f"cannot decode video {path_or_url}: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if decoded == 0:
        raise MediaError(f"no decodable frames in {path_or_url}")
    if sampler is not None:                 # no duration in the container: measured from the decoded frames
        duration = sampler.t_last - sampler.t0 + (1 / src_fps if src_fps else 0)
        duration = duration if duration > 0 else decoded / (src_fps or 1.0)
        n, text = plan_frame_count(duration, fps, max_frames, decoded)
        plan = (n, text + " (no duration in the container: measured by decoding)")
        picked = sampler.pick([duration / n * (i + 0.5) for i in range(n)])
    elif len(picked) < len(targets):        # the container's duration overstated the stream
        img = picked[-1][1] if picked and picked[-1][0] == last[0] else last[1].to_ndarray(format="rgb24")
        picked.extend([(last[0], img)] * (len(targets) - len(picked)))
    n = len(picked)
    if n > max_frames_in_budget(total_pixels):
        raise MediaError(f"{n} frames do not fit the total pixel budget even at {MIN_PIXELS // FACTOR ** 2} tokens "
                         f"per frame: lower fps or max_frames to at most {max_frames_in_budget(total_pixels)}")
    height, width = picked[0][1].shape[:2]
    cap = max_pixels or VIDEO_MAX_PIXELS
    budget = frame_pixel_budget(n, max_pixels=cap, total_pixels=total_pixels)
    h, w = smart_resize(height, width, min_pixels=min(MIN_PIXELS, budget), max_pixels=budget)
    sizing = (f"{width}x{height} -> {w}x{h} px per frame ({h * w // FACTOR ** 2} tokens per temporal patch of "
              f"{FRAME_FACTOR} frames)")
    if budget < cap:
        sizing += (f"; downscaled so that {n} frames stay within the total budget of "
                   f"{total_pixels // FACTOR ** 2} tokens")
    frames = np.stack([_resize_frame(a, w, h) for _, a in picked])
    times = [t for t, _ in picked]
    return Video(frames=frames, timestamps=times, sample_fps=n / duration, source_fps=src_fps, duration=duration,
                 source_size=(width, height), frames_decoded=decoded, sampling=plan[1], sizing=sizing)


@contextlib.contextmanager
def _uncached_if_unusable(source, path: Path) -> Iterator[None]:
    """A downloaded file that cannot be used is removed from the cache: a later run downloads it afresh."""
    try:
        yield
    except MediaError:
        if is_url(os.fspath(source)):
            path.unlink(missing_ok=True)
        raise


def _resize_frame(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BICUBIC))


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


__all__ = ["MediaError", "DownloadError", "Video", "smart_resize", "frame_pixel_budget", "plan_frame_count",
           "max_frames_in_budget", "resolve_input", "download", "load_image", "load_video", "image_to_array",
           "default_cache_dir", "decode_pixel_limit", "is_url", "guess_kind", "FACTOR", "MIN_PIXELS", "MAX_PIXELS",
           "VIDEO_MAX_PIXELS", "VIDEO_TOTAL_PIXELS", "DEFAULT_MAX_FRAMES"]
