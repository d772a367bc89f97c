"""The peers ``bench/bench_peers.py`` compares unified_jobs with: one app module per system (the
worker subprocesses import them by name, configured by the ``BENCH_*`` environment variables of
``settings``), a driver per system (``drivers``) and the measurements (``measure``)."""
