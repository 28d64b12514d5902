# Shared fixtures of the swiftbalancer tests.
import os

import pytest


@pytest.fixture
def torch():
    """The torch module. Without python3-torch the test is skipped, unless EPLB_REQUIRE_TORCH=1
    (set by `make build`, whose install-deps.sh installs it): then a missing torch fails the test
    instead of hiding behind a skip."""
    try:
        import torch as module
    except ImportError as e:
        if os.environ.get("EPLB_REQUIRE_TORCH") == "1":
            pytest.fail(f"EPLB_REQUIRE_TORCH=1 but torch cannot be imported ({e}): "
                        "run scripts/install-deps.sh")
        pytest.skip("python3-torch is not installed (optional)")
    return module
