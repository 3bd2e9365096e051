import pytest

import rankseg_fast


@pytest.fixture(autouse=True)
def _kernel_impl():
    """Every benchmark starts on the default implementation and restores it afterwards."""
    with rankseg_fast.ops.use_impl("kernel"):
        yield
