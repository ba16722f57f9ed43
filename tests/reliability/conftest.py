"""The reliability suite: whole scenarios under faults, each ending in one summary line.

Every scenario calls `summary(...)` once; the lines are printed together at the end of
the test run (pytest's terminal summary), so `make test` shows them:

    reliability: notification storm | load=300 orders ... | faults=... | outcomes=... | lost=0 doubled=0
"""

from __future__ import annotations

import pytest

_LINES: list[str] = []


@pytest.fixture
def summary(request):
    """summary(load=..., faults=..., outcomes=..., lost=0, doubled=0): one line per scenario."""

    def record(*, load: str, faults: str, outcomes: str, lost: int, doubled: int) -> str:
        line = (f"reliability: {request.node.name} | load={load} | faults={faults} | outcomes={outcomes} | "
                f"lost={lost} doubled={doubled}")
        _LINES.append(line)
        return line

    return record


def pytest_terminal_summary(terminalreporter):
    if _LINES:
        terminalreporter.section("reliability summary")
        for line in _LINES:
            terminalreporter.write_line(line)
