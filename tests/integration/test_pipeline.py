"""End to end on a stack of its own: a replayed real-data slice gives predictions, the leaderboard agrees,
restarts (graceful and kill -9) lose nothing and count nothing twice, a new model version is picked up,
and predictions continue from the local ONNX Runtime when Triton dies."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.request
from collections import defaultdict

import pytest
import redis

from popscore import features as F
from popscore.contract import Post, Snapshot, encode_record
from popscore.stream.redis_schema import CONTENT as CONTENT_FIELD, RedisKeys, content_tag, decode_content, \
    decode_sequence
from popscore.tools.replay import ReplayOptions, replay
from tests.conftest import SHARED_DATA
from tests.integration.kafka_io import consume_until, partition_of, produce, produce_to_partitions
from tests.integration.outcomes import ensure_known_state, read_all, wait_processed

pytestmark = pytest.mark.integration

CONTENT, HEAD, STATIC = (F.model_name(kind, "hackernews") for kind in ("content", "temporal", "static"))
POST_GRACE_S = 120.0


def configure_private_stack(settings) -> None:
    # Snapshots that overtake their post wait this long; the test of that checks nothing is scored meanwhile, and
    # a long grace keeps that check inside it on a slow machine (every other test sends the post first or
    # waits for it, so none depends on the grace running out).
    settings.worker.post_grace_s = POST_GRACE_S


@pytest.fixture(autouse=True)
def known_state(private_stack):
    """Each test starts on a ready worker scoring with Triton, whatever the test before it stopped."""
    ensure_known_state(private_stack)


def real_slice(prefix: str, n_posts: int) -> list[tuple[bytes, Post | Snapshot]]:
    """The earliest ``n_posts`` Hacker News stories (or the built-in sample where the data is absent),
    renamed with ``prefix`` so the test owns its keys."""
    if SHARED_DATA.is_dir():
        from popscore import datasets

        events = list(datasets.load("hackernews", SHARED_DATA, limit=n_posts).events())
    else:
        from popscore.tools.demo import read_events, sample_path

        events = [event for _, event in read_events(sample_path())]
    renamed = [event.model_copy(update={"post_id": prefix + event.post_id}) for event in events]
    return [(encode_record(event), event) for event in renamed]


def replay_and_collect(stack, prefix: str, events) -> dict[str, list[dict]]:
    """Replay ``events`` at full speed; the predictions of posts named ``prefix...`` once every post has a
    temporal prediction as of its last snapshot (asserted)."""
    settings, endpoints = stack.settings, stack.state.endpoints_obj()
    result = asyncio.run(replay(events, endpoints.broker_bootstrap, settings.kafka.topics,
                                ReplayOptions(create_topics=False, progress=False)))
    assert result.complete
    last_seen = expected_last_seen(events)
    grouped = predictions_by_post(endpoints.broker_bootstrap, settings.kafka.topics.predictions, prefix,
                                  lambda g: covered(g, last_seen))
    assert covered(grouped, last_seen)
    return grouped


def web_json(stack, path: str) -> dict:
    url = stack.state.endpoints_obj().as_dict()["worker_web"] + path
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def predictions_by_post(bootstrap: str, topic: str, prefix: str, done) -> dict[str, list[dict]]:
    messages = asyncio.run(consume_until(bootstrap, topic, lambda ms: done(_group(ms, prefix)), timeout_s=90))
    return _group(messages, prefix)


def _group(messages, prefix: str) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for message in messages:
        record = json.loads(message.value)
        if record["post_id"].startswith(prefix):
            grouped[record["post_id"]].append(record)
    return grouped


def covered(grouped: dict[str, list[dict]], last_seen: dict[str, str]) -> bool:
    """Every post has a temporal prediction as of its last snapshot."""
    return all(any(r["model"] == "temporal" and r["as_of"] >= last_seen[p] for r in grouped.get(p, []))
               for p in last_seen)


def expected_last_seen(events) -> dict[str, str]:
    last: dict[str, str] = {}
    for _, event in events:
        if isinstance(event, Snapshot):
            last[event.post_id] = event.observed_at.isoformat().replace("+00:00", "Z")
    return last


def test_replayed_slice_gives_predictions_and_the_leaderboard_agrees(private_stack):
    events = real_slice("e2e-", n_posts=60)
    grouped = replay_and_collect(private_stack, "e2e-", events)
    posts = {event.post_id for _, event in events if isinstance(event, Post)}
    assert {p for p, rs in grouped.items() if any(r["model"] == "static" for r in rs)} == posts
    n_snapshots = defaultdict(int)
    for _, event in events:
        if isinstance(event, Snapshot):
            n_snapshots[event.post_id] += 1
    for post_id, records in grouped.items():
        temporal = [r for r in records if r["model"] == "temporal"]
        assert len(temporal) <= n_snapshots[post_id]  # batching may merge snapshots, never invent predictions
        assert all(r["model_version"] and r["score"] >= 0 and r["interval"][0] <= r["interval"][1] for r in temporal)
        assert {(r["model_name"], r["trained_for"]) for r in records} <= {(HEAD, "hackernews"), (STATIC, "hackernews")}

    latest = {post_id: [r for r in records if r["model"] == "temporal"][-1]["score"]
              for post_id, records in grouped.items() if any(r["model"] == "temporal" for r in records)}
    board = web_json(private_stack, "/leaderboard?board=top&k=10")["entries"]
    expected = sorted(latest.items(), key=lambda kv: -kv[1])[:10]
    assert [e["post_id"] for e in board] == [p for p, _ in expected]
    assert all(abs(e["value"] - latest[e["post_id"]]) < 1e-6 * max(1, e["value"]) for e in board)

    some_post = expected[0][0]
    detail = web_json(private_stack, f"/posts/{some_post}")
    assert len(detail["sequence"]["rows"]) == n_snapshots[some_post]
    assert detail["predictions"]["temporal"]["score"] == pytest.approx(latest[some_post])
    # the explanation of a temporal prediction: the cached content's modality weights and the time attention
    explained = [r["explanation"] for rs in grouped.values() for r in rs if r["model"] == "temporal"]
    assert all(sum(e["modality_weights"].values()) == pytest.approx(1, abs=1e-3) for e in explained)
    assert all(sum(e["time_attention"]) == pytest.approx(1, abs=1e-3) for e in explained)
    # a static prediction reads the title through word attention, named by the title's wordpieces
    titles = {event.post_id: event.text.title for _, event in events if isinstance(event, Post)}
    for post_id, records in grouped.items():
        (static,) = [r for r in records if r["model"] == "static"]
        words = static["explanation"]["word_attention"]
        assert words[0][0] == "[CLS]" and words[-1][0] == "[SEP]", words
        assert sum(a for _, a in words) == pytest.approx(1, abs=1e-3)
        title = titles[post_id]
        first_word = title.split()[0].lower() if title.strip() and title.isascii() else None  # (uncased: no accents)
        assert first_word is None or first_word.startswith(words[1][0]), (title, words)


def test_predictions_are_partitioned_by_post_as_a_keyed_send_would(private_stack):
    """The worker produces record batches per partition; a reader of one partition still sees every
    prediction of the posts that hash to it."""
    from aiokafka.partitioner import DefaultPartitioner

    settings, endpoints = private_stack.settings, private_stack.state.endpoints_obj()
    replay_and_collect(private_stack, "part-", real_slice("part-", n_posts=20))
    messages = read_all(settings, endpoints.broker_bootstrap, settings.kafka.topics.predictions)
    partitions = list(range(settings.kafka.topics.partitions))
    ours = [m for m in messages if m.key.startswith(b"part-")]
    assert len(ours) > 20
    assert all(m.partition == DefaultPartitioner()(m.key, partitions, partitions) for m in ours)


def test_restarts_lose_no_snapshot_and_count_none_twice(private_stack):
    settings = private_stack.settings
    endpoints = private_stack.state.endpoints_obj()
    events = [(raw, e) for raw, e in real_slice("rst-", n_posts=80) if isinstance(e, Snapshot)]
    third = len(events) // 3

    async def send(part):
        await produce(endpoints.broker_bootstrap, settings.kafka.topics.snapshots,
                      [(e.post_id.encode(), raw) for raw, e in part])

    asyncio.run(send(events[:third]))
    private_stack.restart_worker(kill=False)          # graceful stop mid-stream
    asyncio.run(send(events[third:2 * third]))
    time.sleep(0.5)
    private_stack.restart_worker(kill=True)           # kill -9 mid-stream: uncommitted work is redelivered
    asyncio.run(send(events[2 * third:]))

    expected = defaultdict(set)
    for _, event in events:
        expected[event.post_id].add(int(event.observed_at.timestamp()))
    client = redis.Redis.from_url(endpoints.redis_url)
    keys = RedisKeys.of(settings)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stored = {p: decode_sequence(client.get(keys.sequence(p)) or b"") for p in expected}
        if all(len(s) == len(expected[p]) for p, s in stored.items()):
            break
        time.sleep(0.5)
    wait_processed(settings, endpoints.broker_bootstrap)  # redelivered records merged too: none may add a row
    stored = {p: decode_sequence(client.get(keys.sequence(p)) or b"") for p in expected}
    for post_id, times in expected.items():
        assert sorted(stored[post_id][:, 0].astype(int).tolist()) == sorted(times), post_id


def _promote_copy(repo, version: int, new_version: int) -> None:
    """What the exporter does: the content model, then the head naming it, under one new version."""
    for name in (CONTENT, HEAD):
        shutil.copytree(repo / name / str(version), repo / name / f".{new_version}.tmp")
        meta_path = repo / name / f".{new_version}.tmp" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        if "content_model" in meta:
            meta["content_model"]["version"] = new_version
        meta_path.write_text(json.dumps({**meta, "version": new_version}))
        (repo / name / f".{new_version}.tmp").rename(repo / name / str(new_version))


def test_a_promoted_version_is_loaded_without_restart_and_a_broken_one_is_refused(private_stack):
    settings = private_stack.settings
    endpoints = private_stack.state.endpoints_obj()
    client = redis.Redis.from_url(endpoints.redis_url)
    post_key = RedisKeys.of(settings).post
    repo = settings.stack.model_repo
    current = max(int(p.name) for p in (repo / HEAD).iterdir() if p.name.isdigit())
    # posts uploaded before the promotion: their cached content vectors are of the old version
    events = real_slice("ver-", n_posts=5)
    posts = [(raw, e) for raw, e in events if isinstance(e, Post)]
    asyncio.run(produce(endpoints.broker_bootstrap, settings.kafka.topics.posts,
                        [(e.post_id.encode(), raw) for raw, e in posts]))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(client.hexists(post_key(e.post_id), CONTENT_FIELD)
                                                  for _, e in posts):
        time.sleep(0.2)
    dim = 64
    old = decode_content([client.hget(post_key(e.post_id), CONTENT_FIELD) for _, e in posts],
                         content_tag(CONTENT, current), dim, 4)[2]
    assert old.all()

    _promote_copy(repo, current, current + 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if web_json(private_stack, "/readyz")["models"][HEAD]["version"] == current + 1:
            break
        time.sleep(0.5)
    models = web_json(private_stack, "/readyz")["models"]
    assert models[HEAD]["version"] == models[CONTENT]["version"] == current + 1
    assert models[STATIC]["platform"] == models[HEAD]["platform"] == "hackernews"

    for name in (CONTENT, HEAD):  # a broken pair: neither half switches
        broken = repo / name / str(current + 2)
        broken.mkdir()
        (broken / "model.onnx").write_bytes(b"not an onnx file")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and web_json(private_stack, "/readyz")["models"][CONTENT]["reload_failures"] == 0:
        time.sleep(0.5)
    models = web_json(private_stack, "/readyz")["models"]
    assert models[CONTENT]["reload_failures"] >= 1
    assert models[HEAD]["version"] == models[CONTENT]["version"] == current + 1
    for name in (CONTENT, HEAD):
        shutil.rmtree(repo / name / str(current + 2))

    # their snapshots come after it: the stale vectors are recomputed by the new content model and stored
    grouped = replay_and_collect(private_stack, "ver-", [(raw, e) for raw, e in events if isinstance(e, Snapshot)])
    versions = {r["model_version"] for rs in grouped.values() for r in rs if r["model"] == "temporal"}
    assert versions == {str(current + 1)}
    fresh = decode_content([client.hget(post_key(e.post_id), CONTENT_FIELD) for _, e in posts],
                           content_tag(CONTENT, current + 1), dim, 4)[2]
    assert fresh.all()


def _copy_set_as(repo, platform: str, version: int, with_bounds: bool) -> None:
    """The hackernews set's files as ``platform``'s set version ``version`` (what an export for that platform
    writes), with or without the declared bounds."""
    for kind in F.MODEL_KINDS:
        source, target = repo / F.model_name(kind, "hackernews"), repo / F.model_name(kind, platform)
        newest = max(int(p.name) for p in source.iterdir() if p.name.isdigit())
        staging = target / f".{version}.tmp"
        shutil.copytree(source / str(newest), staging)
        meta = json.loads((staging / "metadata.json").read_text())
        meta.update(model=target.name, platform=platform, version=version)
        if "content_model" in meta:
            meta["content_model"] = {"name": F.model_name("content", platform), "version": version}
        if not with_bounds:
            meta.pop("bounds", None)
        (staging / "metadata.json").write_text(json.dumps(meta))
        config = (source / "config.pbtxt").read_text().replace(f'name: "{source.name}"', f'name: "{target.name}"')
        (target / "config.pbtxt").write_text(config)
        staging.rename(target / str(version))


def _post_and_snapshot(settings, endpoints, post_id: str, platform: str, comments: int) -> None:
    now = int(time.time())
    post = {"schema": "post.v1", "post_id": post_id, "platform": platform, "created_at": _iso(now - 1800),
            "text": {"title": "a new platform"}}
    snapshot = {"schema": "snapshot.v1", "post_id": post_id, "observed_at": _iso(now - 60),
                "counts": {"comments": comments}}
    asyncio.run(produce(endpoints.broker_bootstrap, settings.kafka.topics.posts, [(post_id.encode(), json.dumps(post).encode())]))
    wait_processed(settings, endpoints.broker_bootstrap)  # the post is known when its snapshot comes
    asyncio.run(produce(endpoints.broker_bootstrap, settings.kafka.topics.snapshots,
                        [(post_id.encode(), json.dumps(snapshot).encode())]))


def _iso(epoch: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


def test_a_platforms_set_is_served_only_with_declared_bounds_and_picked_up_without_restart(private_stack):
    """A platform without a set gets the fallback; its set exported without bounds is not servable (/readyz says
    why, the fallback goes on); the next version, with bounds, is loaded and serves its platform, no restart.
    (Before the test that stops Triton: a new set must be loaded in Triton to be served.)"""
    settings, endpoints = private_stack.settings, private_stack.state.endpoints_obj()
    repo, platform = settings.stack.model_repo, "lobsters"

    def records_of(post_id: str) -> list[dict]:
        """All the post's predictions, once the worker has processed everything sent (exact lists below)."""
        wait_processed(settings, endpoints.broker_bootstrap)
        return _group(read_all(settings, endpoints.broker_bootstrap, settings.kafka.topics.predictions),
                      post_id).get(post_id, [])

    _post_and_snapshot(settings, endpoints, "lob-before", platform, 10)
    before = records_of("lob-before")
    assert [(r["model"], r["model_name"], r["trained_for"], r["flags"]) for r in before] == \
        [("temporal", "persistence", None, ["fallback"])]
    # persistence: the score now, under the platform's weights (the default ones: 0.3 a comment)
    assert before[0]["score"] == pytest.approx(3.0) and before[0]["interval"] is None

    _copy_set_as(repo, platform, 1, with_bounds=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and platform not in web_json(private_stack, "/readyz")["model_sets"]:
        time.sleep(0.5)
    ready = web_json(private_stack, "/readyz")
    assert ready["model_sets"][platform]["servable"] is False and "bounds" in ready["model_sets"][platform]["problem"]
    assert ready["ready"] is True  # the fallback serves the platform meanwhile
    assert F.model_name("static", platform) not in ready["models"]

    _copy_set_as(repo, platform, 2, with_bounds=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not web_json(private_stack, "/readyz")["model_sets"][platform]["servable"]:
        time.sleep(0.5)
    models = web_json(private_stack, "/readyz")["models"]
    assert models[F.model_name("temporal", platform)]["version"] == 2

    _post_and_snapshot(settings, endpoints, "lob-after", platform, 10)
    after = records_of("lob-after")
    assert {(r["model"], r["model_name"], r["trained_for"], r["model_version"]) for r in after} == {
        ("static", F.model_name("static", platform), platform, "2"),
        ("temporal", F.model_name("temporal", platform), platform, "2")}
    # the post from before the set has no content vector yet: computed by the new set at its next snapshot
    snapshot = {"schema": "snapshot.v1", "post_id": "lob-before", "observed_at": _iso(int(time.time()) - 30),
                "counts": {"comments": 12}}
    asyncio.run(produce(endpoints.broker_bootstrap, settings.kafka.topics.snapshots,
                        [(b"lob-before", json.dumps(snapshot).encode())]))
    later = records_of("lob-before")
    assert any(r["model_name"] == F.model_name("temporal", platform) for r in later)


def test_predictions_continue_from_local_onnx_runtime_when_triton_dies(private_stack):
    private_stack.stop_component("triton")
    try:
        grouped = replay_and_collect(private_stack, "fb-", real_slice("fb-", n_posts=5))
        models = web_json(private_stack, "/readyz")["models"]
    finally:
        private_stack.start_component("triton")  # known_state closes the worker's circuits for the next test
    assert models[HEAD]["local"] > 0 and models[HEAD]["triton_errors"] > 0
    temporal = [r for rs in grouped.values() for r in rs if r["model"] == "temporal"]
    assert temporal and all(r["model_name"] == HEAD and r["model_version"] == str(models[HEAD]["version"])
                            and "fallback" not in r["flags"] for r in temporal)


def test_snapshots_that_overtake_their_post_are_scored_when_the_post_arrives(private_stack):
    settings = private_stack.settings
    endpoints = private_stack.state.endpoints_obj()
    events = real_slice("late-", n_posts=3)
    snapshots = [(raw, e) for raw, e in events if isinstance(e, Snapshot)]
    posts = [(raw, e) for raw, e in events if isinstance(e, Post)]
    asyncio.run(produce(endpoints.broker_bootstrap, settings.kafka.topics.snapshots,
                        [(e.post_id.encode(), raw) for raw, e in snapshots]))
    wait_processed(settings, endpoints.broker_bootstrap)
    client = redis.Redis.from_url(endpoints.redis_url)
    keys = RedisKeys.of(settings)
    due = {e.post_id: client.zscore(keys.awaiting(keys.shard(e.post_id)), e.post_id) for _, e in snapshots}
    assert all(due.values()), f"not registered as waiting for their post: {due}"
    early = _group(read_all(settings, endpoints.broker_bootstrap, settings.kafka.topics.predictions), "late-")
    # Nothing may be scored without the post while its grace period runs (the worker's deadline, wall clock):
    # read before it ended, an empty topic says so.
    assert time.time() < min(due.values()), "the grace period ended before the check: it proves nothing"
    assert early == {}
    asyncio.run(produce(endpoints.broker_bootstrap, settings.kafka.topics.posts,
                        [(e.post_id.encode(), raw) for raw, e in posts]))
    last_seen = expected_last_seen(snapshots)
    grouped = predictions_by_post(endpoints.broker_bootstrap, settings.kafka.topics.predictions, "late-",
                                  lambda g: covered(g, last_seen))
    assert covered(grouped, last_seen)


def whole_seconds(moment) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(int(moment.timestamp()), timezone.utc).isoformat().replace("+00:00", "Z")


def test_several_snapshots_of_a_post_in_one_window_give_one_prediction(private_stack):
    """One envelope holding three snapshots of each post, out of order (one window of the private stack's 40
    snapshots, two steps of 16): every snapshot is stored, and each post gets one temporal prediction, as of
    its latest snapshot."""
    from popscore.tools.replay import batch_envelope

    settings, endpoints = private_stack.settings, private_stack.state.endpoints_obj()
    events = real_slice("fold-", n_posts=30)
    by_post = defaultdict(list)
    for raw, event in events:
        if isinstance(event, Snapshot):
            by_post[event.post_id].append((raw, event))
    chosen = [p for p, snaps in by_post.items() if len(snaps) >= 3][:8]
    assert len(chosen) == 8
    posts = [(event.post_id.encode(), raw) for raw, event in events
             if isinstance(event, Post) and event.post_id in chosen]
    asyncio.run(produce(endpoints.broker_bootstrap, settings.kafka.topics.posts, posts))
    predictions_by_post(endpoints.broker_bootstrap, settings.kafka.topics.predictions, "fold-",
                        lambda g: all(any(r["model"] == "static" for r in g.get(p, [])) for p in chosen))

    envelopes = defaultdict(list)  # one per partition, as the replay sends them
    for k in (2, 0, 1):  # the latest first, then the two before
        for p in chosen:
            envelopes[partition_of(p.encode(), settings.kafka.topics.partitions)].append(by_post[p][k][0])
    asyncio.run(produce_to_partitions(endpoints.broker_bootstrap, settings.kafka.topics.snapshots,
                                      [(partition, batch_envelope(lines)) for partition, lines in envelopes.items()]))
    latest = {p: whole_seconds(by_post[p][2][1].observed_at) for p in chosen}  # sequences keep whole seconds
    wait_processed(settings, endpoints.broker_bootstrap)
    grouped = _group(read_all(settings, endpoints.broker_bootstrap, settings.kafka.topics.predictions), "fold-")
    for post_id in chosen:
        temporal = [r for r in grouped[post_id] if r["model"] == "temporal"]
        assert [(r["as_of"], r["model_name"]) for r in temporal] == [(latest[post_id], HEAD)], post_id
    client = redis.Redis.from_url(endpoints.redis_url)
    for post_id in chosen:
        stored = decode_sequence(client.get(RedisKeys.of(settings).sequence(post_id)) or b"")
        assert len(stored) == 3, post_id

