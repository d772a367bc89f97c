"""A tiny shop whose background jobs run through unified_jobs."""
