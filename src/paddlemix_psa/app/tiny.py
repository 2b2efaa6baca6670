"""A tiny random-weight Qwen2.5-VL that runs the whole pipeline offline.

The architecture is the real one (PaddleFormers `Qwen2_5_VLForConditionalGeneration`), shrunk to the sizes of
`data/tiny_qwen2_5_vl.json` (docs/HOSTS.md §1.6: head_dim 64 so PSA accepts it); the weights are random and the
tokenizer is a byte-level stand-in built here, so **the generated text is meaningless**. It exists to exercise
inputs, PSA, statistics and plots without downloading anything.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Any, Sequence

import numpy as np

from . import media

TINY_CONFIG = "tiny_qwen2_5_vl.json"
MEANINGLESS = "tiny random-weight model: the generated text is meaningless"

# PSA settings that make the tiny model's ~800-token prompts run sparse (the default min_seq_len is 1024 and
# the default dense tail is 512 tokens, which would cover most of such a prompt).
TINY_PSA_CONFIG: dict[str, Any] = {
    "query_block": 64,
    "key_block": 32,
    "xattn_stride": 16,
    "dense_tail_tokens": 64,
    "min_seq_len": 256,
}

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>", "<|pad|>")


def tiny_config_dict() -> dict[str, Any]:
    """The shipped config, without its comment keys."""
    text = (resources.files("paddlemix_psa") / "data" / TINY_CONFIG).read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; the Qwen chat and vision specials follow (256..263)."""

    def __init__(self) -> None:
        self.special = {tok: 256 + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.id_to_special = {v: k for k, v in self.special.items()}
        self.vocab_size = 256 + len(SPECIAL_TOKENS)
        self.eos_token_id = self.special["<|im_end|>"]
        self.pad_token_id = self.special["<|endoftext|>"]

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.special[token]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        i = 0
        while i < len(text):
            if text[i] == "<":
                for tok, tid in self.special.items():
                    if text.startswith(tok, i):
                        ids.append(tid)
                        i += len(tok)
                        break
                else:
                    ids.append(ord("<"))
                    i += 1
                continue
            j = text.find("<", i + 1)
            j = len(text) if j < 0 else j
            ids.extend(text[i:j].encode("utf-8"))
            i = j
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Valid UTF-8 decodes as text; any other byte, and control characters, print as `\\xNN` (random
        weights emit arbitrary bytes, which would otherwise show as U+FFFD or raw NUL characters)."""
        out, buf = [], bytearray()
        for t in ids:
            t = int(t)
            if t < 256:
                buf.append(t)
                continue
            out.append(_printable(buf))
            buf = bytearray()
            if not skip_special_tokens:
                out.append(self.id_to_special.get(t, f"<|{t}|>"))
        out.append(_printable(buf))
        return "".join(out)


def _printable(buf: bytes) -> str:
    text = buf.decode("utf-8", errors="backslashreplace")
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


def chat_text(prompt: str, kind: str | None) -> str:
    """Qwen's chat layout with one vision placeholder (expanded later by the processor)."""
    vision = {"image": "<|vision_start|><|image_pad|><|vision_end|>",
              "video": "<|vision_start|><|video_pad|><|vision_end|>", None: ""}[kind]
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            f"<|im_start|>user\n{vision}{prompt}<|im_end|>\n<|im_start|>assistant\n")


class TinyProcessor:
    """Turns (prompt, image or video frames) into model inputs: the pixels through PaddleFormers' own Qwen2.5-VL
    image/video processors (`processing.py`), the text laid out as Qwen's processor does, with one
    `<|image_pad|>` / `<|video_pad|>` token per merged 2x2 patch group."""

    def __init__(self, vision_config: dict[str, Any] | None = None) -> None:
        vc = vision_config or tiny_config_dict()["vision_config"]
        self.sizes = {"patch_size": vc.get("patch_size", 14), "temporal_patch_size": vc.get("temporal_patch_size", 2),
                      "merge_size": vc.get("spatial_merge_size", 2)}
        self.tokenizer = ByteTokenizer()

    def __call__(self, prompt: str, *, image=None, video: media.Video | None = None) -> dict[str, Any]:
        import paddle

        from . import processing

        kind = "image" if image is not None else ("video" if video is not None else None)
        text = chat_text(prompt, kind)
        out: dict[str, Any] = {}
        if kind is not None:
            out = processing.image_inputs(image, **self.sizes) if kind == "image" else \
                processing.video_inputs(video, **self.sizes)
            grid = out["image_grid_thw" if kind == "image" else "video_grid_thw"].numpy()[0]
            n_tokens = int(grid.prod()) // (self.sizes["merge_size"] ** 2)
            pad = "<|image_pad|>" if kind == "image" else "<|video_pad|>"
            text = text.replace(pad, pad * n_tokens, 1)
        ids = self.tokenizer.encode(text)
        out["input_ids"] = paddle.to_tensor([ids], dtype="int64")
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)


def build_tiny_model(seed: int = 0, *, attn_implementation: str = "sdpa"):
    """(model, processor): the tiny Qwen2.5-VL in eval mode, weights drawn from `paddle.seed(seed)`."""
    import paddle
    from paddleformers.transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg_dict = tiny_config_dict()
    for sub in ("text_config", "vision_config"):     # docs/HOSTS.md §1.5: only the sub-config dicts set both halves
        cfg_dict[sub] = {**cfg_dict[sub], "_attn_implementation": attn_implementation}
    paddle.seed(seed)
    np.random.seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**cfg_dict))
    model.eval()
    return model, TinyProcessor(cfg_dict["vision_config"])


__all__ = ["build_tiny_model", "TinyProcessor", "ByteTokenizer", "tiny_config_dict", "chat_text",
           "TINY_PSA_CONFIG", "MEANINGLESS"]
