import pytest

import rankseg_fast


@pytest.fixture(autouse=True)
def _kernel_impl():
    """Every test starts on the default implementation (kernels) and restores it afterwards."""
    with rankseg_fast.ops.use_impl("kernel"):
        yield
