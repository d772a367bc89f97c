import pytest

from unified_jobs.django import get_jobs


@pytest.fixture
def unified_jobs_app():
    """The project's app (settings.UNIFIED_JOBS), for unified_jobs' fixtures (jobs_recorder)."""
    return get_jobs()
