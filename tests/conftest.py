import os

from hypothesis import HealthCheck, settings

# CI: reproducible examples, no per-example deadline (a shared 2-core runner has noisy timings).
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")

pytest_plugins = ["pytester"]

# The pytester fixture restores sys.modules after each test that uses it, dropping what the test imported first;
# a C extension dropped that way cannot be imported again in this process ("cannot load module more than once").
# Import the heavy extension modules once, up front, so that no pytester test is their first importer.
import numpy.fft  # noqa: E402,F401
import scipy.stats  # noqa: E402,F401


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_threads():
    """A run trained in-process sets torch's thread count (a study's runs use 1); restore it, so that no test's
    arithmetic depends on which tests ran before it (oneDNN picks its convolution algorithm by thread count)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
