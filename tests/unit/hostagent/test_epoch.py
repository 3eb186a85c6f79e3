"""EpochGate: an agent obeys only the newest scheduler leader it has heard from."""

from __future__ import annotations

import pytest

from hostagent.epoch import EpochGate


@pytest.mark.parametrize(
    ("seen", "epoch", "admitted"),
    [
        ([], 0, True),
        ([], 7, True),
        ([7], 7, True),
        ([7], 9, True),
        ([7, 9], 7, False),
        ([9], 0, False),
    ],
    ids=["legacy", "first", "same", "newer", "older-after-newer", "unleased-after-leader"],
)
def test_admits_only_the_newest_epoch(seen: list[int], epoch: int, admitted: bool) -> None:
    gate = EpochGate()
    for earlier in seen:
        assert gate.admit(earlier)
    assert gate.admit(epoch) is admitted
    assert gate.newest == max([*seen, epoch])
    assert gate.refused == (0 if admitted else 1)
