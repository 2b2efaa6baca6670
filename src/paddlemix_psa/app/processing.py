"""Vision inputs for the offline tiny model, made by PaddleFormers' own Qwen2.5-VL processors.

`Qwen2VLImageProcessor` and `Qwen2VLVideoProcessor` are constructed offline from their class defaults, with the
pixel range that Qwen2.5-VL checkpoints ship (min 4, max 16384 tokens of 28x28 pixels) and the patch sizes of
the model config, so the tiny model sees exactly the normalisation and patch order real weights see. Frames
arrive already sampled and on the 28-pixel grid (`media.load_image` / `media.load_video`), so the processors'
own resize is an identity for images and off for videos (its video defaults would rescale small frames).
"""
from __future__ import annotations

import functools
from typing import Any

from . import media


@functools.lru_cache(maxsize=4)
def host_processors(patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2):
    """(image processor, video processor) from PaddleFormers, built without any download."""
    from paddleformers.transformers.qwen2_vl.image_processor import Qwen2VLImageProcessor
    from paddleformers.transformers.qwen2_vl.video_processor import Qwen2VLVideoProcessor

    sizes = {"patch_size": patch_size, "temporal_patch_size": temporal_patch_size, "merge_size": merge_size}
    return (Qwen2VLImageProcessor(min_pixels=media.MIN_PIXELS, max_pixels=media.MAX_PIXELS, **sizes),
            Qwen2VLVideoProcessor(**sizes))


def image_inputs(img, **sizes: int) -> dict[str, Any]:
    """`pixel_values` [N, C*T*P*P] float32 and `image_grid_thw` [[1, h, w]] (in patches) for one RGB image."""
    image_proc, _ = host_processors(**sizes)
    out = image_proc(images=[img], return_tensors="pd")
    return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


def video_inputs(video: media.Video, **sizes: int) -> dict[str, Any]:
    """`pixel_values_videos`, `video_grid_thw` and `second_per_grid_ts` for frames sampled by `media`."""
    import paddle

    _, video_proc = host_processors(**sizes)
    out = video_proc(videos=[video.frames], do_sample_frames=False, do_resize=False, return_tensors="pd")
    return {"pixel_values_videos": out["pixel_values_videos"], "video_grid_thw": out["video_grid_thw"],
            "second_per_grid_ts": paddle.to_tensor([video.seconds_per_grid], dtype="float32")}


__all__ = ["host_processors", "image_inputs", "video_inputs"]
