"""unified_jobs: one way to write background jobs, and a config switch for where they run."""

from unified_jobs.config import Config
from unified_jobs.core.job import JobHandle, JobInfo, JobStatus
from unified_jobs.core.retry import Retry
from unified_jobs.errors import NotRegisteredError, UnifiedJobsError
from unified_jobs.jobs import Jobs
from unified_jobs.worker import Worker

__all__ = [
    "Config",
    "JobHandle",
    "JobInfo",
    "JobStatus",
    "Jobs",
    "NotRegisteredError",
    "Retry",
    "UnifiedJobsError",
    "Worker",
]
__version__ = "0.1.0"
