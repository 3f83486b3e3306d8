"""The benchmark's one piece of logic: counting sequential round trips from arrival times."""

from __future__ import annotations

import pytest

from bench.run import round_trips


@pytest.mark.parametrize(
    ("arrivals", "expected"),
    [
        ([], 0),
        ([0.0], 1),
        ([0.0, 0.01], 1),  # the second left before the first was answered: together
        ([0.0, 0.05], 2),  # the second waited for the first answer: one after the other
        ([0.0, 0.06, 0.061, 0.12], 3),  # geocoding; weather and forecast together; the text
    ],
)
def test_round_trips(arrivals: list[float], expected: int) -> None:
    assert round_trips(arrivals, latency=0.05) == expected
