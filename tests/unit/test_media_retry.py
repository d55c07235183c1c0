"""The media-retry schedule's pure parts (``stream/media_retry.py``): when a post's picture is read again, what a
retry comes to, and the record that carries the post between retries (kept in Redis across restarts)."""

from __future__ import annotations

import json

import pytest

from popscore.contract import Post
from popscore.media import DISALLOWED, MISSING, UNAVAILABLE, UNDECODABLE
from popscore.settings import MediaSettings
from popscore.stream.media_retry import GIVEN_UP, RECOVERED, REJECTED, UNAVAILABLE_AGAIN, RetryPolicy
from popscore.stream.redis_schema import RedisKeys, claim_media_retries_call, decode_retry, encode_retry

POLICY = RetryPolicy(attempts=3, after_s=60.0, backoff=2.0)


def test_retries_back_off_from_the_failed_read():
    """The first retry waits retry_after_s, each later one backoff times longer than the one before."""
    assert POLICY.first_due(1000.0) == 1060.0
    assert [POLICY.wait_s(k) for k in (1, 2, 3)] == [60.0, 120.0, 240.0]
    assert POLICY.next_due(1, 2000.0) == 2120.0  # after retry 1 failed at 2000: retry 2
    assert RetryPolicy(3, 5.0, 1.0).next_due(2, 10.0) == 15.0  # backoff 1: a fixed wait


def test_no_retries_means_nothing_is_scheduled():
    assert RetryPolicy(0, 60.0, 2.0).first_due(1000.0) is None


def test_only_unavailable_is_retried_and_only_up_to_the_attempts():
    """The store failing again is transient until the last attempt; a permanent problem ends the retries."""
    assert POLICY.outcome(None, 1) == RECOVERED
    assert POLICY.outcome(None, 3) == RECOVERED
    assert POLICY.outcome(UNAVAILABLE, 1) == UNAVAILABLE_AGAIN
    assert POLICY.outcome(UNAVAILABLE, 2) == UNAVAILABLE_AGAIN
    assert POLICY.outcome(UNAVAILABLE, 3) == GIVEN_UP
    for reason in (MISSING, UNDECODABLE, DISALLOWED):
        assert POLICY.outcome(reason, 1) == REJECTED


def test_a_whole_schedule_takes_attempts_reads_then_gives_up():
    """Played out against a store that never recovers: exactly ``attempts`` retries, at the backed-off times."""
    now, due, retries, times, outcome = 0.0, POLICY.first_due(0.0), 0, [], None
    while due is not None:
        now = due
        retries += 1
        times.append(now)
        outcome = POLICY.outcome(UNAVAILABLE, retries)
        due = POLICY.next_due(retries, now) if outcome == UNAVAILABLE_AGAIN else None
    assert times == [60.0, 180.0, 420.0] and outcome == GIVEN_UP


def test_the_policy_comes_from_the_media_settings():
    media = MediaSettings(retry_attempts=2, retry_after_s=5, retry_backoff=3)
    assert RetryPolicy.of(media) == RetryPolicy(2, 5.0, 3.0)
    with pytest.raises(ValueError):
        MediaSettings(retry_backoff=0.5)  # a backoff below 1 would retry ever sooner


def test_the_retry_record_carries_the_post_and_the_retries_made():
    post = Post.model_validate_json(json.dumps({
        "schema": "post.v1", "post_id": "p1", "platform": "reddit", "created_at": "2024-05-01T12:00:00Z",
        "text": {"title": "a title"}, "media": {"frames": [{"uri": "s3://b/k0.jpg"}, {"uri": "s3://b/k1.jpg"}]},
        "attributes": {"category": "pics"}}))
    assert decode_retry(encode_retry(2, post)) == (2, post)


def test_the_claim_touches_one_shards_keys():
    """Both keys of a claim are under the shard's hash tag: one Redis Cluster slot."""
    keys, args = claim_media_retries_call(RedisKeys("ps:", 4), 3, 100.0, 220.0, 50)
    assert keys == ["ps:{3}:media_retry", "ps:{3}:media_retry_posts"] and args == [100.0, 220.0, 50]
