"""Every exception unified_jobs raises on purpose.

    UnifiedJobsError
    ├── ConfigError                 a config file is missing, malformed or has a wrong key/value
    ├── WorkerDefinitionError       a Worker subclass is written wrong (args type, perform, name)
    ├── DuplicateWorkerError        two different workers registered under one name
    ├── NotRegisteredError          a worker was used before ``jobs.register(...)``
    ├── InvalidOptionError          a bad ``wait`` / ``run_at`` / ``queue`` / ``priority``
    ├── BackendNotAvailableError    a configured queue kind is not available (yet, or not installed)
    │   └── MissingDependencyError  an optional dependency is missing; says which extra to install
    ├── EnqueueError                the backend could not take the job (e.g. broker down)
    ├── ShutdownError               the app was shut down and takes no more jobs
    ├── JobError                    raised in or about a running job
    │   ├── TimeLimitExceeded       an attempt ran past its worker's ``time_limit``
    │   └── WorkerLost              the job's worker process died too often (``max_deliveries``)
    ├── NoRecorderError             a ``unified_jobs.testing`` helper found no recording app
    └── TooManyJobsError            ``perform_enqueued_jobs`` hit its limit (also an AssertionError)

Argument validation errors are pydantic's own ``pydantic.ValidationError`` (raised by
``perform_later`` before anything is enqueued), so users catch what they already know.
"""

from __future__ import annotations

__all__ = [
    "BackendNotAvailableError",
    "ConfigError",
    "DuplicateWorkerError",
    "EnqueueError",
    "InvalidOptionError",
    "JobError",
    "MissingDependencyError",
    "NoRecorderError",
    "NotRegisteredError",
    "ShutdownError",
    "TimeLimitExceeded",
    "TooManyJobsError",
    "UnifiedJobsError",
    "WorkerDefinitionError",
    "WorkerLost",
]


class UnifiedJobsError(Exception):
    """Root of every error raised by unified_jobs."""


class ConfigError(UnifiedJobsError):
    """The configuration could not be loaded; the message names the file, key and accepted values."""


class WorkerDefinitionError(UnifiedJobsError, TypeError):
    """A ``Worker`` subclass is defined wrongly; the message shows what to write."""


class DuplicateWorkerError(UnifiedJobsError):
    """Two different worker classes were registered under the same name."""


class NotRegisteredError(UnifiedJobsError, LookupError):
    """A worker was enqueued (or looked up) before being registered with ``jobs.register(...)``."""


class InvalidOptionError(UnifiedJobsError, ValueError):
    """An enqueue option (``wait``, ``run_at``, ``queue``, ``priority``) has a bad value."""


class BackendNotAvailableError(UnifiedJobsError):
    """The configured mode or queue kind cannot be used."""


class MissingDependencyError(BackendNotAvailableError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class EnqueueError(UnifiedJobsError):
    """The backend refused or could not store the job. Nothing was enqueued."""


class ShutdownError(UnifiedJobsError):
    """The ``Jobs`` app was shut down and accepts no more jobs."""


class JobError(UnifiedJobsError):
    """Something that happened to a running job (it is the job's failure, not the caller's)."""


class TimeLimitExceeded(JobError):
    """An attempt ran longer than its worker's ``time_limit``; it counts as a failed attempt."""


class WorkerLost(JobError):
    """The job's worker process died (OOM, SIGKILL, ``os._exit``) on each of its deliveries."""


class NoRecorderError(UnifiedJobsError):
    """A testing helper needed a recording app and there was none; the message says how to start one."""


class TooManyJobsError(UnifiedJobsError, AssertionError):
    """``perform_enqueued_jobs`` hit its ``limit`` with jobs still enqueued (likely a job loop)."""
