"""Host glue edges: broken hosts answer `is_registered() == False` with a reason, the registry lookup uses the
public mapping API (the private dict only as a guarded fallback), per-layer statistics are thread-safe."""
import logging
import sys
import threading
import types

import pytest

pytest.importorskip("paddleformers")
from paddleformers.nn.attention.interface import AttentionInterface  # noqa: E402

import paddlemix_psa  # noqa: E402
from paddlemix_psa import integrations as integ  # noqa: E402
from paddlemix_psa.integrations import paddleformers as pfm  # noqa: E402
from paddlemix_psa.integrations import paddlemix as mix  # noqa: E402
from paddlemix_psa.integrations import qwen2_5_vl as policy  # noqa: E402
from paddlemix_psa.statistics import REGISTRY  # noqa: E402

integ.register("paddleformers")


def test_installed_paddleformers_is_a_supported_version():
    import paddleformers

    assert ".".join(paddleformers.__version__.split(".")[:2]) in pfm.SUPPORTED_VERSIONS


def test_lookup_uses_the_public_mapping_api():
    assert pfm._lookup(AttentionInterface, "psa") is pfm.psa_attention_forward
    assert pfm._lookup(AttentionInterface, "no such key") is None
    assert pfm._host_dense() is AttentionInterface()["sdpa"]


def test_private_registry_only_as_a_guarded_fallback():
    class OldStyle:                               # a release without the mapping API
        _global_mapping = {"psa": "fn"}

        def __init__(self):
            raise TypeError("not instantiable")

    assert pfm._lookup(OldStyle, "psa") == "fn"

    class Unusable:
        pass

    with pytest.raises(TypeError, match=r"supports PaddleFormers 1\.0, 1\.1, 1\.2"):
        pfm._lookup(Unusable, "psa")


def test_register_that_does_not_take_effect_names_the_supported_versions():
    class Inert(dict):
        @classmethod
        def register(cls, key, value):
            pass

    fake = types.SimpleNamespace(AttentionInterface=Inert)
    with pytest.raises(RuntimeError, match=r"did not take effect; paddlemix_psa supports PaddleFormers 1\.0"):
        pfm.register_paddleformers(fake)


def test_is_registered_is_false_with_a_reason_for_a_broken_host(monkeypatch):
    assert integ.is_registered("paddleformers") and integ.not_registered_reason("paddleformers") == ""
    monkeypatch.setitem(sys.modules, pfm.INTERFACE_MODULE, types.ModuleType(pfm.INTERFACE_MODULE))
    assert integ.is_registered("paddleformers") is False
    assert "AttentionInterface is unusable" in integ.not_registered_reason("paddleformers")
    broken_mix = types.ModuleType(mix.MODULE_NAME)
    broken_mix.QWEN2_5_VL_ATTENTION_CLASSES = None          # not a dict
    monkeypatch.setitem(sys.modules, mix.MODULE_NAME, broken_mix)
    monkeypatch.setitem(mix._STATE, "modules", [])
    assert integ.is_registered("paddlemix") is False and integ.not_registered_reason("paddlemix")
    assert integ.is_registered() is False


def test_fallback_log_names_the_real_function(caplog):
    caplog.set_level(logging.INFO, logger="paddlemix_psa")
    REGISTRY.record_fallback("test_only_reason", expected=True)
    msg = [r.getMessage() for r in caplog.records if "test_only_reason" in r.getMessage()]
    assert msg and "paddlemix_psa.stats()" in msg[0] and callable(paddlemix_psa.stats)


def test_layer_stats_creation_and_counts_are_thread_safe():
    modules = [types.SimpleNamespace() for _ in range(1500)]
    decision = policy._dense("decode")
    start = threading.Barrier(4)

    def work():
        start.wait()
        for m in modules:
            policy.record_fallback(m, decision)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = [policy.layer_stats(m).fallbacks["decode"] for m in modules]
    assert sum(counts) == 4 * len(modules) and set(counts) == {4}


# ------------------------------------------------------------------------------------------ host generate()
def test_paddleformers_generate_recomputes_the_prefix():
    """The host behaviour QwenVLInference works around (docs/HOSTS.md §1.7): every generate() step re-runs the
    whole prefix, even with use_cache=True; QwenVLInference's own loop prefills once, then one token a step."""
    import paddle

    from paddlemix_psa.app.tiny import build_tiny_model

    model, _ = build_tiny_model(0)
    seen, dense = [], AttentionInterface()["sdpa"]

    def record(module, q, k, v, *args, **kwargs):
        if getattr(module, "layer_idx", None) == 0 and module.is_causal:
            seen.append(q.shape[2])
        return dense(module, q, k, v, *args, **kwargs)

    AttentionInterface.register("test_record_lengths", record)
    model.config.text_config._attn_implementation = "test_record_lengths"
    with paddle.no_grad():
        model.generate(input_ids=paddle.to_tensor([[256] + list(range(1, 40))]), max_new_tokens=3,
                       decode_strategy="greedy_search", use_cache=True)
    assert seen == [40, 41, 42]


class _FakeMixModel:
    """Counts full forwards; generate() returns new token ids the way PaddleMIX does."""

    def __init__(self):
        self.forwards = 0

    def __call__(self, **inputs):
        import paddle

        self.forwards += 1
        return types.SimpleNamespace(logits=paddle.zeros([1, 5, 7]))

    def generate(self, **inputs):
        import paddle

        return paddle.to_tensor([[3, 4, 2]])


@pytest.mark.parametrize("keep", [False, True])
def test_paddlemix_path_runs_no_extra_prefill_unless_logits_are_kept(keep):
    from paddlemix_psa.app.inference import QwenVLInference

    app = object.__new__(QwenVLInference)                    # the generate step alone, without loading weights
    app.model, app.keep_prefill_logits, app.eos_ids = _FakeMixModel(), keep, {2}
    ids, last, full, t_pre, _ = app._host_generate({"input_ids": None}, 3)
    assert ids == [3, 4] and app.model.forwards == int(keep)
    assert (last is not None, full is not None, t_pre > 0) == (keep, keep, keep)


def test_resaved_checkpoint_workaround(tmp_path):
    """README pitfall: PaddleFormers 1.1 and 1.2 fail to reload a save_pretrained Qwen2.5-VL on qkv_proj.bias
    (without the plugin too; 1.0 reloads it); load_checkpoint_format="safetensors" loads it in every version."""
    import paddleformers
    import paddle
    from paddleformers.transformers.qwen2_5_vl.configuration import Qwen2_5_VLConfig
    from paddleformers.transformers.qwen2_5_vl.modeling import Qwen2_5_VLForConditionalGeneration as Model

    from paddlemix_psa.app.tiny import tiny_config_dict

    paddle.seed(0)
    Model(Qwen2_5_VLConfig(**tiny_config_dict())).save_pretrained(str(tmp_path))
    if not paddleformers.__version__.startswith("1.0"):
        with pytest.raises(Exception, match="qkv_proj.bias"):
            Model.from_pretrained(str(tmp_path))
    assert Model.from_pretrained(str(tmp_path), load_checkpoint_format="safetensors") is not None


def test_paddlemix_registration_failure_names_its_cause(monkeypatch, caplog):
    """The PaddleMIX side of a failed automatic registration: one warning, placeholder classes whose
    construction raises the plugin's error with the cause (PaddleMIX itself is not installed in CI)."""
    from paddlemix_psa.integrations import PSANotRegisteredError, _autoload

    class Eager:
        def __init__(self, *args, **kwargs):
            pass

    fake = types.ModuleType(mix.MODULE_NAME)
    fake.QWEN2_5_VL_VISION_ATTENTION_CLASSES = {"eager": Eager}
    fake.QWEN2_5_VL_ATTENTION_CLASSES = {"eager": Eager}
    monkeypatch.setattr(_autoload, "FAILURES", {})
    for key, value in (("mode", None), ("why", ""), ("modules", [])):
        monkeypatch.setitem(mix._STATE, key, value)
    caplog.set_level(logging.WARNING, logger="paddlemix_psa")
    for _ in range(2):                                   # a second failure does not warn again
        _autoload._record_failure(mix.MODULE_NAME, fake, TypeError("class tables are frozen"))
    warnings = [r.getMessage() for r in caplog.records if "PaddleMIX" in r.getMessage()]
    assert len(warnings) == 1 and "class tables are frozen" in warnings[0]
    with pytest.raises(PSANotRegisteredError, match="class tables are frozen"):
        fake.QWEN2_5_VL_ATTENTION_CLASSES["psa"]()
    assert "class tables are frozen" in mix.not_registered_reason()
