"""Image understanding with Qwen2.5-VL and Pyramid Sparse Attention (PSA).

    python examples/image_psa.py                                   # offline: tiny random-weight model
    python examples/image_psa.py --model Qwen/Qwen2.5-VL-7B-Instruct --input photo.jpg --prompt "Describe it."

The same as `paddlemix-psa infer --type image ...`. The tiny model's text is meaningless; it exists so this
script runs anywhere without downloads.
"""
from __future__ import annotations

import argparse

from paddlemix_psa.app import QwenVLInference, sample_image_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="'tiny' or a Qwen2.5-VL id/path for from_pretrained")
    p.add_argument("--host", default="paddleformers", choices=["paddleformers", "paddlemix"])
    p.add_argument("--input", default=str(sample_image_path()), help="image path or http(s) URL")
    p.add_argument("--prompt", default="Describe this image.")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--no-psa", action="store_true", help="dense attention (baseline)")
    p.add_argument("--plot", default=None, help="write the level-map plot here (PNG)")
    args = p.parse_args()

    model = QwenVLInference(use_psa=not args.no_psa, model=args.model, host=args.host)
    result = model.inference_image(args.input, args.prompt, max_new_tokens=args.max_new_tokens)
    print(f"answer: {result.text!r}")
    print(f"prompt {result.prompt_tokens} tokens, generated {result.new_tokens}; "
          f"prefill {result.prefill_s:.2f} s, decode {result.decode_s:.2f} s")
    model.print_stats()                      # per-layer density, level histogram, timings, fallbacks
    per_layer = model.stats()                # {layer name: PSAStats}
    llm = {name: round(s.sparsity, 3) for name, s in per_layer.items() if "visual" not in name}
    print("sparsity per LLM layer:", llm)
    if args.plot:
        model.plot(args.plot)
        print("plot written to", args.plot)


if __name__ == "__main__":
    main()
