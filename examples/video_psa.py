"""Video understanding with Qwen2.5-VL and Pyramid Sparse Attention (PSA).

    python examples/video_psa.py                                   # offline: tiny model, a generated clip
    python examples/video_psa.py --model Qwen/Qwen2.5-VL-7B-Instruct --input https://example.org/clip.mp4

Videos are decoded with PyAV (local files or http(s) URLs, downloaded once into ~/.cache/paddlemix_psa),
sampled at --fps (at most --max-frames, an even count) and resized to Qwen2.5-VL's 28-pixel grid. The same as
`paddlemix-psa infer --type video ...`.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from paddlemix_psa.app import QwenVLInference, make_sample_video


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="'tiny' or a Qwen2.5-VL id/path for from_pretrained")
    p.add_argument("--host", default="paddleformers", choices=["paddleformers", "paddlemix"])
    p.add_argument("--input", default=None, help="video path or http(s) URL (default: a generated clip)")
    p.add_argument("--prompt", default="What happens in this video?")
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--max-frames", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--stats-out", default=None, help="write the statistics as JSON")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        source = args.input or str(make_sample_video(Path(tmp) / "clip.mp4", seconds=4.0, fps=8))
        model = QwenVLInference(use_psa=True, model=args.model, host=args.host)
        result = model.inference_video(source, args.prompt, fps=args.fps, max_frames=args.max_frames,
                                       max_new_tokens=args.max_new_tokens)
    print(f"answer: {result.text!r}")
    print(f"{result.media['frames']} frames at {result.media['sample_fps']:.2f} fps -> "
          f"{result.prompt_tokens} prompt tokens; prefill {result.prefill_s:.2f} s")
    model.print_stats()
    if args.stats_out:
        Path(args.stats_out).write_text(json.dumps(model.report(), indent=2, default=str))
        print("statistics written to", args.stats_out)


if __name__ == "__main__":
    main()
