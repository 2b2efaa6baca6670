"""`QwenVLInference`: image and video understanding with Qwen2.5-VL, PSA on or off, with statistics and plots.

Real weights (the default, ``Qwen/Qwen2.5-VL-7B-Instruct``) load through the host's own ``from_pretrained``:

* ``host="paddleformers"``: ``paddleformers.transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained``
  plus ``AutoProcessor.from_pretrained``; PSA is selected per sub-config with
  ``paddlemix_psa.integrations.set_attn_implementation(model, text="psa", vision="psa")`` (docs/HOSTS.md §1.5: the
  ``attn_implementation=`` keyword is a TypeError there, and ``_attn_implementation=`` reaches the LLM only).
* ``host="paddlemix"``: PaddleMIX's ``Qwen2_5_VLForConditionalGeneration.from_pretrained(path,
  attn_implementation="psa")`` (docs/HOSTS.md §2.3: chosen at construction, both towers), its
  ``Qwen2_5_VLProcessor`` and ``MIXQwen2_5_Tokenizer``.

``model="tiny"`` builds a tiny random-weight Qwen2.5-VL from package data instead (``app/tiny.py``): the whole
pipeline then runs offline, and its text is meaningless.

Generation is greedy. On PaddleFormers it is driven step by step with a ``DynamicCache`` (one prefill, then one
token per step), because the host's ``generate()`` re-runs the whole prefix every step (docs/HOSTS.md §1.7;
measured on PaddleFormers 1.2, with and without ``use_cache=True``); PSA acts
on the prefill, decode steps are dense (counted as ``decode``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Iterator

import numpy as np

from ..config import AttentionConfig
from . import media

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
HOSTS = ("paddleformers", "paddlemix")
DENSE_IMPLEMENTATION = "sdpa"        # PaddleFormers' dense baseline when PSA is off (equal to eager on CPU)
CAPTURE_KEY = "psa_app_capture"      # a recording wrapper registered next to "psa" for the level-map plot
DEFAULT_MAX_NEW_TOKENS = 128


class InferenceError(RuntimeError):
    """Loading or running the model failed; `str()` is one line for the user."""


@dataclasses.dataclass
class InferenceResult:
    """One run. `str(result)` is the generated text."""

    text: str
    kind: str                         # "image" | "video"
    input: str
    use_psa: bool
    prompt_tokens: int
    token_ids: list[int]
    prefill_s: float
    decode_s: float
    media: dict[str, Any] = dataclasses.field(default_factory=dict)
    last_logits: np.ndarray | None = dataclasses.field(default=None, repr=False)     # [vocab], prefill's last row
    # (None on the PaddleMIX path unless keep_prefill_logits: reading it would cost one extra prefill)
    prefill_logits: np.ndarray | None = dataclasses.field(default=None, repr=False)  # [L, vocab] when kept

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "kind": self.kind, "input": self.input, "use_psa": self.use_psa,
                "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens, "token_ids": self.token_ids,
                "prefill_s": self.prefill_s, "decode_s": self.decode_s, "total_s": self.total_s,
                "media": self.media}


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def _integrations():
    try:
        from .. import integrations
    except ImportError as e:     # pragma: no cover - only while the package is being assembled
        raise InferenceError(f"paddlemix_psa.integrations is not available ({_one_line(e)})") from None
    return integrations


# ------------------------------------------------------------------------------------------ processors
class _HostProcessor:
    """The host's processor behind the interface of `tiny.TinyProcessor` (real weights; not run in CI)."""

    def __init__(self, processor: Any, host: str) -> None:
        self.processor, self.host = processor, host
        self.tokenizer = getattr(processor, "tokenizer", processor)

    def __call__(self, prompt: str, *, image=None, video: media.Video | None = None) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if image is not None:
            content.append({"type": "image", "image": image})
        if video is not None:
            content.append({"type": "video", "video": list(video.frames)})
        content.append({"type": "text", "text": prompt})
        messages = [{"role": "user", "content": content}]
        templ = getattr(self.processor, "apply_chat_template", None) or self.tokenizer.apply_chat_template
        text = templ(messages, tokenize=False, add_generation_prompt=True)
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pd", "padding": True}
        if image is not None:
            kwargs["images"] = [image]
        if video is not None:
            kwargs["videos"] = [video.frames]
            if self.host == "paddleformers":
                # frames are already sampled and on the 28-pixel grid within the budget (media.load_video):
                # no resampling, no second resize (its video defaults would upscale small frames)
                kwargs["videos_kwargs"] = {"do_sample_frames": False, "do_resize": False, "fps": video.sample_fps}
        inputs = self.processor(**kwargs)
        if video is not None and "second_per_grid_ts" not in inputs:
            import paddle
            inputs["second_per_grid_ts"] = paddle.to_tensor([video.seconds_per_grid], dtype="float32")
        return dict(inputs)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


# ------------------------------------------------------------------------------------------ the API
class QwenVLInference:
    """Qwen2.5-VL image/video understanding with Pyramid Sparse Attention.

    >>> m = QwenVLInference(use_psa=True, model="tiny", quiet=True)            # doctest: +SKIP
    >>> r = m.inference_image("photo.jpg", "Describe this image.")           # doctest: +SKIP
    >>> m.print_stats(); per_layer = m.stats()                                 # doctest: +SKIP

    Args:
        use_psa: select ``attn_implementation="psa"`` (False: the host's dense attention).
        model: a model id or local path for the host's ``from_pretrained``, or ``"tiny"``.
        psa_config: an ``AttentionConfig``, dict, JSON string or preset name; default ``AttentionConfig()``
            (for ``"tiny"``: ``tiny.TINY_PSA_CONFIG``, so its short prompts run sparse).
        host: ``"paddleformers"`` or ``"paddlemix"``.
        max_pixels / min_pixels: pixel budget per image or video frame (Qwen2.5-VL's smart resize, factor 28).
        quiet: no progress bars.
        max_download_mb: size cap for http(s) inputs (default 64 MiB images, 4 GiB videos, or
            ``PADDLEMIX_PSA_MAX_DOWNLOAD_MB``); ``cache_dir``: where downloads are cached.
        dtype: weights dtype for real models (default bfloat16 on GPU, float32 on CPU).
        keep_prefill_logits: keep the whole prefill logits (used by the demo's PSA-vs-dense comparison).
    """

    def __init__(self, use_psa: bool = True, model: str = DEFAULT_MODEL, psa_config: Any = None,
                 host: str = "paddleformers", max_pixels: int | None = None, quiet: bool = False, *,
                 min_pixels: int | None = None, dtype: str | None = None, cache_dir: str | None = None,
                 seed: int = 0, keep_prefill_logits: bool = False, plot_layer: int = 0,
                 max_download_mb: float | None = None) -> None:
        if host not in HOSTS:
            raise ValueError(f"host={host!r} is invalid: valid hosts are {list(HOSTS)}")
        self.model_name = str(model)
        self.is_tiny = self.model_name == "tiny"
        if self.is_tiny and host != "paddleformers":
            raise ValueError("model='tiny' is built with PaddleFormers; use host='paddleformers'")
        self.host = host
        self.quiet = quiet
        self.max_pixels = max_pixels
        self.min_pixels = min_pixels or media.MIN_PIXELS
        self.cache_dir = cache_dir
        if max_download_mb is not None and not (isinstance(max_download_mb, (int, float)) and 0 < max_download_mb
                                                < float("inf")):
            raise ValueError(f"max_download_mb={max_download_mb!r} is invalid: use a positive number of MiB or None")
        self.max_download_bytes = int(max_download_mb * (1 << 20)) if max_download_mb is not None else None
        self.keep_prefill_logits = keep_prefill_logits
        self.plot_layer = plot_layer
        if psa_config is None and self.is_tiny:
            from .tiny import TINY_PSA_CONFIG
            psa_config = TINY_PSA_CONFIG
        self.psa_config = AttentionConfig.coerce(psa_config)
        self._use_psa = bool(use_psa)
        self.last_result: InferenceResult | None = None
        self._layer_stats: dict[str, Any] = {}
        self._fallbacks: dict[str, int] = {}
        self._captured: dict[str, Any] | None = None
        self._load(dtype, seed)

    # ------------------------------------------------------------------------------ loading
    def _load(self, dtype: str | None, seed: int) -> None:
        integ = _integrations()
        if self.is_tiny:
            from .tiny import build_tiny_model

            integ.register()
            self.model, self.processor = build_tiny_model(seed, attn_implementation=DENSE_IMPLEMENTATION)
            self.eos_ids = {self.processor.tokenizer.eos_token_id}
        elif self.host == "paddleformers":
            self._load_paddleformers(dtype, integ)
        else:
            self._load_paddlemix(dtype, integ)
        self._attach_config()
        if self.host == "paddleformers":
            self.use_psa = self._use_psa     # PaddleMIX: chosen by the constructor keyword already

    def _load_paddleformers(self, dtype: str | None, integ) -> None:
        import paddle

        try:
            from paddleformers.transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
        except ImportError as e:
            raise InferenceError(f"PaddleFormers with Qwen2.5-VL is needed (pip install 'paddleformers>=1.0'): "
                                 f"{_one_line(e)}") from None
        dtype = dtype or ("bfloat16" if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count()
                          else "float32")
        integ.register()
        try:
            self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(self.model_name, dtype=dtype)
            self.model.eval()
            proc = AutoProcessor.from_pretrained(self.model_name)
        except Exception as e:  # noqa: BLE001 - host loaders raise many types; the user needs one line
            raise InferenceError(f"cannot load {self.model_name!r} with PaddleFormers: {_one_line(e)} "
                                 f"(use --model tiny for the offline model)") from None
        self.processor = _HostProcessor(proc, "paddleformers")
        self.eos_ids = _eos_ids(self.model, self.processor.tokenizer)

    def _load_paddlemix(self, dtype: str | None, integ) -> None:
        import paddle

        try:
            from paddlemix.models.qwen2_5_vl import MIXQwen2_5_Tokenizer
            from paddlemix.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
            from paddlemix.processors.qwen2_5_vl_processing import Qwen2_5_VLImageProcessor, Qwen2_5_VLProcessor
        except ImportError as e:
            raise InferenceError(f"PaddleMIX is not importable (it is installed from source, see docs/HOSTS.md §2.1): "
                                 f"{_one_line(e)}") from None
        dtype = dtype or ("bfloat16" if paddle.device.cuda.device_count() else "float32")
        integ.register()
        impl = "psa" if self._use_psa else "eager"     # PaddleMIX decides at construction (docs/HOSTS.md §2.3)
        try:
            self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                self.model_name, dtype=dtype, attn_implementation=impl)
            self.model.eval()
            tok = MIXQwen2_5_Tokenizer.from_pretrained(self.model_name)
            proc = Qwen2_5_VLProcessor(Qwen2_5_VLImageProcessor(), tok)
        except Exception as e:  # noqa: BLE001
            raise InferenceError(f"cannot load {self.model_name!r} with PaddleMIX: {_one_line(e)}") from None
        self.processor = _HostProcessor(proc, "paddlemix")
        self.eos_ids = _eos_ids(self.model, tok)

    def _attach_config(self) -> None:
        """Put the PSA settings where the adapters read them (`integrations.qwen2_5_vl.resolve_config`)."""
        d = self.psa_config.to_dict()
        cfg = self.model.config
        with contextlib.suppress(Exception):
            cfg.psa_config = d             # PaddleFormers (with the plugin's config flow) copies it to both towers
        for sub in (getattr(cfg, "text_config", None), getattr(cfg, "vision_config", None)):
            if sub is not None and getattr(sub, "psa_config", None) != d:
                sub.psa_config = d

    # ------------------------------------------------------------------------------ PSA on / off
    @property
    def use_psa(self) -> bool:
        return self._use_psa

    @use_psa.setter
    def use_psa(self, flag: bool) -> None:
        """Switch PSA on the loaded model. PaddleFormers reads the key at every forward; on PaddleMIX the
        integration swaps each attention module's class (same parameters), dense there meaning `eager`."""
        flag = bool(flag)
        dense = DENSE_IMPLEMENTATION if self.host == "paddleformers" else "eager"
        impl = "psa" if flag else dense
        integ = _integrations()
        setter = getattr(integ, "set_attn_implementation", None)
        if setter is not None:
            try:
                setter(self.model, text=impl, vision=impl)
            except ImportError as e:
                raise InferenceError(f"cannot switch attention on {self.host}: {_one_line(e)}") from None
        elif self.host == "paddleformers":  # pragma: no cover - integrations without the helper
            self.model.config.text_config._attn_implementation = impl
            self.model.config.vision_config._attn_implementation = impl
        else:  # pragma: no cover
            raise InferenceError("this PaddleMIX integration cannot switch attention after construction; "
                                 "create another QwenVLInference")
        self._use_psa = flag

    # ------------------------------------------------------------------------------ inference
    def load_image(self, path_or_url):
        """The image as the model will see it (resized to the pixel budget); a `PIL.Image` passes through."""
        if hasattr(path_or_url, "convert") and hasattr(path_or_url, "size"):
            from PIL import Image

            img = path_or_url.convert("RGB")
            h, w = media.smart_resize(img.height, img.width, min_pixels=self.min_pixels,
                                      max_pixels=self.max_pixels or media.MAX_PIXELS)
            return img if (w, h) == img.size else img.resize((w, h), Image.BICUBIC)
        return media.load_image(path_or_url, max_pixels=self.max_pixels, min_pixels=self.min_pixels,
                                cache_dir=self.cache_dir, quiet=self.quiet, max_download_bytes=self.max_download_bytes)

    def load_video(self, path_or_url, fps: float = 1.0, max_frames: int = media.DEFAULT_MAX_FRAMES) -> media.Video:
        """Sampled, resized frames; a `media.Video` passes through."""
        if isinstance(path_or_url, media.Video):
            return path_or_url
        return media.load_video(path_or_url, fps=fps, max_frames=max_frames, max_pixels=self.max_pixels,
                                cache_dir=self.cache_dir, quiet=self.quiet, max_download_bytes=self.max_download_bytes)

    def inference_image(self, path_or_url: str, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                        ) -> InferenceResult:
        """Answer `prompt` about one image (local path, http(s) URL, or a `PIL.Image` from `load_image`)."""
        img = self.load_image(path_or_url)
        info = {"size": list(img.size), "tokens": img.size[0] * img.size[1] // (media.FACTOR ** 2)}
        inputs = self.processor(prompt, image=img)
        return self._run(inputs, "image", _source_name(path_or_url), info, max_new_tokens)

    def inference_video(self, path_or_url: str, prompt: str, fps: float = 1.0,
                        max_frames: int = media.DEFAULT_MAX_FRAMES,
                        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> InferenceResult:
        """Answer `prompt` about one video (path, URL, or a `media.Video` from `load_video`), sampled at `fps`
        frames per second (at most `max_frames`)."""
        video = self.load_video(path_or_url, fps=fps, max_frames=max_frames)
        info = video.info()
        inputs = self.processor(prompt, video=video)
        return self._run(inputs, "video", _source_name(path_or_url), info, max_new_tokens)

    def _run(self, inputs: dict[str, Any], kind: str, source: str, info: dict[str, Any],
             max_new_tokens: int) -> InferenceResult:
        import paddle

        from ..statistics import REGISTRY

        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        integ = _integrations()
        if hasattr(integ, "reset_stats"):
            integ.reset_stats(self.model)
        before = dict(REGISTRY.summary().fallbacks)
        prompt_len = int(inputs["input_ids"].shape[1])
        stats_were_on = REGISTRY.enabled
        REGISTRY.enabled = True          # per-call statistics for this run only; restored below
        try:
            with paddle.no_grad(), self._capture():
                if self.host == "paddleformers":
                    ids, last, full, t_pre, t_dec = self._greedy(inputs, max_new_tokens)
                else:
                    ids, last, full, t_pre, t_dec = self._host_generate(inputs, max_new_tokens)
        except (MemoryError, KeyboardInterrupt):
            raise
        except InferenceError:
            raise
        except Exception as e:  # noqa: BLE001 - one line for the user; the traceback stays available
            raise InferenceError(f"generation failed: {_one_line(e)}") from e
        finally:
            REGISTRY.enabled = stats_were_on
        after = dict(REGISTRY.summary().fallbacks)
        self._fallbacks = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0)}
        self._layer_stats = dict(integ.collect_stats(self.model)) if hasattr(integ, "collect_stats") else {}
        text = self.processor.decode(ids)
        res = InferenceResult(text=text, kind=kind, input=source, use_psa=self._use_psa, prompt_tokens=prompt_len,
                              token_ids=ids, prefill_s=t_pre, decode_s=t_dec, media=info, last_logits=last,
                              prefill_logits=full)
        self.last_result = res
        return res

    def _greedy(self, inputs: dict[str, Any], max_new_tokens: int):
        import paddle
        from paddleformers.transformers.cache_utils import DynamicCache
        from tqdm.auto import tqdm

        L = int(inputs["input_ids"].shape[1])
        with tqdm(total=max_new_tokens, unit="tok", desc="generate", disable=self.quiet, leave=False) as bar:
            t0 = time.perf_counter()
            out = self.model(**inputs, past_key_values=DynamicCache(), use_cache=True,
                             cache_position=paddle.arange(L), return_dict=True)
            logits = out.logits
            full = logits[0].astype("float32").numpy() if self.keep_prefill_logits else None
            last = logits[0, -1].astype("float32").numpy()
            t_pre = time.perf_counter() - t0
            cache = out.past_key_values
            tok = int(last.argmax())
            ids: list[int] = []
            t1 = time.perf_counter()
            for step in range(max_new_tokens):
                ids.append(tok)
                bar.update(1)
                if tok in self.eos_ids or step == max_new_tokens - 1:
                    break
                out = self.model(input_ids=paddle.to_tensor([[tok]], dtype="int64"), past_key_values=cache,
                                 use_cache=True, cache_position=paddle.to_tensor([L + step], dtype="int64"),
                                 return_dict=True)
                cache = out.past_key_values
                tok = int(out.logits[0, -1].argmax())
            t_dec = time.perf_counter() - t1
        if ids and ids[-1] in self.eos_ids:
            ids = ids[:-1]
        return ids, last, full, t_pre, t_dec

    def _host_generate(self, inputs: dict[str, Any], max_new_tokens: int):
        """PaddleMIX: its own `generate()` (greedy, with its KV cache). Only with `keep_prefill_logits` does one
        extra full prefill forward run, to read the logits and time the prefill; otherwise generate() covers
        both and its time is reported as decode time (prefill_s = 0)."""
        last = full = None
        t_pre = 0.0
        if self.keep_prefill_logits:
            t0 = time.perf_counter()
            out = self.model(**inputs, return_dict=True)
            last = out.logits[0, -1].astype("float32").numpy()
            full = out.logits[0].astype("float32").numpy()
            t_pre = time.perf_counter() - t0
        t1 = time.perf_counter()
        gen = self.model.generate(**inputs, max_new_tokens=max_new_tokens, decode_strategy="greedy_search")
        seq = gen[0] if isinstance(gen, (tuple, list)) else gen
        ids = [int(x) for x in np.asarray(seq.numpy()).reshape(-1)]   # PaddleMIX returns new tokens only
        ids = [t for t in ids if t not in self.eos_ids]
        return ids, last, full, t_pre, time.perf_counter() - t1

    # ------------------------------------------------------------------------------ level-map capture
    @contextlib.contextmanager
    def _capture(self) -> Iterator[None]:
        """Record q/k of LLM layer `plot_layer` at prefill, for `plot()` (PaddleFormers only)."""
        self._captured = None
        if self.host != "paddleformers":
            yield
            return
        from paddleformers.nn.attention.interface import ALL_ATTENTION_FUNCTIONS, AttentionInterface

        text_cfg = self.model.config.text_config
        inner = text_cfg._attn_implementation
        target = self.plot_layer
        app = self

        def capture(module, query, key, value, *args, **kwargs):
            if app._captured is None and query.shape[2] > 1 and getattr(module, "layer_idx", None) == target:
                app._captured = {"q": query.detach(), "k": key.detach(), "layer": target,
                                 "name": f"language_model.layers.{target}.self_attn"}
            return ALL_ATTENTION_FUNCTIONS[inner](module, query, key, value, *args, **kwargs)

        AttentionInterface.register(CAPTURE_KEY, capture)
        text_cfg._attn_implementation = CAPTURE_KEY
        try:
            yield
        finally:
            text_cfg._attn_implementation = inner

    def level_map(self, head: int = 0) -> dict[str, Any] | None:
        """The level map PSA builds for head `head` of layer `plot_layer` in the last run (recomputed from that
        layer's q/k with this config); None when nothing was captured or PSA did not run on that layer."""
        cap = self._captured
        if cap is None or not self._use_psa:
            return None
        st = self._stats_for_layer(cap["layer"])
        if st is not None and not st.valid_pairs:
            return None                          # the layer fell back to dense (e.g. "short")
        from ..ops.attention import build_level_map

        q, k = cap["q"], cap["k"]
        lm = build_level_map(q, k, self.psa_config, causal=True, layout="BHSD")
        if not 0 <= head < lm.shape[1]:
            raise ValueError(f"head={head} is invalid: layer {cap['layer']} has {lm.shape[1]} mask heads")
        return {"map": lm[0, head].numpy().astype(np.int8), "layer": cap["layer"], "head": head,
                "Lq": int(q.shape[2]), "Lk": int(k.shape[2]), "query_block": self.psa_config.query_block,
                "key_block": self.psa_config.key_block}

    def _stats_for_layer(self, layer: int):
        for name, st in self._layer_stats.items():
            if _layer_index(name) == layer and "visual" not in name:
                return st
        return None

    # ------------------------------------------------------------------------------ statistics
    def stats(self) -> dict[str, Any]:
        """Per-layer `PSAStats` of the last run, keyed by layer name (vision layers carry only fallbacks)."""
        return dict(self._layer_stats)

    def fallbacks(self) -> dict[str, int]:
        """Dense fallbacks of the last run, per reason (process-wide counters, difference over the run)."""
        return dict(self._fallbacks)

    def summary(self):
        """Valid-pair-weighted aggregate `PSAStats` of the LLM layers in the last run."""
        from ..statistics import PSAStats

        text = [s for n, s in self._layer_stats.items() if "visual" not in n]
        agg = PSAStats.merge(text) if text else PSAStats(calls=0)
        agg.calls = sum(s.calls for s in text)
        agg.fallbacks = dict(self._fallbacks)
        return agg

    def report(self) -> dict[str, Any]:
        """Everything about the last run as JSON-able data (what `--stats-out` writes)."""
        agg = self.summary()
        return {
            "model": self.model_name, "host": self.host, "use_psa": self._use_psa,
            "psa_config": self.psa_config.to_dict(),
            "result": self.last_result.to_dict() if self.last_result else None,
            "aggregate": {"density": agg.density, "sparsity": agg.sparsity, "psa_calls": agg.calls,
                          "histogram": agg.histogram, "times_ms": agg.times},
            "fallbacks": dict(self._fallbacks),
            "layers": {name: st.to_dict() for name, st in self._layer_stats.items()},
            "meaningless_text": self.is_tiny,
        }

    def format_stats(self) -> str:
        """The per-layer table printed after each run."""
        return format_stats_table(self._layer_stats, self._fallbacks, self.psa_config, use_psa=self._use_psa)

    def print_stats(self) -> None:
        print(self.format_stats())

    def plot(self, path: str, head: int = 0) -> str:
        """Write the level map of (`plot_layer`, `head`) beside the per-layer sparsity as a PNG."""
        from .plot import plot_levels

        lm = self.level_map(head)
        sparsity, notes = {}, {}
        for name, st in self._layer_stats.items():
            if "visual" in name:
                continue
            label = f"LLM layer {_layer_index(name)}"
            sparsity[label] = st.sparsity if st.valid_pairs else 0.0
            if not st.valid_pairs:
                notes[label] = "(dense: " + ", ".join(sorted(st.fallbacks)) + ")" if st.fallbacks else "(dense)"
        kind = self.last_result.kind if self.last_result else ""
        title = (f"PSA on model {self.model_name!r} ({kind}, {self.last_result.prompt_tokens if self.last_result else '?'}"
                 f" prompt tokens), blocks {self.psa_config.query_block}x{self.psa_config.key_block}")
        if lm is None:
            return plot_levels(path, None, sparsity, title=title, layer_notes=notes)
        return plot_levels(path, lm["map"], sparsity, title=title, layer_notes=notes,
                           map_title=f"LLM layer {lm['layer']}, head {lm['head']} (Lq={lm['Lq']})",
                           Lq=lm["Lq"], Lk=lm["Lk"], query_block=lm["query_block"], key_block=lm["key_block"])


# ------------------------------------------------------------------------------------------ helpers
def _source_name(x: Any) -> str:
    if isinstance(x, (str, bytes)) or hasattr(x, "__fspath__"):
        return str(x)
    return getattr(x, "filename", "") or f"<{type(x).__name__}>"


def _layer_index(name: str) -> int | None:
    parts = name.replace("/", ".").split(".")
    for a, b in zip(parts, parts[1:]):
        if a in ("layers", "blocks") and b.isdigit():
            return int(b)
    return None


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        v = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return ids


def format_stats_table(layer_stats: dict[str, Any], fallbacks: dict[str, int], config: AttentionConfig, *,
                       use_psa: bool = True) -> str:
    """A fixed-width table: one row per LLM layer, one summary row for the vision tower, then the fallbacks."""
    from ..statistics import PSAStats

    head = (f"{'layer':<16}{'calls':>6}{'density':>9}{'sparsity':>9}   {'L1':>5}{'L2':>5}{'L4':>5}{'L8':>5}"
            f"{'skip':>5}   {'est ms':>8}{'attn ms':>9}{'est %':>6}  fallbacks")
    lines = [f"PSA statistics ({'PSA on' if use_psa else 'PSA off: dense attention'}; blocks "
             f"{config.query_block}x{config.key_block}, {config.mask_mode}, min_seq_len {config.min_seq_len}; "
             f"levels in % of valid block pairs)", head, "-" * len(head)]
    text = [(n, s) for n, s in layer_stats.items() if "visual" not in n]
    vision = [s for n, s in layer_stats.items() if "visual" in n]

    def row(label: str, s: Any) -> str:
        total = sum(s.histogram.values()) or 1
        pct = "".join(f"{100 * s.histogram[k] / total:5.0f}" for k in ("1", "2", "4", "8", "0")) \
            if s.valid_pairs else "".join(f"{'-':>5}" for _ in range(5))
        est = s.times.get("estimate_ms", 0.0) + s.times.get("mask_ms", 0.0)
        att = s.times.get("attention_ms", 0.0) + s.times.get("pool_ms", 0.0)
        share = f"{100 * est / (est + att):5.0f}%" if est + att > 0 else f"{'-':>6}"
        dens = f"{s.density:9.3f}{s.sparsity:9.3f}" if s.valid_pairs else f"{'-':>9}{'-':>9}"
        fb = " ".join(f"{k}:{v}" for k, v in sorted(s.fallbacks.items())) or "-"
        return (f"{label:<16}{s.calls:>6}{dens}   {pct}   {est:8.1f}{att:9.1f}{share}  {fb}")

    for name, s in text:
        idx = _layer_index(name)
        lines.append(row(f"LLM {idx}" if idx is not None else name[-16:], s))
    if vision:
        vs = PSAStats.merge(vision) if any(v.valid_pairs for v in vision) else PSAStats(calls=0)
        vs.calls = sum(v.calls for v in vision)
        fb: dict[str, int] = {}
        for v in vision:
            for k, n in v.fallbacks.items():
                fb[k] = fb.get(k, 0) + n
        vs.fallbacks = fb
        lines.append(row(f"vision x{len(vision)}", vs))
    if text:
        agg = PSAStats.merge([s for _, s in text])
        agg.calls = sum(s.calls for _, s in text)
        agg.fallbacks = {}
        lines.append("-" * len(head))
        lines.append(row("LLM total", agg))
    if not layer_stats:
        lines.append("(no per-layer statistics were recorded)")
    lines.append("dense fallbacks this run: " + (", ".join(f"{k}={v}" for k, v in sorted(fallbacks.items()))
                                                 or "none"))
    return "\n".join(lines)


__all__ = ["QwenVLInference", "InferenceResult", "InferenceError", "format_stats_table", "DEFAULT_MODEL", "HOSTS"]
