"""LocalCache: how current an entry is known to be, and what a write does to it."""

from __future__ import annotations

import pytest

from consentauthz.consent import LocalCache
from consentauthz.domain import SubjectProfile, SubjectState


def state(sequence: int, version: int, jurisdiction: str = "DE") -> SubjectState:
    return SubjectState(profile=SubjectProfile(jurisdiction=jurisdiction),
                        sequence=sequence, version=version)


def test_tracked_entry_is_current_as_of_the_watermark() -> None:
    cache = LocalCache(10, watermark=5)
    cache.put("a", state(5, 3))
    cache.note_write("b", 6)
    cache.note_write("c", 7)
    got = cache.get("a")
    assert got is not None and got.sequence == 7 and got.version == 3


def test_write_to_the_subject_drops_its_entry() -> None:
    cache = LocalCache(10, watermark=5)
    cache.put("a", state(5, 3))
    cache.note_write("a", 6)
    assert cache.get("a") is None
    assert cache.watermark == 6


def test_entry_older_than_the_watermark_is_current_only_as_of_itself() -> None:
    # Loaded at 4, put after writes up to 6 were applied: a write to "a" at 5 or 6 may
    # have been applied before the entry existed, so nothing vouches for it past 4.
    cache = LocalCache(10, watermark=6)
    cache.put("a", state(4, 2))
    cache.note_write("b", 7)
    got = cache.get("a")
    assert got is not None and got.sequence == 4


def test_out_of_order_write_waits_for_the_gap_and_blocks_older_puts() -> None:
    cache = LocalCache(10, watermark=5)
    cache.note_write("a", 7)  # 6 not seen yet
    assert cache.watermark == 5
    cache.put("a", state(5, 1))  # from before the write at 7: untracked
    cache.note_write("b", 6)
    assert cache.watermark == 7
    got = cache.get("a")
    assert got is not None and got.sequence == 5


def test_ledger_range_moves_the_watermark_and_drops_changed_subjects() -> None:
    cache = LocalCache(10, watermark=0)
    cache.put("a", state(0, 0))
    cache.put("b", state(0, 0))
    cache.note_writes([(0, 1, "a"), (0, 2, "c")], heads=[2])
    assert cache.get("a") is None
    b = cache.get("b")
    assert b is not None and b.sequence == 2
    assert cache.watermark == 2


def test_put_never_replaces_a_more_current_entry() -> None:
    cache = LocalCache(10, watermark=5)
    cache.put("a", state(8, 8, "FR"))
    cache.put("a", state(6, 5, "DE"))
    got = cache.get("a")
    assert got is not None and got.profile.jurisdiction == "FR"


def test_clear_forgets_everything_and_applies_up_to_head() -> None:
    cache = LocalCache(10)
    cache.put("a", state(0, 0))
    cache.clear(9)
    assert cache.get("a") is None and len(cache) == 0 and cache.watermark == 9
    cache.put("a", state(3, 0))  # read before the clear: untracked
    got = cache.get("a")
    assert got is not None and got.sequence == 3


def test_lru_bound() -> None:
    cache = LocalCache(2)
    for s in "abc":
        cache.put(s, state(0, 0))
    assert len(cache) == 2 and cache.get("a") is None


def test_highest_is_the_newest_position_any_path_brought() -> None:
    cache = LocalCache(10, watermark=5)
    assert cache.highest == 5
    cache.note_write("b", 8)  # out of order (Redis): waiting for 6 and 7
    assert cache.watermark == 5 and cache.highest == 8
    cache.put("a", state(9, 2))  # this replica's own write, or a read, at 9
    assert cache.highest == 9
    cache.note_writes([], [7])  # a poll: 8 now follows
    assert cache.watermark == 8 and cache.highest == 9


def test_reset_forgets_everything_and_refuses_what_was_read_before_it() -> None:
    cache = LocalCache(10, watermark=5)
    before = cache.epoch
    cache.put("a", state(6, 2), before)
    cache.note_write("b", 8)
    cache.reset(4)  # the ledger went back to 4
    assert cache.get("a") is None and cache.watermark == cache.highest == 4
    cache.put("a", state(6, 2), before)  # read from the ledger that went back: refused
    assert cache.get("a") is None and cache.highest == 4
    cache.put("a", state(4, 1), cache.epoch)
    assert cache.get("a") == state(4, 1)
    cache.note_write("c", 5)  # the 8 heard of before was forgotten: 5 follows 4
    assert cache.watermark == 5


def _in_partition(part: int, partitions: int, prefix: str) -> list[str]:
    """Subject names in partition `part` of `partitions`."""
    from consentauthz.consent.ledger import partition_of
    return [n for i in range(200) if partition_of(n := f"{prefix}{i}", partitions) == part]


def test_each_partition_has_its_own_watermark() -> None:
    cache = LocalCache(10, watermark=[5, 5])
    a, b = _in_partition(0, 2, "a")[0], _in_partition(1, 2, "b")[0]
    cache.put(a, state(5, 1))
    cache.put(b, state(5, 1))
    cache.note_write(a, 6)  # partition 0 moves on; partition 1 does not
    assert cache.watermarks == (6, 5)
    assert cache.get(a) is None
    got = cache.get(b)
    assert got is not None and got.sequence == 5
    cache.note_writes([(1, 7, "somebody")], heads=[6, 7])
    got = cache.get(b)
    assert got is not None and got.sequence == 7  # tracked: current as of its watermark
    assert cache.highests == (6, 7)


def test_a_write_out_of_order_waits_only_in_its_own_partition() -> None:
    cache = LocalCache(10, watermark=[0, 0])
    a0, a1 = _in_partition(0, 2, "x")[:2]
    b = _in_partition(1, 2, "y")[0]
    cache.note_write(a1, 2)  # partition 0: waiting for 1
    cache.note_write(b, 1)  # partition 1 is not held up by it
    assert cache.watermarks == (0, 1)
    cache.note_write(a0, 1)
    assert cache.watermarks == (2, 1)


def test_heads_for_another_number_of_partitions_are_refused() -> None:
    cache = LocalCache(10, watermark=[0, 0])
    with pytest.raises(ValueError, match="partitions"):
        cache.clear([1, 2, 3])
