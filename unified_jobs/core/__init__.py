"""The pure core: job types, the retry policy, time limits, the executor and the job store port.

Nothing here imports Celery, kombu or a database driver; adapters import the core, never the
reverse.
"""

from unified_jobs.core.executor import Executor
from unified_jobs.core.job import Job, JobHandle, JobInfo, JobStatus
from unified_jobs.core.outcome import Outcome
from unified_jobs.core.retry import Retry
from unified_jobs.core.store import JobStore

__all__ = ["Executor", "Job", "JobHandle", "JobInfo", "JobStatus", "JobStore", "Outcome", "Retry"]
