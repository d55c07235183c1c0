"""Issue 20 (object-store media) through the real stack: posts whose pictures are s3:// references, read by the
worker from a real S3-compatible server (SeaweedFS, ``tests/integration/s3_server.py`` says why that one) with
both stores configured at once (``file://`` roots and ``s3://`` buckets).

An object of the allow-listed bucket and prefix is read (a ranged GET), encoded and scored with the visual
modality on; a missing key, an object of a bucket or prefix that is not allow-listed, and one over the byte limit
are scored without it, flagged ``media_rejected`` with their reason and counted. Then the store is stopped: posts
referring to it are still scored, promptly, with reason ``unavailable`` (an outage is reported, not passed off as
missing pictures). Skipped, saying why, where the server cannot start.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from tests.integration import test_media
from tests.integration.kafka_io import consume_until, produce
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
