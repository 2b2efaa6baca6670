"""Interpreter tests: TRITON_INTERPRET must be set before any kernel module is imported (triton.jit decides at
decoration). Run this folder in its own pytest process: ``python -m pytest tests/interpret``."""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

_here = os.path.dirname(os.path.abspath(__file__))
_root = os.path.dirname(os.path.dirname(_here))
for p in (_here, os.path.join(_root, "tests"), os.path.join(_root, "src")):
    if p not in sys.path:
        sys.path.insert(0, p)
