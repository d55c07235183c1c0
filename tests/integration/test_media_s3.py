"""Issue 20 (object-store media) through the real stack: posts whose pictures are s3:// references, read by the
worker from a real S3-compatible server (SeaweedFS, ``tests/integration/s3_server.py`` says why that one) with
both stores configured at once (``file://`` roots and ``s3://`` buckets).

An object of the allow-listed bucket and prefix is read (a ranged GET), encoded and scored with the visual
modality on; a missing key, an object of a bucket or prefix that is not allow-listed, and one over the byte limit
are scored without it, flagged ``media_rejected`` with their reason and counted. Then the store is stopped: posts
referring to it are still scored, promptly, with reason ``unavailable`` (an outage is reported, not passed off as
missing pictures). Skipped, saying why, where the server cannot start.

Media retries (``stream/media_retry.py``): with the store down, a post whose picture is unavailable is scored at
once without it; its picture is read again with backoff, and once the store is back (restarted on its data) the
post's static and temporal predictions are published again with the visual modality, marked
``explanation.media_retry``, and replace the earlier ones in the ``/predictions`` lookup. A post whose retries run
out while the store stays down is counted as given up and never scored again.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from redis import Redis

from tests.integration import test_media
from tests.integration.kafka_io import consume_until, produce
from popscore.stream.redis_schema import RedisKeys
from tests.integration.s3_server import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3
from tests.integration.test_platform_routing import counts, scrape

pytestmark = pytest.mark.integration

BUCKET, PREFIX, OTHER_BUCKET = "popscore-media", "posts/", "popscore-other"
S3: dict[str, SeaweedS3] = {}


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """SeaweedFS on loopback with the allow-listed bucket and another one, and the worker's credentials in the
    environment the stack hands its workers (the standard AWS chain reads them)."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), [BUCKET, OTHER_BUCKET])
    try:
        server.start()
    except RuntimeError as exc:
        pytest.skip(f"no S3-compatible server: {exc}")
    S3["server"] = server
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        env.delenv("AWS_PROFILE", raising=False)
        yield server
    server.stop()


@pytest.fixture(scope="module")
def private_stack(s3_server, private_stack):
    """The shared private-stack fixture, started once the S3 server is up (its settings name the endpoint)."""
    return private_stack


def configure_private_stack(settings) -> None:
    test_media.configure_private_stack(settings)  # the file:// root, and the image static model
    media = settings.media
    media.s3_buckets = [f"{BUCKET}/{PREFIX}"]
    media.s3_endpoint_url = S3["server"].endpoint
    media.s3_region = REGION
    media.s3_addressing_style = "path"
    # Retries at +2, +6, +14 and +30 s: a post gives up within a test's patience, and a store restarted within
    # ~20 s of an upload is back before that post's last retry. A short cool-down, so a retry after the restart
    # asks the store rather than the cool-down of the outage.
    media.s3_outage_cooldown_s = 1.0
    media.retry_after_s, media.retry_backoff, media.retry_attempts, media.retry_scan_s = 2.0, 2.0, 4, 0.25


def post(post_id: str, media: dict) -> tuple[bytes, bytes]:
    created = (datetime.now(timezone.utc) - timedelta(hours=1)).replace(microsecond=0)
    return post_id.encode(), json.dumps({
        "schema": "post.v1", "post_id": post_id, "platform": "reddit",
        "created_at": created.isoformat().replace("+00:00", "Z"), "text": {"title": f"the post {post_id}"},
        "media": media}).encode()


def static_predictions(endpoints, topic: str, post_ids: set[str]) -> dict[str, dict]:
    messages = asyncio.run(consume_until(endpoints.broker_bootstrap, topic,
                                         lambda ms: {json.loads(m.value)["post_id"] for m in ms} >= post_ids,
                                         timeout_s=180))
    static = [json.loads(m.value) for m in messages if json.loads(m.value)["model"] == "static"]
    mine = [r for r in static if r["post_id"] in post_ids]
    assert Counter(r["post_id"] for r in mine) == Counter(post_ids), "each post scored once at upload"
    return {r["post_id"]: r for r in mine}


def test_s3_pictures_through_the_worker(private_stack, s3_server):
    settings, endpoints = private_stack.settings, private_stack.state.endpoints_obj()
    client = s3_server.client()
    for i in range(3):
        client.put_object(Bucket=BUCKET, Key=f"{PREFIX}ok{i}.jpg", Body=test_media.picture(200 + i, fmt="JPEG"))
    client.put_object(Bucket=BUCKET, Key="private/secret.jpg", Body=test_media.picture(210))
    client.put_object(Bucket=OTHER_BUCKET, Key=f"{PREFIX}x.jpg", Body=test_media.picture(211))
    big = np.random.default_rng(0).integers(0, 256, settings.media.max_image_bytes + 10, dtype=np.uint8)
    client.put_object(Bucket=BUCKET, Key=f"{PREFIX}big.jpg", Body=big.tobytes())
    (test_media.MEDIA_ROOT / "s3-sibling.jpg").write_bytes(test_media.picture(220, fmt="JPEG"))

    s3 = f"s3://{BUCKET}/{PREFIX}"
    cases = {
        "s3-ok-0": ({"image_uris": [f"{s3}ok0.jpg"]}, None),
        "s3-ok-1": ({"image_uris": [f"{s3}ok1.jpg", "s3://elsewhere/ignored.jpg"]}, None),  # the first is read
        "s3-video": ({"frames": [{"uri": f"{s3}ok{k}.jpg"} for k in range(3)]}, None),
        "s3-file-too": ({"image_uris": [f"file://{test_media.MEDIA_ROOT}/s3-sibling.jpg"]}, None),
        "s3-missing": ({"image_uris": [f"{s3}absent.jpg"]}, "missing"),
        "s3-other-bucket": ({"image_uris": [f"s3://{OTHER_BUCKET}/{PREFIX}x.jpg"]}, "disallowed"),
        "s3-outside-prefix": ({"image_uris": [f"s3://{BUCKET}/private/secret.jpg"]}, "disallowed"),
        "s3-escape": ({"image_uris": [f"{s3}../private/secret.jpg"]}, "disallowed"),
        "s3-oversized": ({"image_uris": [f"{s3}big.jpg"]}, "oversized"),
    }
    asyncio.run(produce(endpoints.broker_bootstrap, settings.kafka.topics.posts,
                        [post(pid, media) for pid, (media, _) in cases.items()]))
    scored = static_predictions(endpoints, settings.kafka.topics.predictions, set(cases))
    for pid, (_, problem) in cases.items():
        r = scored[pid]
        visual = r["explanation"]["modality_weights"]["visual"]
        if problem is None:
            assert visual > 0 and r["model_name"] == test_media.IMAGE_STATIC, r
            assert "media_rejected" not in r["flags"] and "media_problem" not in r["explanation"], r
        else:
            assert visual == 0 and r["model_name"] == "popscore_reddit_static", r
            assert "media_rejected" in r["flags"] and r["explanation"]["media_problem"] == problem, r
    assert len(scored["s3-video"]["explanation"]["frame_attention"]) == 3

    samples = scrape(private_stack)
    want = Counter(p for _, p in cases.values() if p is not None)
    assert counts(samples["popscore_media_rejected_total"], "reason") == Counter({(k,): n for k, n in want.items()})
    assert counts(samples["popscore_media_posts_total"], "kind") == Counter({("image",): 3, ("video",): 1})

    # The store goes away: its posts are still scored, promptly, and the outage is named.
    s3_server.stop()
    outage = {f"s3-down-{i}": {"image_uris": [f"{s3}ok{i}.jpg"]} for i in range(3)}
    started = time.monotonic()
    asyncio.run(produce(endpoints.broker_bootstrap, settings.kafka.topics.posts,
                        [post(pid, media) for pid, media in outage.items()]))
    scored = static_predictions(endpoints, settings.kafka.topics.predictions, set(outage))
    # At most one bounded wait (attempts x (connect + read timeout) + a backoff), then the cool-down answers.
    media = settings.media
    assert time.monotonic() - started < 30 + media.s3_attempts * (media.s3_connect_timeout_s + media.s3_read_timeout_s)
    for r in scored.values():
        assert r["explanation"]["modality_weights"]["visual"] == 0 and "media_rejected" in r["flags"], r
        assert r["explanation"]["media_problem"] == "unavailable", r
    rejected = counts(scrape(private_stack)["popscore_media_rejected_total"], "reason")
    assert rejected[("unavailable",)] == len(outage)
    print(f"s3 media: {len(cases)} posts, rejected {dict(want)}; with the store down {len(outage)} unavailable")


def predictions_of(endpoints, topic: str, post_id: str, done, timeout_s: float = 120) -> list[dict]:
    """Every prediction of ``post_id`` on the predictions topic once ``done(them)`` holds (or the time is up)."""
    def mine(messages) -> list[dict]:
        return [r for r in (json.loads(m.value) for m in messages) if r["post_id"] == post_id]

    messages = asyncio.run(consume_until(endpoints.broker_bootstrap, topic, lambda ms: done(mine(ms)), timeout_s))
    return mine(messages)


def snapshot(post_id: str, at: datetime, likes: int) -> tuple[bytes, bytes]:
    return post_id.encode(), json.dumps({
        "schema": "snapshot.v1", "post_id": post_id, "observed_at": at.isoformat().replace("+00:00", "Z"),
        "counts": {"likes": likes, "comments": likes // 10}}).encode()


def lookup(endpoints, post_id: str) -> dict:
    """``POST /predictions`` of the worker: the post's latest prediction per kind, as the board shows them."""
    request = urllib.request.Request(endpoints.as_dict()["worker_web"] + "/predictions",
                                     data=json.dumps({"post_ids": [post_id]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["predictions"][post_id] or {}


def poll(check, timeout_s: float, what: str):
    """``check()``'s first truthy value within ``timeout_s``; fails naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.25)


def test_unavailable_pictures_are_read_again_when_the_store_is_back(private_stack, s3_server):
    """An outage costs a post its picture only until the store is back (within the retries), and a post whose
    retries ran out is never scored again: asserted on the predictions topic, the lookup and the counters."""
    settings, endpoints = private_stack.settings, private_stack.state.endpoints_obj()
    topic, posts_topic = settings.kafka.topics.predictions, settings.kafka.topics.posts
    if s3_server.process is None or s3_server.process.poll() is not None:
        s3_server.start()
    client = s3_server.client()
    for name, seed in (("retry-back.jpg", 300), ("retry-never.jpg", 301)):
        client.put_object(Bucket=BUCKET, Key=f"{PREFIX}{name}", Body=test_media.picture(seed, fmt="JPEG"))
    samples = scrape(private_stack)
    rejected_before = counts(samples["popscore_media_rejected_total"], "reason")[("unavailable",)]
    retries_before = counts(samples["popscore_media_retries_total"], "outcome")
    s3 = f"s3://{BUCKET}/{PREFIX}"
    keys, redis = RedisKeys.of(settings), Redis.from_url(endpoints.redis_url)

    # A post sent during an outage that outlasts its retries: scored without its picture, then given up.
    s3_server.stop()
    asyncio.run(produce(endpoints.broker_bootstrap, posts_topic, [post("retry-never", {
        "image_uris": [f"{s3}retry-never.jpg"]})]))
    first = static_predictions(endpoints, topic, {"retry-never"})["retry-never"]
    assert first["explanation"]["media_problem"] == "unavailable" and "media_rejected" in first["flags"], first
    scheduled = keys.media_retry(keys.shard("retry-never"))
    assert redis.zscore(scheduled, "retry-never") is not None, "the retry is scheduled in Redis"
    poll(lambda: redis.zscore(scheduled, "retry-never") is None, 60, "the post's retries run out")
    given_up = counts(scrape(private_stack)["popscore_media_retries_total"], "outcome")[("given_up",)]
    assert given_up >= retries_before[("given_up",)] + 1

    # A post sent during an outage that ends before its last retry: scored without, then again with its picture.
    asyncio.run(produce(endpoints.broker_bootstrap, posts_topic, [post("retry-back", {
        "image_uris": [f"{s3}retry-back.jpg"]})]))
    without = static_predictions(endpoints, topic, {"retry-back"})["retry-back"]
    assert without["explanation"]["modality_weights"]["visual"] == 0, without
    assert without["explanation"]["media_problem"] == "unavailable" and "media_retry" not in without["explanation"]
    now = datetime.now(timezone.utc).replace(microsecond=0)
    asyncio.run(produce(endpoints.broker_bootstrap, settings.kafka.topics.snapshots,
                        [snapshot("retry-back", now - timedelta(minutes=50), 40),
                         snapshot("retry-back", now - timedelta(minutes=20), 90)]))
    temporal = [r for r in predictions_of(endpoints, topic, "retry-back", lambda rs: any(
        r["model"] == "temporal" for r in rs)) if r["model"] == "temporal"]
    assert temporal and temporal[-1]["explanation"]["modality_weights"]["visual"] == 0, temporal

    s3_server.start()  # the same data on the same endpoint
    replaced = predictions_of(endpoints, topic, "retry-back", lambda rs: {
        r["model"] for r in rs if "media_retry" in r["explanation"]} == {"static", "temporal"})
    static = [r for r in replaced if r["model"] == "static" and "media_retry" in r["explanation"]]
    again = [r for r in replaced if r["model"] == "temporal" and "media_retry" in r["explanation"]]
    assert len(static) == 1 and len(again) == 1, replaced
    static, again = static[0], again[0]
    assert static["explanation"]["modality_weights"]["visual"] > 0 and static["model_name"] == test_media.IMAGE_STATIC
    assert "media_rejected" not in static["flags"] and "media_problem" not in static["explanation"], static
    assert static["as_of"] == without["as_of"] and static["produced_at"] >= without["produced_at"]
    # The temporal head reads the recomputed content vector: the same observation, now with the visual modality.
    assert again["as_of"] == temporal[-1]["as_of"] and again["explanation"]["modality_weights"]["visual"] > 0, again

    # The lookup (and so the board) shows the replacements.
    latest = poll(lambda: (lambda got: got if all("media_retry" in got.get(kind, {}).get("explanation", {})
                                                  for kind in ("static", "temporal")) else None)(
        lookup(endpoints, "retry-back")), 30, "the lookup shows the re-scored predictions")
    assert latest["static"]["explanation"]["modality_weights"]["visual"] > 0, latest

    # The post that gave up was not scored again, though the store is back and a later retry has been read.
    never = predictions_of(endpoints, topic, "retry-never", lambda rs: bool(rs), timeout_s=30)
    assert [r["model"] for r in never] == ["static"], never
    samples = scrape(private_stack)
    outcomes = counts(samples["popscore_media_retries_total"], "outcome")
    assert outcomes[("recovered",)] >= retries_before[("recovered",)] + 1, outcomes
    # The retries that failed again are not counted as more rejected pictures: two posts, two rejections.
    assert counts(samples["popscore_media_rejected_total"], "reason")[("unavailable",)] == rejected_before + 2
    assert redis.zscore(keys.media_retry(keys.shard("retry-back")), "retry-back") is None, "nothing left to retry"
