"""Capture the real attention inputs: post-RoPE q/k/v of chosen LLM layers at prefill, saved to an `.npz`.

PaddleFormers looks up the attention function by the text config's `_attn_implementation` at every forward
(docs/HOSTS.md §1.2), so a recording function registered under its own key and wrapping the current one sees exactly
what the attention op receives: q [B, H_q, L, D] and k/v [B, H_kv, L, D] after mRoPE, GQA not expanded. This
works with PSA on or off and needs no change in the integrations. PaddleMIX picks attention classes at
construction, so capture there is not offered.

The file holds `q_layer{i}`, `k_layer{i}`, `v_layer{i}` per captured layer (bfloat16 stored as float32, other
dtypes as they are), `input_ids` [L], `token_type` int8 [L] (0 text, 1 image, 2 video), `token_grid` int32 [L, 3]
((frame, row, column) of a vision token on its merged grid, -1 for text), `image_grid_thw` / `video_grid_thw`
(patch grids from the processor) and `meta` (a JSON string: layers, shapes, model, config, frame times, ...).
`load_capture` reads it back; `paddlemix-psa sweep --qkv` runs on it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

FORMAT = "paddlemix_psa.qkv/1"
TOKEN_TYPES = ("text", "image", "video")
CAPTURE_KEY = "psa_app_qkv_capture"


def default_layers(num_layers: int) -> tuple[int, ...]:
    """First, middle and last layer (0, 13, 27 for Qwen2.5-VL-7B's 28 layers)."""
    return tuple(sorted({0, (num_layers - 1) // 2, num_layers - 1}))


def parse_layers(text: str | None, num_layers: int) -> tuple[int, ...]:
    """`--capture-layers`: a comma list of layer indices in [0, num_layers); None: `default_layers`."""
    if text is None or not text.strip():
        return default_layers(num_layers)
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--capture-layers {text!r} is invalid: expected a comma list of integers") from None
    bad = [i for i in layers if not 0 <= i < num_layers]
    if not layers or bad:
        raise ValueError(f"--capture-layers {text!r} is invalid: this model's LLM layers are 0..{num_layers - 1}")
    return tuple(sorted(set(layers)))


def _to_numpy(t) -> np.ndarray:
    name = str(t.dtype).split(".")[-1]
    if name == "bfloat16":                    # numpy has no bfloat16; float32 holds it exactly
        t = t.astype("float32")
    return np.ascontiguousarray(t.detach().cpu().numpy())


def token_types(input_ids: np.ndarray, image_token_id: int | None, video_token_id: int | None) -> np.ndarray:
    out = np.zeros(input_ids.shape, np.int8)
    if image_token_id is not None:
        out[input_ids == image_token_id] = 1
    if video_token_id is not None:
        out[input_ids == video_token_id] = 2
    return out


def token_grid(types: np.ndarray, grids: dict[int, np.ndarray], merge: int) -> tuple[np.ndarray, list[str]]:
    """(frame, row, column) on the merged grid for every vision token (-1 for text), walking the runs of image
    and video tokens in order against the processor's grids; returns the positions and any mismatch notes."""
    pos = np.full((types.shape[0], 3), -1, np.int32)
    next_grid = {1: 0, 2: 0}
    notes: list[str] = []
    i, L = 0, types.shape[0]
    while i < L:
        kind = int(types[i])
        j = i
        while j < L and types[j] == kind:
            j += 1
        if kind:
            g = grids.get(kind, np.zeros((0, 3), np.int64))
            n = next_grid[kind]
            next_grid[kind] += 1
            if n < len(g):
                t, h, w = (int(x) for x in g[n])
                hm, wm = h // merge, w // merge
                if t * hm * wm == j - i:
                    k = np.arange(j - i)
                    pos[i:j] = np.stack([k // (hm * wm), (k % (hm * wm)) // wm, k % wm], axis=1)
                else:
                    notes.append(f"{TOKEN_TYPES[kind]} run at {i} has {j - i} tokens, grid {t}x{h}x{w} "
                                 f"(merge {merge}) gives {t * hm * wm}")
            else:
                notes.append(f"{TOKEN_TYPES[kind]} run at {i} has no grid")
        i = j
    return pos, notes


class _RecordingProcessor:
    """The app's processor, remembering the model inputs it made last."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.last: dict[str, Any] | None = None

    def __call__(self, *args, **kwargs):
        self.last = self.inner(*args, **kwargs)
        return self.last

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class QKVCapture:
    """Context manager around one `QwenVLInference` run: records q/k/v of `layers` at their first prefill call.

    >>> with QKVCapture(app, (0, 13, 27)) as cap:                                        # doctest: +SKIP
    ...     res = app.inference_video("clip.mp4", "What happens?")
    >>> cap.save("qkv.npz", extra={"prompt": "What happens?"})                           # doctest: +SKIP
    """

    def __init__(self, app: Any, layers: Sequence[int]) -> None:
        if app.host != "paddleformers":
            raise ValueError("q/k/v capture needs host 'paddleformers' (PaddleMIX fixes attention classes at "
                             "construction)")
        self.app = app
        self.layers = tuple(sorted(set(int(i) for i in layers)))
        self.num_layers = text_layers(app)
        parse_layers(",".join(map(str, self.layers)), self.num_layers)
        self.tensors: dict[int, dict[str, np.ndarray]] = {}
        self.source_dtype = ""
        self._grid_notes: list[str] = []
        self._processor: _RecordingProcessor | None = None
        self._saved_impl: str | None = None

    def __enter__(self) -> "QKVCapture":
        from paddleformers.nn.attention.interface import ALL_ATTENTION_FUNCTIONS, AttentionInterface

        text_cfg = self.app.model.config.text_config
        inner_key = text_cfg._attn_implementation
        wanted, got = set(self.layers), self.tensors

        def record(module, query, key, value, *args, **kwargs):
            idx = getattr(module, "layer_idx", None)
            if idx in wanted and idx not in got and query.shape[2] > 1:
                got[idx] = {"q": _to_numpy(query), "k": _to_numpy(key), "v": _to_numpy(value)}
                self.source_dtype = str(query.dtype).split(".")[-1]
            return ALL_ATTENTION_FUNCTIONS[inner_key](module, query, key, value, *args, **kwargs)

        AttentionInterface.register(CAPTURE_KEY, record)
        self._saved_impl = inner_key
        text_cfg._attn_implementation = CAPTURE_KEY
        self._processor = _RecordingProcessor(self.app.processor)
        self.app.processor = self._processor
        return self

    def __exit__(self, *exc) -> None:
        self.app.model.config.text_config._attn_implementation = self._saved_impl
        if self._processor is not None:
            self.app.processor = self._processor.inner

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything `save` writes except `meta`."""
        missing = [i for i in self.layers if i not in self.tensors]
        if missing:
            raise RuntimeError(f"no prefill attention call reached LLM layer(s) {missing}")
        inputs = (self._processor.last if self._processor else None) or {}
        if "input_ids" not in inputs:
            raise RuntimeError("no model inputs were recorded (run inference inside the capture)")
        ids = _to_numpy(inputs["input_ids"]).reshape(-1).astype(np.int64)
        cfg = self.app.model.config
        types = token_types(ids, getattr(cfg, "image_token_id", None), getattr(cfg, "video_token_id", None))
        grids = {kind: _to_numpy(inputs[key]).astype(np.int64).reshape(-1, 3)
                 for kind, key in ((1, "image_grid_thw"), (2, "video_grid_thw")) if inputs.get(key) is not None}
        merge = int(getattr(cfg.vision_config, "spatial_merge_size", 2))
        pos, self._grid_notes = token_grid(types, grids, merge)
        out = {"input_ids": ids, "token_type": types, "token_grid": pos,
               "image_grid_thw": grids.get(1, np.zeros((0, 3), np.int64)),
               "video_grid_thw": grids.get(2, np.zeros((0, 3), np.int64))}
        if inputs.get("second_per_grid_ts") is not None:
            out["second_per_grid_ts"] = _to_numpy(inputs["second_per_grid_ts"]).astype(np.float32).reshape(-1)
        for i, t in self.tensors.items():
            for name, arr in t.items():
                out[f"{name}_layer{i}"] = arr
        return out

    def save(self, path: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
        """Write the `.npz`; `extra` (prompt, input, media info) goes into `meta`."""
        arrays = self.arrays()
        q0 = self.tensors[self.layers[0]]["q"]
        k0 = self.tensors[self.layers[0]]["k"]
        meta = {
            "format": FORMAT, "layout": "BHSD", "post_rope": True, "causal": True, "stage": "prefill",
            "layers": list(self.layers), "num_layers": self.num_layers, "batch": int(q0.shape[0]),
            "q_heads": int(q0.shape[1]), "kv_heads": int(k0.shape[1]), "length": int(q0.shape[2]),
            "head_dim": int(q0.shape[3]), "source_dtype": self.source_dtype, "stored_dtype": str(q0.dtype),
            "token_types": list(TOKEN_TYPES),
            "token_counts": {n: int((arrays["token_type"] == i).sum()) for i, n in enumerate(TOKEN_TYPES)},
            "merge_size": int(getattr(self.app.model.config.vision_config, "spatial_merge_size", 2)),
            "grid_notes": self._grid_notes, "model": self.app.model_name, "host": self.app.host,
            "use_psa": self.app.use_psa, "psa_config": self.app.psa_config.to_dict(), **(extra or {}),
        }
        path = Path(path)
        with open(path, "wb") as fh:              # np.savez would append ".npz" to any other suffix
            np.savez(fh, meta=np.array(json.dumps(meta, default=str)), **arrays)
        return path


def text_layers(app: Any) -> int:
    """Number of LLM layers of the app's model."""
    cfg = app.model.config
    return int(getattr(getattr(cfg, "text_config", cfg), "num_hidden_layers"))


@dataclasses.dataclass
class CapturedQKV:
    layers: dict[int, dict[str, np.ndarray]]     # {layer: {"q", "k", "v"}}, BHSD
    arrays: dict[str, np.ndarray]                 # input_ids, token_type, token_grid, grids
    meta: dict[str, Any]


def load_capture(path: str | os.PathLike) -> CapturedQKV:
    """Read a `QKVCapture.save` file; a file of another kind gives a one-line ValueError."""
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"--qkv {path}: not a readable .npz ({str(e).splitlines()[0] if str(e) else e})") from None
    with z:
        if "meta" not in z.files:
            raise ValueError(f"--qkv {path}: no 'meta' entry; expected a file written by infer --capture-qkv")
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"--qkv {path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        layers = {i: {n: z[f"{n}_layer{i}"] for n in ("q", "k", "v")} for i in meta["layers"]}
        arrays = {n: z[n] for n in z.files if n != "meta" and "_layer" not in n}
    return CapturedQKV(layers=layers, arrays=arrays, meta=meta)


__all__ = ["QKVCapture", "CapturedQKV", "load_capture", "parse_layers", "default_layers", "token_types",
           "token_grid", "TOKEN_TYPES", "FORMAT"]
