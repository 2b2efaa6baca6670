"""GPU tests: torch CUDA tensors on the device machine (no Paddle there). Nothing probes the GPU at import or
collection: the ``cuda`` fixture skips at run time when torch or CUDA is missing."""
import os
import sys

import pytest

_here = os.path.dirname(os.path.abspath(__file__))
_root = os.path.dirname(os.path.dirname(_here))
for p in (_here, os.path.join(_root, "tests"), os.path.join(_root, "src")):
    if p not in sys.path:
        sys.path.insert(0, p)


@pytest.fixture
def cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return torch.device("cuda")
