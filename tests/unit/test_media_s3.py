"""popscore.media's object-store reader: s3:// parsing, the bucket/prefix allow-list, the bounded ranged read and
how the store's answers map to reasons. botocore's Stubber answers as S3 would (a real boto3 client, no network);
the outage cases use a real client against real sockets on loopback (nothing listening, or a server that never
answers), since timeouts and retries are botocore's own behaviour, not something a stub can show."""

from __future__ import annotations

import io
import socket
import threading
import time

import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from popscore.contract import RejectedRecord, decode_record
from popscore.media import (DISALLOWED, MISSING, OVERSIZED, REASONS, UNAVAILABLE, LocalMediaStore, MediaProblem,
                            RoutingMediaStore, S3MediaStore, S3Object, build_media_store, parse_s3_uri, range_header,
                            range_total)
from popscore.settings import MediaSettings, Settings

MEDIA = MediaSettings(s3_buckets=["media", "shared/popscore/"])


def real_client(endpoint="http://127.0.0.1:1", **config):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s",
        config=Config(s3={"addressing_style": "path"}, **config))


def calls(client, event="provide-client-params.s3.GetObject") -> list:
    """Every GetObject the client is asked for (default), or with ``before-send.s3.GetObject`` every HTTP
    attempt it sends (retries included)."""
    seen: list = []
    client.meta.events.register(event, lambda **kwargs: seen.append(kwargs.get("params")))
    return seen


@pytest.fixture()
def stubbed():
    client = real_client()
    with Stubber(client) as stub:
        yield S3MediaStore(MEDIA, client=client), stub
        stub.assert_no_pending_responses()


def answer(data: bytes, total: int | None = None, status: int = 206) -> dict:
    out = {"Body": StreamingBody(io.BytesIO(data), len(data)), "ContentLength": len(data),
           "ResponseMetadata": {"HTTPStatusCode": status}}
    if total is not None:
        out["ContentRange"] = f"bytes 0-{len(data) - 1}/{total}"
    return out


def reason_of(store, uri, max_bytes=100) -> str:
    with pytest.raises(MediaProblem) as caught:
        store.read(uri, max_bytes)
    return caught.value.reason


@pytest.mark.parametrize("uri, bucket, key", [
    ("s3://media/a.jpg", "media", "a.jpg"),
    ("S3://media/posts/2025/a b%20c.jpg", "media", "posts/2025/a b%20c.jpg"),  # literal key, as the AWS CLI
    ("s3://media/x?y#z", "media", "x?y#z"),
])
def test_s3_references_parse_to_bucket_and_literal_key(uri, bucket, key):
    assert parse_s3_uri(uri) == S3Object(bucket, key)


@pytest.mark.parametrize("uri", ["s3://media", "s3://media/", "s3:///a.jpg", "file:///media/a.jpg",
                                 "s3://media/posts/../private/a.jpg", "s3://media/./a.jpg", "s3:media/a.jpg"])
def test_malformed_or_escaping_references_are_disallowed(uri):
    """A key with . or .. segments is refused: SeaweedFS and others resolve them as paths, leaving a prefix."""
    with pytest.raises(MediaProblem) as caught:
        parse_s3_uri(uri)
    assert caught.value.reason == DISALLOWED


def test_the_allow_list_is_by_bucket_and_key_prefix():
    store = S3MediaStore(MEDIA, client=object())
    assert store.allowed(S3Object("media", "anything/at/all.jpg"))
    assert store.allowed(S3Object("shared", "popscore/a.jpg"))
    assert not store.allowed(S3Object("shared", "other/a.jpg"))
    assert not store.allowed(S3Object("shared", "popscore-private/a.jpg"))
    assert not store.allowed(S3Object("medias", "a.jpg"))
    for uri in ("s3://other/a.jpg", "s3://shared/other/a.jpg"):  # refused before any request (object() has none)
        assert reason_of(store, uri) == DISALLOWED


def test_settings_parse_the_allow_list_and_refuse_malformed_buckets():
    media = MediaSettings(s3_buckets=["media", "shared/popscore/"])
    assert media.s3_allow_list() == [("media", ""), ("shared", "popscore/")]
    for bad in ("Media", "a", "/prefix", "s3://media"):
        with pytest.raises(ValueError):
            MediaSettings(s3_buckets=[bad])


def test_the_read_is_a_range_of_one_byte_more_than_the_limit():
    assert range_header(524_288) == "bytes=0-524288"
    assert range_total("bytes 0-9/10") == 10 and range_total(None) is None and range_total("bytes 0-9/*") is None


def test_a_small_object_is_read_with_a_ranged_get(stubbed):
    store, stub = stubbed
    stub.add_response("get_object", answer(b"picture", total=7),
                      {"Bucket": "shared", "Key": "popscore/a.jpg", "Range": "bytes=0-100"})
    assert store.read("s3://shared/popscore/a.jpg", 100) == b"picture"


def test_an_object_larger_than_the_limit_is_oversized_from_its_content_range(stubbed):
    store, stub = stubbed
    stub.add_response("get_object", answer(b"x" * 101, total=5_000_000))
    assert reason_of(store, "s3://media/big.jpg", 100) == OVERSIZED


def test_a_store_ignoring_the_range_is_cut_off_after_one_byte_more_than_the_limit(stubbed):
    """A server that answers 200 with the whole object: at most max_bytes + 1 bytes are read from the body."""
    store, stub = stubbed
    served = []

    class Whole(io.BytesIO):
        def read(self, n=-1):
            served.append(len(chunk := super().read(n)))
            return chunk

    stub.add_response("get_object", {"Body": StreamingBody(Whole(b"x" * 10_000_000), 10_000_000),
                                     "ResponseMetadata": {"HTTPStatusCode": 200}})
    assert reason_of(store, "s3://media/big.jpg", 100) == OVERSIZED
    assert sum(served) == 101


def test_an_empty_object_reads_as_empty(stubbed):
    """S3 answers 416 to bytes=0-N of an empty object; empty bytes then fail decoding, as an empty file does."""
    store, stub = stubbed
    stub.add_client_error("get_object", "InvalidRange", http_status_code=416)
    assert store.read("s3://media/empty.jpg", 100) == b""


@pytest.mark.parametrize("code, status, reason", [
    ("NoSuchKey", 404, MISSING), ("NoSuchBucket", 404, MISSING), ("NotFound", 404, MISSING),
    ("AccessDenied", 403, UNAVAILABLE), ("InvalidAccessKeyId", 403, UNAVAILABLE),
    ("SignatureDoesNotMatch", 403, UNAVAILABLE), ("InvalidObjectState", 403, MISSING),
    ("InvalidRequest", 400, MISSING), ("InternalError", 500, UNAVAILABLE), ("SlowDown", 503, UNAVAILABLE),
])
def test_store_errors_map_to_reasons(stubbed, code, status, reason):
    store, stub = stubbed
    stub.add_client_error("get_object", code, http_status_code=status)
    assert reason_of(store, "s3://media/a.jpg") == reason


def test_a_5xx_opens_the_cool_down_and_a_missing_key_does_not(stubbed):
    """After a failure of the store, references are unavailable without a request until the cool-down ends;
    a missing key is the object's fault and changes nothing."""
    store, stub = stubbed
    now = [100.0]
    store.clock = lambda: now[0]
    asked = calls(store.client)
    stub.add_client_error("get_object", "NoSuchKey", http_status_code=404)
    stub.add_client_error("get_object", "NoSuchKey", http_status_code=404)
    stub.add_client_error("get_object", "ServiceUnavailable", http_status_code=503)
    assert reason_of(store, "s3://media/a.jpg") == MISSING
    assert reason_of(store, "s3://media/a.jpg") == MISSING  # a missing key opened no cool-down
    assert reason_of(store, "s3://media/a.jpg") == UNAVAILABLE and len(asked) == 3
    now[0] += store.outage_cooldown_s - 1
    assert reason_of(store, "s3://media/b.jpg") == UNAVAILABLE and len(asked) == 3  # not asked
    assert reason_of(store, "s3://elsewhere/b.jpg") == DISALLOWED  # the allow-list still comes first
    now[0] += 2
    stub.add_response("get_object", answer(b"back", total=4))
    assert store.read("s3://media/b.jpg", 100) == b"back" and len(asked) == 4


def test_a_download_slower_than_the_read_timeout_is_unavailable():
    """A body trickling in under the socket timeout still ends at read_timeout_s for the whole download."""
    now = [0.0]

    class Trickle(io.RawIOBase):
        def read(self, n=-1):
            now[0] += 0.5
            return b"x"

    client = real_client()
    store = S3MediaStore(MEDIA.model_copy(update={"s3_read_timeout_s": 2.0}), client=client, clock=lambda: now[0])
    with Stubber(client) as stub:
        stub.add_response("get_object", {"Body": StreamingBody(Trickle(), 101), "ContentRange": "bytes 0-99/100"})
        assert reason_of(store, "s3://media/slow.jpg", 100) == UNAVAILABLE
    assert now[0] < 3.0


def test_nothing_listening_is_unavailable_after_bounded_retries_then_fails_fast():
    """A real client, connection refused on loopback: botocore's retries run, the read ends as unavailable, and
    the next reference is refused at once (the cool-down) instead of waiting again."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    store = S3MediaStore(MEDIA, client=real_client(f"http://127.0.0.1:{port}", connect_timeout=0.5, read_timeout=0.5,
                                                   retries={"mode": "standard", "total_max_attempts": 2}))
    sent = calls(store.client, "before-send.s3.GetObject")
    started = time.monotonic()
    assert reason_of(store, "s3://media/a.jpg") == UNAVAILABLE
    assert time.monotonic() - started < 5 and len(sent) == 2  # both attempts
    assert reason_of(store, "s3://media/b.jpg") == UNAVAILABLE and len(sent) == 2  # cooling down: none sent


def test_a_server_that_never_answers_costs_at_most_the_timeouts_of_the_attempts():
    """A listener that accepts and says nothing: each attempt ends at the read timeout; ``attempts`` of them."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        store = S3MediaStore(MEDIA, client=real_client(endpoint, connect_timeout=0.5, read_timeout=0.3,
                                                       retries={"mode": "standard", "total_max_attempts": 2}))
        started = time.monotonic()
        assert reason_of(store, "s3://media/a.jpg") == UNAVAILABLE
        elapsed = time.monotonic() - started
        assert 0.6 <= elapsed < 4, elapsed  # two read timeouts (and one jittered backoff of at most 2 s)
        assert len(accepted) == 2
        assert reason_of(store, "s3://media/b.jpg") == UNAVAILABLE and len(accepted) == 2  # cooling down
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


def test_the_routing_store_sends_each_scheme_to_its_reader(tmp_path, stubbed):
    store, stub = stubbed
    (tmp_path / "a.png").write_bytes(b"local")
    routing = RoutingMediaStore({"file": LocalMediaStore([tmp_path]), "s3": store})
    stub.add_response("get_object", answer(b"remote", total=6))
    assert routing.read(f"file://{tmp_path}/a.png", 100) == b"local"
    assert routing.read("s3://media/a.jpg", 100) == b"remote"
    for uri in ("https://img.example/a.jpg", "gs://media/a.jpg", "no-scheme"):
        assert reason_of(routing, uri) == DISALLOWED


def test_the_worker_reads_s3_only_when_buckets_are_allow_listed(tmp_path):
    settings = Settings()
    settings.media.roots = [str(tmp_path)]
    assert set(build_media_store(settings.media).stores) == {"file"}
    assert reason_of(build_media_store(settings.media), "s3://media/a.jpg") == DISALLOWED
    settings.media.s3_buckets = ["media"]
    settings.media.s3_endpoint_url = "http://127.0.0.1:1"
    store = build_media_store(settings.media).stores["s3"]
    assert isinstance(store, S3MediaStore) and store.allow == [("media", "")]
    assert store.client.meta.endpoint_url == "http://127.0.0.1:1"
    assert store.client.meta.config.retries == {"mode": "standard", "total_max_attempts": settings.media.s3_attempts}


def test_unavailable_is_a_reason_and_s3_references_pass_the_contract():
    assert UNAVAILABLE in REASONS
    post = ('{"schema":"post.v1","post_id":"p1","platform":"reddit","created_at":"2025-01-01T00:00:00Z",'
            '"text":{"title":"t"},"media":{"image_uris":["s3://media/posts/p1.jpg"]}}')
    assert decode_record(post.encode(), accept=("post.v1",)).media.image_uris == ["s3://media/posts/p1.jpg"]
    with pytest.raises(RejectedRecord):
        decode_record(post.replace("s3://", "gs://").encode(), accept=("post.v1",))
