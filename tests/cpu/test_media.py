"""Media inputs of the user tool: smart resize, patch layout, image/video decoding, URLs, errors, plot file."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from _loopback import serve_directory
from hypothesis import given, settings
from hypothesis import strategies as st

from paddlemix_psa.app import media
from paddlemix_psa.app.media import MediaError
from paddlemix_psa.app.samples import make_sample_image, make_sample_video, sample_image_path

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)    # CLIP normalisation of Qwen2.5-VL's vision tower
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """4 s at 8 fps, 112x84 (small and fast to decode)."""
    return make_sample_video(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=4.0, fps=8, width=112, height=84)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PADDLEMIX_PSA_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------------------- smart resize
@settings(max_examples=300, deadline=None)
@given(h=st.integers(10, 6000), w=st.integers(10, 6000), budget=st.integers(4, 20000))
def test_smart_resize_rules(h, w, budget):
    max_pixels = budget * 28 * 28
    if max(h, w) / min(h, w) > media.MAX_ASPECT_RATIO:
        with pytest.raises(MediaError):
            media.smart_resize(h, w, max_pixels=max_pixels)
        return
    min_pixels = min(media.MIN_PIXELS, max_pixels)
    H, W = media.smart_resize(h, w, min_pixels=min_pixels, max_pixels=max_pixels)
    assert H % 28 == 0 and W % 28 == 0 and H >= 28 and W >= 28
    assert H * W <= max_pixels                               # the ceiling always holds
    assert H * W >= min_pixels or (H + 28) * W > max_pixels or H * (W + 28) > max_pixels or min(H, W) == 28
    # the aspect ratio survives up to the rounding of each side to 28 pixels
    if min(H, W) >= 4 * 28:
        assert abs(math.log((H / W) / (h / w))) < 0.5


def test_smart_resize_examples():
    assert media.smart_resize(480, 640) == (476, 644)                      # round to the nearest multiple
    assert media.smart_resize(28, 28) == (56, 56)                          # min_pixels = 4 tokens
    h, w = media.smart_resize(3000, 4000, max_pixels=1000 * 28 * 28)
    assert h * w <= 1000 * 28 * 28 and (h, w) == (756, 1008)
    with pytest.raises(MediaError, match="aspect ratio"):
        media.smart_resize(10, 5000)


@settings(max_examples=300, deadline=None)
@given(h=st.integers(15, 6000), w=st.integers(15, 6000), budget=st.integers(8, 20000))
def test_smart_resize_equals_the_hosts(h, w, budget):
    """The decode-time resize (needed before any processor, and without PaddleFormers for PaddleMIX) gives the
    size Qwen's own smart_resize gives, so the host processor's resize is an identity on our images. They part
    only where the host's answer breaks its own ceiling (a side clamped to 28 px; also a budget at the 4-token
    floor, left out here); ours keeps the ceiling there."""
    pytest.importorskip("paddleformers")
    from paddleformers.transformers.qwen2_vl.image_processor_fast import smart_resize as host_smart_resize

    if max(h, w) / min(h, w) > media.MAX_ASPECT_RATIO:
        return
    max_pixels = budget * 28 * 28
    min_pixels = min(media.MIN_PIXELS, max_pixels)
    ours = media.smart_resize(h, w, min_pixels=min_pixels, max_pixels=max_pixels)
    host = tuple(host_smart_resize(h, w, factor=28, min_pixels=min_pixels, max_pixels=max_pixels))
    if host[0] * host[1] <= max_pixels:
        assert ours == host
    else:
        assert ours[0] * ours[1] <= max_pixels
    assert tuple(host_smart_resize(*ours, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)) == ours


def test_frame_budget_shares_total():
    few = media.frame_pixel_budget(4)
    many = media.frame_pixel_budget(512)
    assert few == media.VIDEO_MAX_PIXELS and many < few
    for n in (2, 64, 2000, media.max_frames_in_budget()):        # no floor: the total holds for any count
        assert n * media.frame_pixel_budget(n) / media.FRAME_FACTOR <= media.VIDEO_TOTAL_PIXELS


# ----------------------------------------------------------------------------------------- patches
def test_patch_layout_matches_a_naive_loop(rng):
    """The offline path's patches (PaddleFormers' processor) in the order the patch merger expects."""
    pytest.importorskip("paddleformers")
    from paddlemix_psa.app import processing

    T, H, W, p, tp, m = 3, 56, 84, 14, 2, 2
    frames = rng.integers(0, 256, size=(T, H, W, 3), dtype=np.uint8)
    video = media.Video(frames=frames, timestamps=[0.0, 0.5, 1.0], sample_fps=2.0, source_fps=None, duration=1.5,
                        source_size=(W, H))
    out = processing.video_inputs(video, patch_size=p, temporal_patch_size=tp, merge_size=m)
    pv, (t, h, w) = out["pixel_values_videos"].numpy(), out["video_grid_thw"].numpy()[0].tolist()
    assert (t, h, w) == (2, 4, 6) and pv.shape == (t * h * w, 3 * tp * p * p)
    mean, std = np.asarray(IMAGE_MEAN, np.float32), np.asarray(IMAGE_STD, np.float32)
    x = (frames.astype(np.float32) / 255.0 - mean) / std
    x = np.concatenate([x, x[-1:]], axis=0)              # odd T: the last frame is repeated
    row = 0
    for ti in range(t):
        for bh in range(h // m):
            for bw in range(w // m):
                for i in range(m):
                    for j in range(m):
                        y0, x0 = (bh * m + i) * p, (bw * m + j) * p
                        block = x[ti * tp:(ti + 1) * tp, y0:y0 + p, x0:x0 + p, :]     # [tp, p, p, C]
                        expect = block.transpose(3, 0, 1, 2).reshape(-1)               # C, t, row, col
                        np.testing.assert_allclose(pv[row], expect, atol=1e-5)
                        row += 1


# ----------------------------------------------------------------------------------------- images
def test_sample_image_is_bundled_and_small():
    path = sample_image_path()
    assert path.is_file() and path.stat().st_size < 50_000
    img = media.load_image(path)
    assert img.size == (896, 672) and img.mode == "RGB"


def test_image_budget(tmp_path):
    path = make_sample_image(tmp_path / "big.png", 1000, 700)
    img = media.load_image(path, max_pixels=200 * 28 * 28)
    w, h = img.size
    assert w % 28 == 0 and h % 28 == 0 and w * h <= 200 * 28 * 28


@pytest.mark.parametrize("case, match", [
    ("missing", "not found"), ("empty", "empty"), ("corrupt", "not a readable image"),
    ("directory", "directory"), ("scheme", "unsupported URL scheme"),
])
def test_image_errors(tmp_path, case, match):
    target = {"missing": str(tmp_path / "nope.png"), "directory": str(tmp_path), "scheme": "ftp://host/x.png"}
    if case == "empty":
        (tmp_path / "e.png").write_bytes(b"")
        target[case] = str(tmp_path / "e.png")
    if case == "corrupt":
        (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
        target[case] = str(tmp_path / "c.png")
    with pytest.raises(MediaError, match=match) as info:
        media.load_image(target[case])
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------- videos
def test_video_sampling(clip):
    v = media.load_video(clip, fps=2.0, max_frames=64, quiet=True)
    assert v.frames.shape[0] == 8 and v.frames.dtype == np.uint8
    assert v.frames.shape[1] % 28 == 0 and v.frames.shape[2] % 28 == 0
    assert v.duration == pytest.approx(4.0, abs=0.2) and v.sample_fps == pytest.approx(2.0, abs=0.1)
    assert all(b > a for a, b in zip(v.timestamps, v.timestamps[1:]))
    assert v.seconds_per_grid == pytest.approx(1.0, abs=0.05)


def test_video_max_frames_and_even_count(clip):
    v = media.load_video(clip, fps=8.0, max_frames=5, quiet=True)
    assert v.frames.shape[0] == 4                       # capped, then rounded down to a multiple of 2
    v = media.load_video(clip, fps=0.1, max_frames=64, quiet=True)
    assert v.frames.shape[0] == 2                       # at least one temporal patch


def test_video_errors(tmp_path):
    (tmp_path / "z.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        media.load_video(tmp_path / "z.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(MediaError, match="video") as info:
        media.load_video(tmp_path / "bad.mp4", quiet=True)
    assert "\n" not in str(info.value)
    (tmp_path / "t.mp4").write_text("not a video at all\n" * 50)
    with pytest.raises(MediaError):
        media.load_video(tmp_path / "t.mp4", quiet=True)
    with pytest.raises(MediaError, match="fps"):
        media.load_video(tmp_path / "t.mp4", fps=0)


# ----------------------------------------------------------------------------------------- URLs
def test_url_download_cache_and_errors(tmp_path, clip):
    root = tmp_path / "www"
    root.mkdir()
    make_sample_image(root / "pic.png", 112, 84)
    (root / "clip.mp4").write_bytes(clip.read_bytes())
    with serve_directory(root) as base:
        img = media.load_image(f"{base}/pic.png", quiet=True)
        assert img.size == (112, 84)
        cached = [p for p in (tmp_path / "cache" / "media").iterdir() if not p.name.startswith(".")]
        assert len(cached) == 1 and cached[0].name.endswith("pic.png")
        v = media.load_video(f"{base}/clip.mp4", fps=2.0, quiet=True)
        assert v.frames.shape[0] == 8
        with pytest.raises(MediaError, match="HTTP 404"):
            media.load_image(f"{base}/missing.png", quiet=True)
    # served once, cached afterwards: works with the server gone
    assert media.load_image(f"{base}/pic.png", quiet=True).size == (112, 84)
    with pytest.raises(MediaError, match="download failed"):
        media.resolve_input(f"{base}/other.png", quiet=True, timeout=2)


def test_guess_kind():
    assert media.guess_kind("a/b.MP4") == "video"
    assert media.guess_kind("https://x.org/p.jpeg?x=1") == "image"
    assert media.guess_kind("noext") is None


# ----------------------------------------------------------------------------------------- plot
def test_plot_png_size_and_categories(tmp_path, rng):
    from paddlemix_psa.app.plot import DPI, FIGSIZE, causal_valid, level_categories, plot_levels, png_size

    Lq = Lk = 300
    valid = causal_valid(5, 10, Lq=Lq, Lk=Lk, query_block=64, key_block=32)
    assert valid[0].tolist() == [True, True] + [False] * 8 and valid[-1].all()
    lm = rng.choice(np.array([0, 1, 2, 4, 8], np.int8), size=(5, 10))
    cats = level_categories(lm, valid)
    assert (cats[~valid] == 0).all() and set(np.unique(cats[valid])) <= {1, 2, 3, 4, 5}
    out = plot_levels(tmp_path / "p.png", lm, {"LLM layer 0": 0.3, "LLM layer 1": 0.5}, Lq=Lq, Lk=Lk,
                      query_block=64, key_block=32)
    assert png_size(out) == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
    plot_levels(tmp_path / "none.png", None, {})
    assert png_size(tmp_path / "none.png") == (1200, 500)


# ----------------------------------------------------------------------------------------- host processor
def _toy_host_processor():
    """PaddleFormers' own Qwen2.5-VL processor (image + video processors) over a toy offline tokenizer."""
    pytest.importorskip("paddleformers")
    from paddleformers.transformers import PreTrainedTokenizerFast
    from paddleformers.transformers.qwen2_5_vl.processor import Qwen2_5_VLProcessor
    from paddleformers.transformers.qwen2_vl.image_processor import Qwen2VLImageProcessor
    from paddleformers.transformers.qwen2_vl.video_processor import Qwen2VLVideoProcessor
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    vocab = {t: i for i, t in enumerate(specials + ["[UNK]"] + [chr(c) for c in range(32, 127)] + ["\n"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=specials)
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
                "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
                "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok.chat_template = template
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok,
                               video_processor=Qwen2VLVideoProcessor(), chat_template=template)


def test_host_processor_matches_our_patches(clip):
    """The real-weights path (the host's whole Qwen2_5_VLProcessor) and the offline path (its image/video
    processors, app/processing.py) give the same inputs and the same number of vision tokens."""
    from paddlemix_psa.app.inference import _HostProcessor
    from paddlemix_psa.app.tiny import TinyProcessor

    host, ours = _HostProcessor(_toy_host_processor(), "paddleformers"), TinyProcessor()
    img = media.load_image(sample_image_path())
    a, b = host("Describe.", image=img), ours("Describe.", image=img)
    assert a["image_grid_thw"].numpy().tolist() == b["image_grid_thw"].numpy().tolist() == [[1, 48, 64]]
    np.testing.assert_allclose(a["pixel_values"].numpy(), b["pixel_values"].numpy(), atol=1e-5)
    v = media.load_video(clip, fps=2.0, quiet=True)
    a, b = host("What?", video=v), ours("What?", video=v)
    assert a["video_grid_thw"].numpy().tolist() == b["video_grid_thw"].numpy().tolist()
    np.testing.assert_allclose(a["pixel_values_videos"].numpy(), b["pixel_values_videos"].numpy(), atol=1e-5)
    np.testing.assert_allclose(a["second_per_grid_ts"].numpy(), b["second_per_grid_ts"].numpy(), rtol=1e-5)
    n_pad = int((a["input_ids"].numpy() == 6).sum())           # <|video_pad|> id in the toy vocabulary
    t, h, w = b["video_grid_thw"].numpy()[0]
    assert n_pad == t * h * w // 4


# ----------------------------------------------------------------------------------------- big images
def _png_header_only(path, width, height):
    """A PNG that declares width x height and holds no pixels: enough for Pillow to read its size."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_a_one_line_error(tmp_path):
    path = _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(MediaError, match=r"too large to decode: .*400 MP, above the 179 MP limit") as info:
        media.load_image(path)
    assert "\n" not in str(info.value)


def test_big_jpeg_is_decoded_at_reduced_scale(tmp_path, monkeypatch):
    from PIL import Image, JpegImagePlugin

    Image.fromarray(np.full((1680, 2240, 3), 120, np.uint8)).save(tmp_path / "big.jpg")
    decoded = []
    load = JpegImagePlugin.JpegImageFile.load

    def spy(self):
        decoded.append(self.size)
        return load(self)
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy)
    img = media.load_image(tmp_path / "big.jpg", max_pixels=80 * 28 * 28)
    assert img.size[0] * img.size[1] <= 80 * 28 * 28 and img.mode == "RGB"
    assert decoded and decoded[0][0] * decoded[0][1] <= 2240 * 1680 // 16      # DCT-scaled while decoding


def test_big_png_is_reduced_before_resampling(tmp_path, monkeypatch):
    from PIL import Image

    Image.fromarray(np.full((1500, 2000, 3), 200, np.uint8)).save(tmp_path / "big.png")
    factors = []
    reduce = Image.Image.reduce
    monkeypatch.setattr(Image.Image, "reduce", lambda self, f, *a, **k: factors.append(f) or reduce(self, f, *a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                               # no DecompressionBombWarning either
        img = media.load_image(tmp_path / "big.png", max_pixels=100 * 28 * 28)
    assert factors and factors[0] >= 2 and img.size[0] * img.size[1] <= 100 * 28 * 28


# ----------------------------------------------------------------------------------------- video sampling
def test_image_given_as_video_is_rejected(tmp_path):
    from _cli import run_cli

    path = make_sample_image(tmp_path / "still.png", 112, 84)
    with pytest.raises(MediaError, match="is a still image .*not a video: use --type image"):
        media.load_video(path, quiet=True)
    proc = run_cli("infer", "--model", "tiny", "--type", "video", "--input", str(path), "--prompt", "x", "--quiet",
                   timeout=120)
    assert proc.returncode == 3 and "still image (png_pipe)" in proc.stderr and "Traceback" not in proc.stderr


def test_video_without_duration_is_sampled_while_decoding(tmp_path):
    """A raw MPEG-4 stream (no duration in the container) of 600 frames: memory stays bounded by max_frames."""
    import tracemalloc

    import av

    path = tmp_path / "raw.m4v"
    with av.open(str(path), mode="w", format="m4v") as out:
        st = out.add_stream("mpeg4", rate=24)
        st.width, st.height, st.pix_fmt = 112, 84, "yuv420p"
        for i in range(600):
            frame = av.VideoFrame.from_ndarray(np.full((84, 112, 3), i % 256, np.uint8), format="rgb24")
            for packet in st.encode(frame):
                out.mux(packet)
        for packet in st.encode():
            out.mux(packet)
    tracemalloc.start()
    try:
        v = media.load_video(path, fps=2.0, max_frames=4, quiet=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_frame = 112 * 84 * 3
    assert v.frames_decoded == 600 and v.frames.shape[0] == 4
    assert peak < 40 * one_frame, f"peak {peak / one_frame:.0f} frames held"     # all 600 would be 600 frames
    assert v.duration == pytest.approx(25.0, abs=0.2) and "no duration in the container" in v.sampling
    assert np.all(np.diff(v.timestamps) > 3.0)                                  # spread over the whole clip


def test_frame_report_explains_the_count(tmp_path):
    clip3 = make_sample_video(tmp_path / "three.mp4", seconds=3.0, fps=8, width=112, height=84)
    v = media.load_video(clip3, fps=1.0, quiet=True)
    assert v.frames.shape[0] == 2 and v.sample_fps == pytest.approx(2 / 3, abs=0.02)
    assert "1 fps x 3.00 s = 3.0 frames" in v.sampling and "rounded down to a multiple of 2" in v.sampling
    fast = media.load_video(clip3, fps=30.0, quiet=True)
    assert fast.frames.shape[0] == 24 and "capped at the 24 frames in the stream" in fast.sampling


def test_many_frames_keep_the_total_pixel_budget(clip):
    total = 64 * 28 * 28                                  # 64 tokens for the whole clip: 32 frames of 4 tokens
    v = media.load_video(clip, fps=8.0, max_frames=2000, total_pixels=total, quiet=True)
    t, h, w = v.frames.shape[:3]
    assert t == 32 and t * h * w / 2 <= total and "downscaled so that 32 frames stay within" in v.sizing
    from paddlemix_psa.cli.infer import describe_media

    assert "downscaled" in describe_media(v.info(), "video")
    with pytest.raises(MediaError, match="do not fit the total pixel budget"):
        media.load_video(clip, fps=8.0, max_frames=2000, total_pixels=total // 2, quiet=True)
