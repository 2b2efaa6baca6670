import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A fresh generator per test, seeded from the test id so failures reproduce."""
    return np.random.default_rng(abs(hash(request.node.nodeid)) % (2**32))
