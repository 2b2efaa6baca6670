"""The README's Python blocks run as written, in order, in one namespace, at small sizes (CPU reference).

A block that needs weights, PaddleMIX or a GPU is preceded by `<!-- readme-test: skip (reason) -->` (the
README says so under "Set up"); the list stays short and every entry names its reason.
"""
import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)
SKIP = re.compile(r"<!-- readme-test: skip \((?P<why>[^)]+)\) -->")
SMALL = {"8192": "256"}          # sequence length of the examples: GPU-sized there, CPU-sized here
MAX_SKIPPED = 4


def _blocks():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    for m in BLOCK.finditer(text):
        skip = SKIP.search(m.group("before"))
        yield m.group("code"), (skip.group("why") if skip else None), text[:m.start()].count("\n") + 2


def test_readme_python_blocks_run():
    blocks = list(_blocks())
    runnable = [(code, line) for code, why, line in blocks if why is None]
    skipped = [why for _, why, _ in blocks if why is not None]
    assert runnable and len(skipped) <= MAX_SKIPPED, skipped
    namespace: dict = {}
    for code, line in runnable:
        for big, small in SMALL.items():
            code = code.replace(big, small)
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - report which block failed
            pytest.fail(f"README.md block at line {line} failed: {type(exc).__name__}: {exc}")
    assert "level_map" in namespace and "out" in namespace
