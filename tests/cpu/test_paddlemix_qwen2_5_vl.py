"""`attn_implementation="psa"` in PaddleMIX's Qwen2.5-VL (docs/HOSTS.md §2, §4, §5) on a tiny random model.

Runs where `paddlemix` imports, or against a source checkout named by PADDLEMIX_SRC (loaded as docs/HOSTS.md §2.7
describes: `paddlemix/__init__` and `ppdiffusers` are stubbed, the model code itself is unmodified);
skipped otherwise. Verified against PaddleMIX 9866511 (model file as in 148e8b3) with paddlenlp 3.0.0b4.
"""
import importlib
import json
import logging
import os
import sys
import types

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

MIX_NAME = "paddlemix.models.qwen2_5_vl.modeling_qwen2_5_vl"


def _stub(name, path=None, **attrs):
    mod = types.ModuleType(name)
    if path is not None:
        mod.__path__ = [path]
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def load_paddlemix():
    try:
        return importlib.import_module(MIX_NAME)
    except ImportError:
        pass
    src = os.environ.get("PADDLEMIX_SRC")
    if not src:
        pytest.skip("paddlemix is not importable and PADDLEMIX_SRC is not set", allow_module_level=True)
    pytest.importorskip("paddlenlp")
    pytest.importorskip("einops")
    pkg = os.path.join(src, "paddlemix")
    for name in ("paddlemix", "paddlemix.models", "paddlemix.models.qwen2_vl", "paddlemix.models.qwen2_5_vl"):
        if name not in sys.modules:
            _stub(name, os.path.join(pkg, *name.split(".")[1:]))
    if "ppdiffusers.utils.logging" not in sys.modules:
        class _Logger(logging.LoggerAdapter):
            def warning_once(self, *a, **k):
                self.warning(*a, **k)

            def info_once(self, *a, **k):
                self.info(*a, **k)

        log = _stub("ppdiffusers.utils.logging", get_logger=lambda name=None: _Logger(logging.getLogger(name), {}))
        sys.modules.setdefault("ppdiffusers", _stub("ppdiffusers", ""))
        _stub("ppdiffusers.utils", "", logging=log)
    return importlib.import_module(MIX_NAME)


M = load_paddlemix()
configuration = importlib.import_module("paddlemix.models.qwen2_5_vl.configuration_qwen2_5_vl")

import paddlemix_psa.integrations as integ  # noqa: E402
from paddlemix_psa.config import AttentionConfig  # noqa: E402
from paddlemix_psa.integrations import paddlemix as mix  # noqa: E402
from paddlemix_psa.statistics import REGISTRY  # noqa: E402

Model = M.Qwen2_5_VLForConditionalGeneration
LEVEL1 = {"mask_ratios": {1: (0.0, 1.0)}, "min_seq_len": 0, "dense_tail_tokens": 0}
IMAGE, VIDEO, START, END = 261, 262, 259, 260
TEXT_LAYERS = ("model.layers.0.self_attn", "model.layers.1.self_attn")

mix.register_paddlemix(module=M)


def tiny_config(**top):
    return configuration.Qwen2_5_VLConfig(
        vocab_size=264, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]},
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END,
        tie_word_embeddings=False, **top,
        vision_config=dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256,
                           window_size=112, fullatt_block_indexes=[1], patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, in_channels=3))


def build(attn="eager", state=None, **kw):
    paddle.seed(0)
    model = Model(tiny_config(), attn_implementation=attn, **kw)
    if state is not None:
        model.set_state_dict(state)
    model.eval()
    return model


def visual_inputs(grid, before, after, video=False, seed=0):
    rng = np.random.default_rng(seed)
    n = int(np.prod(grid))
    ids = [1] + list(rng.integers(2, 250, before)) + [START] + [VIDEO if video else IMAGE] * (n // 4) + [END] \
        + list(rng.integers(2, 250, after))
    pix = paddle.to_tensor(rng.standard_normal((n, 3 * 2 * 14 * 14)).astype("float32"))
    g = paddle.to_tensor([grid])
    kw = {"pixel_values_videos": pix, "video_grid_thw": g} if video else {"pixel_values": pix, "image_grid_thw": g}
    return paddle.to_tensor([ids]), kw


def run(model, ids, **kw):
    with paddle.no_grad():
        return model(input_ids=ids, return_dict=True, **kw)


@pytest.fixture(scope="module")
def eager():
    return build()


@pytest.fixture(scope="module")
def psa(eager):
    return build("psa", state=eager.state_dict(), psa_config=LEVEL1)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv("PADDLEMIX_PSA_STRICT", raising=False)
    REGISTRY.reset()


@pytest.mark.parametrize("video", [False, True], ids=["image", "video"])
def test_level1_equals_eager(eager, psa, video):
    ids, kw = visual_inputs([2, 8, 8] if video else [1, 16, 16], 6, 9, video=video)
    integ.reset_stats(psa)
    ref, out = run(eager, ids, **kw).logits, run(psa, ids, **kw).logits
    assert float((ref - out).abs().max()) <= 1e-5
    stats = integ.collect_stats(psa)
    for name in TEXT_LAYERS:                       # the always-present causal mask was recognised as causal
        assert stats[name].calls == 1 and not stats[name].fallbacks, stats[name]
    assert stats["visual.blocks.0.attn"].fallbacks == {"vision_window": 1}
    assert stats["visual.blocks.1.attn"].fallbacks == {"vision_dense": 1}


def test_tuple_cache_decode_and_padding(eager, psa):
    ids, kw = visual_inputs([1, 8, 8], 4, 3, seed=1)
    integ.reset_stats(psa)
    logits = []
    for m in (eager, psa):
        o = run(m, ids, use_cache=True, **kw)
        cache = o.past_key_values
        assert isinstance(cache[0], tuple) and tuple(cache[0][0].shape) == (1, 2, ids.shape[1], 64)
        nxt = o.logits[:, -1:].argmax(-1)
        o2 = run(m, nxt, past_key_values=cache, use_cache=True, rope_deltas=o.rope_deltas,
                 attention_mask=paddle.ones([1, ids.shape[1] + 1], dtype="int64"))
        assert tuple(o2.past_key_values[0][0].shape) == (1, 2, ids.shape[1] + 1, 64)
        logits.append(o2.logits)
    assert float((logits[0] - logits[1]).abs().max()) <= 1e-5
    assert integ.collect_stats(psa)[TEXT_LAYERS[0]].fallbacks == {"decode": 1}
    pad = paddle.concat([paddle.zeros([1, 2], dtype="int64"), paddle.ones([1, ids.shape[1] - 2], dtype="int64")], 1)
    ref, out = run(eager, ids, attention_mask=pad, **kw).logits, run(psa, ids, attention_mask=pad, **kw).logits
    assert float((ref - out).abs().max()) <= 1e-5
    assert REGISTRY.fallbacks["padding"] == 2


def test_call_shape_pins(eager, psa):
    """docs/HOSTS.md §2.4/§2.5: packed vision calls with cu_seqlens, 4-D masks and tuple caches for the LLM."""
    seen = []
    vis_fwd, txt_fwd = type(psa.visual.blocks[0].attn).forward, type(psa.model.layers[0].self_attn).forward

    def vis(self, hidden_states, cu_seqlens, rotary_pos_emb=None, **kw):
        seen.append(("vision", tuple(hidden_states.shape), cu_seqlens.tolist()))
        return vis_fwd(self, hidden_states, cu_seqlens, rotary_pos_emb, **kw)

    def txt(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None, **kw):
        seen.append(("text", tuple(hidden_states.shape), tuple(attention_mask.shape),
                     None if past_key_value is None else tuple(past_key_value[0].shape)))
        return txt_fwd(self, hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                       past_key_value=past_key_value, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(type(psa.visual.blocks[0].attn), "forward", vis)
    mp.setattr(type(psa.model.layers[0].self_attn), "forward", txt)
    try:
        ids, kw = visual_inputs([1, 8, 8], 2, 3)
        o = run(psa, ids, use_cache=True, **kw)
        run(psa, o.logits[:, -1:].argmax(-1), past_key_values=o.past_key_values, use_cache=True,
            rope_deltas=o.rope_deltas, attention_mask=paddle.ones([1, 25], dtype="int64"))
    finally:
        mp.undo()
    assert seen[:2] == [("vision", (64, 128), [0, 64]), ("vision", (64, 128), [0, 64])]
    assert seen[2:4] == [("text", (1, 24, 256), (1, 1, 24, 24), None)] * 2
    assert seen[4:] == [("text", (1, 1, 256), (1, 1, 1, 25), (1, 2, 24, 64))] * 2


def test_signature_and_parameter_names():
    import inspect

    for table, extra in ((M.QWEN2_5_VL_ATTENTION_CLASSES, ()), (M.QWEN2_5_VL_VISION_ATTENTION_CLASSES, ())):
        parent, ours = table["eager"], table["psa"]
        assert issubclass(ours, parent)
        pp = inspect.signature(parent.forward).parameters
        op = inspect.signature(ours.forward).parameters
        assert [p for p in pp if pp[p].kind is not inspect.Parameter.VAR_KEYWORD] == \
            [p for p in op if op[p].kind is not inspect.Parameter.VAR_KEYWORD]
        assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in op.values())
    m = build("psa")
    names = {n for n, _ in m.named_parameters()}
    assert "visual.blocks.0.attn.qkv.weight" in names and "visual.blocks.0.attn.proj.weight" in names
    assert "model.layers.0.self_attn.q_proj.weight" in names
    # extra keyword arguments of newer PaddleMIX versions are accepted (and passed on where the parent takes them)
    attn = m.model.layers[0].self_attn
    h = paddle.randn([1, 5, 256])
    pos = paddle.arange(5).reshape([1, 1, 5]).expand([3, 1, 5])
    attn(h, attention_mask=None, position_ids=pos, cache_position=paddle.arange(5), some_future_kwarg=1)



def test_newer_parent_signature_position_embeddings(eager):
    """Later PaddleMIX (12cc8e1) passes cos/sin as `position_embeddings` and adds parameters: the PSA class built
    from such a parent mirrors its signature and uses the cos/sin it is given."""
    import inspect

    base = M.QWEN2_5_VL_ATTENTION_CLASSES["eager"]

    class NewerEager(base):
        def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                    output_attentions=False, use_cache=False, cache_position=None, position_embeddings=None,
                    **kwargs):
            return super().forward(hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                                   past_key_value=past_key_value, output_attentions=output_attentions,
                                   use_cache=use_cache, cache_position=cache_position)

    fake = types.SimpleNamespace(QWEN2_5_VL_ATTENTION_CLASSES={"eager": NewerEager},
                                 apply_multimodal_rotary_pos_emb=M.apply_multimodal_rotary_pos_emb)
    cls = mix._make_text_class(fake)
    assert "position_embeddings" in inspect.signature(cls.forward).parameters
    ref_layer = eager.model.layers[0].self_attn
    layer = cls(ref_layer.config, 0)
    layer.set_state_dict(ref_layer.state_dict())
    object.__setattr__(layer, "_psa_attention_config", AttentionConfig(**LEVEL1))
    layer.eval()
    h = paddle.randn([1, 40, 256])
    pos = paddle.arange(40).reshape([1, 1, 40]).expand([3, 1, 40])
    cos, sin = layer.rotary_emb(h, pos)
    causal = paddle.triu(paddle.full([40, 40], -3.4e38), diagonal=1).reshape([1, 1, 40, 40])
    with paddle.no_grad():
        out, _, cache = layer(h, attention_mask=causal, position_ids=pos, use_cache=True,
                              position_embeddings=(cos, sin))
        ref, _, _ = NewerEager.forward(layer, h, attention_mask=causal, position_ids=pos)
    assert float((out - ref).abs().max()) <= 1e-5 and tuple(cache[0].shape) == (1, 2, 40, 64)
    assert layer.__dict__["_psa_layer_stats"].psa_calls == 1

def test_registration_idempotent_and_guarded():
    assert mix.register_paddlemix(module=M) and mix.register_paddlemix(module=M)
    first = M.QWEN2_5_VL_ATTENTION_CLASSES["psa"]
    mix.register_paddlemix(module=M)
    assert M.QWEN2_5_VL_ATTENTION_CLASSES["psa"] is first and mix.is_registered(M)
    saved = M.QWEN2_5_VL_VISION_ATTENTION_CLASSES.pop("psa")
    M.QWEN2_5_VL_VISION_ATTENTION_CLASSES["psa"] = M.QWEN2_5_VL_VISION_ATTENTION_CLASSES["eager"]
    try:
        with pytest.raises(RuntimeError, match="refusing"):
            mix.register_paddlemix(module=M)
    finally:
        M.QWEN2_5_VL_VISION_ATTENTION_CLASSES["psa"] = saved
    with pytest.raises(TypeError, match="not a PaddleMIX"):
        mix.register_paddlemix(module=types.ModuleType("not_mix"))


def test_config_flow(tmp_path, eager):
    def towers(m):
        return (type(m.model.layers[0].self_attn).__name__, type(m.visual.blocks[0].attn).__name__)

    psa_names = ("PsaQwen2_5_VLAttention", "PsaQwen2_5_VLVisionAttention")
    assert towers(build("psa")) == psa_names
    for key in ("_attn_implementation", "attn_implementation"):       # set on the config object
        cfg = tiny_config()
        setattr(cfg, key, "psa")
        assert towers(Model(cfg)) == psa_names
    cfg = tiny_config()
    cfg._attn_implementation = "eager"                                # other values: overwritten as before
    Model(cfg)
    assert cfg._attn_implementation == "flash_attention_2"
    eager.save_pretrained(str(tmp_path))
    loaded = Model.from_pretrained(str(tmp_path), attn_implementation="psa", psa_config=AttentionConfig(key_block=64))
    assert towers(loaded) == psa_names and AttentionConfig.coerce(loaded.config.psa_config).key_block == 64
    with open(tmp_path / "config.json") as f:
        cj = json.load(f)
    cj["_attn_implementation"] = "psa"
    cj["psa_config"] = {"key_block": 16}
    with open(tmp_path / "config.json", "w") as f:
        json.dump(cj, f)
    loaded = Model.from_pretrained(str(tmp_path))
    assert towers(loaded) == psa_names
    from paddlemix_psa.integrations.qwen2_5_vl import resolve_config
    layer = loaded.model.layers[0].self_attn
    assert resolve_config(layer, layer.config).key_block == 16
    with pytest.raises(ValueError, match="key_block"):
        build("psa", psa_config={"key_block": 7})


# ------------------------------------------------------------------------------------------ autoload (fresh interpreter)
CHILD = r'''
import os, sys, site
site.addsitedir(sys.argv[1])                       # processes paddlemix_psa_autoload.pth as interpreter start does
assert "paddlemix_psa" not in sys.modules and "paddle" not in sys.modules
'''


def _child(tmp_path, autoload):
    import shutil
    import subprocess

    site_dir = tmp_path / "site"
    site_dir.mkdir()
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    shutil.copy(os.path.join(src, "paddlemix_psa_autoload.pth"), site_dir)
    # The child loads the checkout with this file's helper (everything above `M = load_paddlemix()`), which
    # imports neither paddlemix_psa nor its integrations.
    code = CHILD + r'''
import importlib.util
spec = importlib.util.spec_from_file_location("_mixload", os.path.join(sys.argv[2], "test_paddlemix_qwen2_5_vl.py"))
src = open(spec.origin).read().split("\nM = load_paddlemix()")[0]
ns = {}
exec(compile(src, spec.origin, "exec"), ns)
M = ns["load_paddlemix"]()
cfg_mod = importlib.import_module("paddlemix.models.qwen2_5_vl.configuration_qwen2_5_vl")
try:
    cfg = cfg_mod.Qwen2_5_VLConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]},
        vision_config=dict(depth=1, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=128))
    m = M.Qwen2_5_VLForConditionalGeneration(cfg, attn_implementation="psa")
    print("RESULT", type(m.model.layers[0].self_attn).__name__, type(m.visual.blocks[0].attn).__name__)
except Exception as exc:
    print("ERROR", type(exc).__name__, exc)
'''
    env = dict(os.environ, PADDLEMIX_PSA_AUTOLOAD=autoload, GLOG_minloglevel="2")
    proc = subprocess.run([sys.executable, "-c", code, str(site_dir), os.path.dirname(os.path.abspath(__file__))],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("RESULT", "ERROR"))]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    return lines[-1]


def test_fresh_interpreter_selects_psa_without_import(tmp_path):
    assert _child(tmp_path, "1") == "RESULT PsaQwen2_5_VLAttention PsaQwen2_5_VLVisionAttention"


def test_opt_out_leaves_the_host_alone(tmp_path):
    """PADDLEMIX_PSA_AUTOLOAD=0 loads nothing of the plugin: `psa` is unknown to PaddleMIX's own class tables."""
    line = _child(tmp_path, "0")
    assert line.startswith("ERROR") and "paddlemix_psa" not in line, line
