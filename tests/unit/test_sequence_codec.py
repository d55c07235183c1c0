"""The sequence record codec and decrease counting (pure functions; the Redis side is integration-tested)."""

import math
from datetime import datetime, timezone

import numpy as np
import pytest

from popscore.contract import Counts, Snapshot
from popscore.settings import COUNTER_NAMES
from popscore.stream.redis_schema import FORMAT_VERSION, RECORD, PostMeta, content_tag, decode_content, \
    decode_sequence, decode_sequences, encode_content, encode_snapshot
from popscore.stream.sequence_store import SequenceUpdate, count_decreases, group_by_post, steps_by_post


def snap(ts: int, **counts) -> Snapshot:
    return Snapshot(post_id="p1", observed_at=datetime.fromtimestamp(ts, timezone.utc), counts=Counts(**counts))


def test_records_sort_by_bytes_in_time_order():
    early, late = encode_snapshot(snap(1_600_000_000, likes=1)), encode_snapshot(snap(1_600_000_001, likes=0))
    assert early[:4] < late[:4]
    assert len(early) == RECORD.size == 4 + 8 * len(COUNTER_NAMES)


def test_decode_gives_time_and_counters_with_nan_for_missing():
    blob = FORMAT_VERSION + encode_snapshot(snap(1_600_000_000, likes=3, comments=2**53 - 1)) + \
        encode_snapshot(snap(1_600_000_060, views=10))
    seq = decode_sequence(blob)
    assert seq.shape == (2, 1 + len(COUNTER_NAMES))
    likes, comments, views = (1 + COUNTER_NAMES.index(n) for n in ("likes", "comments", "views"))
    assert seq[0, 0] == 1_600_000_000 and seq[0, likes] == 3 and seq[0, comments] == 2**53 - 1
    assert math.isnan(seq[0, views]) and seq[1, views] == 10 and math.isnan(seq[1, likes])


def test_unknown_format_version_is_an_error():
    with pytest.raises(ValueError, match="format version"):
        decode_sequence(b"\x09" + encode_snapshot(snap(1_600_000_000, likes=1)))


def test_count_decreases_ignores_missing_counters():
    seq = np.array([[0, np.nan, 5, 1, np.nan, np.nan],
                    [1, np.nan, 4, 2, np.nan, np.nan],
                    [2, 10, 6, 1, np.nan, np.nan]])
    assert count_decreases([seq], [[0, 1, 2]]) == 2
    assert count_decreases([seq[:1]], [[0]]) == 0


def test_count_decreases_counts_a_decrease_once_when_it_appears_not_at_every_later_merge():
    seq = decode_sequence(FORMAT_VERSION + b"".join(encode_snapshot(snap(t, likes=n))
                                                    for t, n in ((1, 5), (2, 3), (3, 4), (4, 6))))
    assert count_decreases([seq[:2]], [[2]]) == 1  # 5 -> 3 arrived
    assert count_decreases([seq[:3]], [[3]]) == 0  # later appends keep the old decrease uncounted
    assert count_decreases([seq], [[4]]) == 0
    assert count_decreases([seq], [[]]) == 0  # a redelivery changes nothing


def test_count_decreases_counts_both_steps_around_an_out_of_order_observation():
    seq = decode_sequence(FORMAT_VERSION + b"".join(encode_snapshot(snap(t, likes=n))
                                                    for t, n in ((1, 5), (2, 9), (3, 6))))
    assert count_decreases([seq], [[2]]) == 1  # 5 -> 9 rises, 9 -> 6 falls
    assert count_decreases([seq], [[1]]) == 0  # only the first step touches t=1


def test_decode_sequences_splits_one_table_back_into_posts():
    blobs = [FORMAT_VERSION + encode_snapshot(snap(1_600_000_000, likes=1)) + encode_snapshot(snap(1_600_000_060, likes=3)),
             None, FORMAT_VERSION + encode_snapshot(snap(1_600_000_030, likes=7))]
    first, empty, last = decode_sequences(blobs)
    assert first[:, 0].tolist() == [1_600_000_000, 1_600_000_060] and len(empty) == 0 and last[0, 0] == 1_600_000_030
    assert np.array_equal(first, decode_sequence(blobs[0]), equal_nan=True)


def test_count_decreases_does_not_count_the_step_between_two_posts():
    rising = decode_sequence(FORMAT_VERSION + encode_snapshot(snap(1, likes=5)) + encode_snapshot(snap(2, likes=9)))
    falling = decode_sequence(FORMAT_VERSION + encode_snapshot(snap(1, likes=4)) + encode_snapshot(snap(2, likes=1)))
    assert count_decreases([rising, falling], [[1, 2], [1, 2]]) == 1  # 9 -> 4 across posts is not a decrease
    assert count_decreases([falling, rising], [[1, 2], [1, 2]]) == 1
    assert count_decreases([rising, falling], [[2], [1]]) == 1  # merged at the two posts' touching ends
    assert count_decreases([], []) == 0


def test_content_vectors_round_trip_and_stale_ones_are_flagged():
    vectors = np.array([[1.0, -2.0, 3.5], [0.0, 0.25, -0.5]])
    weights = np.array([[0.75, 0.25], [1.0, 0.0]])  # exact in float32
    tag = content_tag("popscore_reddit_temporal_content", 4)
    blobs = encode_content(tag, vectors, weights)
    got_v, got_w, ok = decode_content([blobs[0], None, blobs[1]], tag, dim=3, n_weights=2)
    assert ok.tolist() == [True, False, True]
    np.testing.assert_array_equal(got_v, [[1.0, -2.0, 3.5], [0, 0, 0], [0.0, 0.25, -0.5]])
    np.testing.assert_array_equal(got_w, [[0.75, 0.25], [0, 0], [1.0, 0.0]])
    # another model version, another platform's content model of the same version, or another vector size must
    # be recomputed, never misread
    assert decode_content(blobs, content_tag("popscore_reddit_temporal_content", 5), 3, 2)[2].tolist() == [False] * 2
    assert decode_content(blobs, content_tag("popscore_youtube_temporal_content", 4), 3, 2)[2].tolist() == [False] * 2
    assert decode_content(blobs, tag, dim=4, n_weights=2)[2].tolist() == [False, False]
    # a vector stored before the tag named the model (a version number alone) is recomputed too
    old_format = (4).to_bytes(4, "little") + np.concatenate([vectors[0], weights[0]]).astype("<f4").tobytes()
    assert decode_content([old_format], tag, 3, 2)[2].tolist() == [False]


def test_a_window_groups_snapshots_by_post_in_arrival_order():
    def of(post_id, ts, likes):
        return Snapshot(post_id=post_id, observed_at=datetime.fromtimestamp(ts, timezone.utc),
                        counts=Counts(likes=likes))

    window = group_by_post([of("a", 10, 1), of("b", 10, 5)])
    group_by_post([of("a", 5, 0), of("c", 1, 1), of("a", 20, 2)], into=window)  # the next envelope
    assert list(window) == ["a", "b", "c"]
    assert [decode_sequence(FORMAT_VERSION + r)[0, 0] for r in window["a"]] == [10, 5, 20]  # merge sorts them
    assert len(window["b"]) == len(window["c"]) == 1


def test_steps_keep_a_posts_snapshots_together_and_cover_every_snapshot():
    window = {f"p{i}": [bytes([i, j]) for j in range(1 + i % 3)] for i in range(10)}  # 1, 2 or 3 per post
    steps = steps_by_post(window, max_snapshots=4)
    assert [p for step in steps for p in step] == list(window)  # every post once, in order
    assert all(step[p] is window[p] for step in steps for p in step)
    sizes = [sum(map(len, step.values())) for step in steps]
    assert all(4 <= s <= 4 + 2 for s in sizes[:-1]) and sizes[-1] <= 4 + 2  # a step closes once it holds 4
    assert sum(sizes) == sum(map(len, window.values()))
    assert steps_by_post({}, 4) == []
    assert len(steps_by_post(window, max_snapshots=10_000)) == 1


def test_an_updates_tail_reaches_back_when_it_starts_at_or_before_the_look_back_or_is_the_whole_sequence():
    tail = np.array([[1_000.0, 1.0], [4_000.0, 2.0], [9_000.0, 3.0]])
    assert SequenceUpdate("p", tail, PostMeta(), n_earlier=5).reaches_back(8_000.0)
    assert not SequenceUpdate("p", tail, PostMeta(), n_earlier=5).reaches_back(8_001.0)
    assert SequenceUpdate("p", tail, PostMeta(), n_earlier=0).reaches_back(1e9)  # the whole sequence
