"""Kept for imports written against 0.1: the job types live in ``unified_jobs.core.job``."""

from unified_jobs.core.job import Job, JobHandle, JobInfo, JobStatus, new_job_id, utcnow

__all__ = ["Job", "JobHandle", "JobInfo", "JobStatus", "new_job_id", "utcnow"]
