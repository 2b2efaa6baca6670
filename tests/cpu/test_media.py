"""Media inputs of the user tool: smart resize, patch layout, image/video decoding, URLs, errors, plot file."""
from __future__ import annotations

import math

import numpy as np
import pytest
from _loopback import serve_directory
from hypothesis import given, settings
from hypothesis import strategies as st

from paddlemix_psa.app import media
from paddlemix_psa.app.media import MediaError
from paddlemix_psa.app.samples import make_sample_image, make_sample_video, sample_image_path


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


def test_frame_budget_shares_total():
    few = media.frame_pixel_budget(4)
    many = media.frame_pixel_budget(512)
    assert few == media.VIDEO_MAX_PIXELS and many < few


# ----------------------------------------------------------------------------------------- patches
def test_patch_layout_matches_a_naive_loop(rng):
    T, H, W, p, tp, m = 3, 56, 84, 14, 2, 2
    frames = rng.integers(0, 256, size=(T, H, W, 3), dtype=np.uint8)
    pv, grid = media.to_patches(frames, patch_size=p, temporal_patch_size=tp, merge_size=m, mean=(0, 0, 0),
                                std=(1, 1, 1))
    t, h, w = grid
    assert (t, h, w) == (2, 4, 6) and pv.shape == (t * h * w, 3 * tp * p * p)
    x = frames.astype(np.float32) / 255.0
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
                        np.testing.assert_array_equal(pv[row], expect)
                        row += 1


def test_patches_reject_unaligned_frames():
    with pytest.raises(MediaError, match="multiple of 28"):
        media.to_patches(np.zeros((1, 30, 56, 3), np.uint8))


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
        cached = list((tmp_path / "cache" / "media").iterdir())
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
    """The real-weights path feeds the host's processor; its patches must equal ours (media.to_patches)."""
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
