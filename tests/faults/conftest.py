"""The fault suite's table: each scenario records one row (``fault_row``), carried to the main
process in the report's ``user_properties`` (so it survives xdist) and printed at the end of
the run by ``tests/conftest.py``'s ``pytest_terminal_summary``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

#: The key of a row in a report's user_properties.
FAULT_ROW = "fault_row"


@pytest.fixture
def fault_row(record_property: Callable[[str, object], None]) -> Callable[..., None]:
    def record(scenario: str, kind: str, lost: int, twice: int, recovery: float | None) -> None:
        record_property(FAULT_ROW, [scenario, kind, lost, twice, recovery])

    return record
