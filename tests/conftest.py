import os

from hypothesis import HealthCheck, settings

# CI: reproducible examples, no per-example deadline (a shared 2-core runner has noisy timings).
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")

pytest_plugins = ["pytester"]
