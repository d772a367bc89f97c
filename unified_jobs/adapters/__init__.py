"""Adapters: one module per mode or queue kind, all with the interface of ``base.Adapter``.

This package is the only place that imports celery, kombu, redis or database drivers.
"""
