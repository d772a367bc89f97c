"""The Celery side of unified_jobs. ``kinds/`` holds one module per queue kind."""
