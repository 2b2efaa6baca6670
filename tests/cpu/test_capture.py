"""`infer --capture-qkv`: a round trip on the tiny model (shapes, dtypes, token types, frame grid, metadata), the
captured tensors are the post-RoPE attention inputs, option errors, and `sweep --qkv` on the capture."""
from __future__ import annotations

import json

import numpy as np
import pytest

from paddlemix_psa.app.capture import QKVCapture, default_layers, load_capture, parse_layers, token_grid
from paddlemix_psa.app.samples import make_sample_video
from paddlemix_psa.cli.main import main


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_sample_video(tmp_path_factory.mktemp("cap") / "clip.mp4", seconds=2.0, fps=4, width=336,
                             height=252)


def test_layer_selection():
    assert default_layers(28) == (0, 13, 27) and default_layers(2) == (0, 1) and default_layers(1) == (0,)
    assert parse_layers("27, 0,13,0", 28) == (0, 13, 27)
    for text in ("28", "-1", "a,b", ","):
        with pytest.raises(ValueError, match="--capture-layers"):
            parse_layers(text, 28)


def test_token_grid_walks_runs_against_grids():
    types = np.array([0, 2, 2, 2, 2, 0, 1, 1, 0], np.int8)
    # video: t=2 frames-pairs of a 2x4 patch grid -> merged 1x2 per step, 4 tokens; image: 1x2x4 -> 2 tokens
    pos, notes = token_grid(types, {2: np.array([[2, 2, 4]]), 1: np.array([[1, 2, 4]])}, merge=2)
    assert notes == []
    assert pos.tolist() == [[-1, -1, -1], [0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 1], [-1, -1, -1],
                            [0, 0, 0], [0, 0, 1], [-1, -1, -1]]
    _, notes = token_grid(types, {2: np.array([[1, 2, 4]])}, merge=2)
    assert len(notes) == 2 and "gives 2" in notes[0] and "no grid" in notes[1]


def test_capture_round_trip_through_infer(clip, tmp_path, capsys):
    path = tmp_path / "qkv.npz"
    code = main(["infer", "--model", "tiny", "--type", "video", "--input", str(clip), "--prompt", "What moves?",
                 "--fps", "2", "--max-frames", "4", "--max-new-tokens", "1", "--capture-qkv", str(path),
                 "--capture-layers", "1,0", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    cap = load_capture(path)
    m = cap.meta
    L = m["length"]
    assert f"written to {path}" in out and f"prefill, {L} tokens" in out
    assert sorted(cap.layers) == [0, 1] and m["layers"] == [0, 1] and m["num_layers"] == 2
    for t in cap.layers.values():
        assert t["q"].shape == (1, 4, L, 64) and t["k"].shape == (1, 2, L, 64) and t["v"].shape == (1, 2, L, 64)
        assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in t.values())
    assert not np.array_equal(cap.layers[0]["k"], cap.layers[1]["k"])
    a = cap.arrays
    assert a["input_ids"].shape == (L,) and a["token_type"].dtype == np.int8 and a["token_grid"].shape == (L, 3)
    t_, h, w = a["video_grid_thw"].tolist()[0]                      # 4 frames -> 2 temporal steps; 9 x 12 patches
    n_video = t_ * h * w // 4
    assert (a["token_type"] == 2).sum() == n_video and (a["token_type"] == 1).sum() == 0
    assert m["token_counts"] == {"text": L - n_video, "image": 0, "video": n_video}
    vis = a["token_grid"][a["token_type"] == 2]
    assert vis[:, 0].max() == t_ - 1 and vis[:, 1].max() == h // 2 - 1 and vis[:, 2].max() == w // 2 - 1
    assert (a["token_grid"][a["token_type"] == 0] == -1).all()
    assert a["second_per_grid_ts"].tolist() == [1.0]                  # 2 frames per step at 2 fps
    assert (m["format"], m["layout"], m["post_rope"], m["stage"]) == ("paddlemix_psa.qkv/1", "BHSD", True, "prefill")
    assert (m["q_heads"], m["kv_heads"], m["head_dim"], m["source_dtype"]) == (4, 2, 64, "float32")
    assert m["model"] == "tiny" and m["use_psa"] is True and m["prompt"] == "What moves?"
    assert m["media"]["frames"] == 4 and m["psa_config"]["query_block"] == 64

    # every layer's q/k/v can be swept
    points = tmp_path / "points.json"
    code = main(["sweep", "--qkv", str(path), "--layer", "1", "--mask-modes", "topk", "--topk", "0.2",
                 "--key-blocks", "32", "--strides", "16", "--no-plot", "--json", str(points), "--quiet"])
    assert code == 0, capsys.readouterr().err
    data = json.loads(points.read_text())
    assert data["case"]["layer"] == 1 and data["case"]["length"] == L
    assert data["case"]["token_counts"]["video"] == n_video and len(data["points"]) == 3


def test_captured_tensors_are_the_post_rope_attention_inputs(clip):
    from paddlemix_psa.app.inference import QwenVLInference

    app = QwenVLInference(use_psa=False, model="tiny", quiet=True)
    attn = app.model.model.language_model.layers[0].self_attn
    seen = []
    hook = attn.qkv_proj.register_forward_post_hook(lambda layer, inp, out: seen.append(out.numpy()))
    try:
        with QKVCapture(app, [0]) as cap:
            app.inference_video(clip, "What moves?", fps=2, max_frames=4, max_new_tokens=1)
    finally:
        hook.remove()
    assert app.model.config.text_config._attn_implementation == "sdpa"       # restored
    assert type(app.processor).__name__ == "TinyProcessor"
    q, k, v = (cap.tensors[0][n][0] for n in ("q", "k", "v"))              # [H, L, D]
    Hq, L, D = q.shape
    Hkv = k.shape[0]
    mix = seen[0][0].reshape(L, Hkv, Hq // Hkv + 2, D)                      # PaddleFormers' fused qkv layout
    q_pre = mix[:, :, :-2].reshape(L, Hq, D).transpose(1, 0, 2)
    k_pre, v_pre = mix[:, :, -2].transpose(1, 0, 2), mix[:, :, -1].transpose(1, 0, 2)
    np.testing.assert_array_equal(v, v_pre)                                 # values: no rotary embedding
    # position 0 has angle 0 (identity); later positions are rotated: same norm, other values
    np.testing.assert_allclose(q[:, 0], q_pre[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(k[:, 0], k_pre[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), np.linalg.norm(q_pre, axis=-1), rtol=1e-4)
    assert np.abs(q[:, 1:] - q_pre[:, 1:]).max() > 1e-2 and np.abs(k[:, 1:] - k_pre[:, 1:]).max() > 1e-2


def test_capture_option_errors(clip, tmp_path, capsys):
    base = ["infer", "--model", "tiny", "--type", "video", "--input", str(clip), "--prompt", "x", "--quiet"]
    cases = [
        (["--capture-qkv", str(tmp_path / "a.npz"), "--capture-layers", "2"], "this model's LLM layers are 0..1"),
        (["--capture-layers", "0"], "--capture-layers needs --capture-qkv"),
        (["--capture-qkv", str(tmp_path / "missing" / "a.npz")], "does not exist"),
    ]
    for extra, msg in cases:
        assert main(base + extra) == 4
        assert msg in capsys.readouterr().err
    assert main(["infer", "--model", "some/model", "--host", "paddlemix", "--type", "video", "--input", str(clip),
                 "--prompt", "x", "--capture-qkv", str(tmp_path / "b.npz")]) == 4
    assert "--capture-qkv needs --host paddleformers" in capsys.readouterr().err
    not_npz = tmp_path / "x.npz"
    not_npz.write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_capture(not_npz)
