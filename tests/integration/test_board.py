"""The live board end to end, on a stack of two workers: bad query parameters get a 400 with a message, both
workers serve the same boards, batch lookup returns each post's latest prediction, the push feeds deliver a
prediction within a second of its publication, and a real headless Chromium sees the page update without a
reload and the post view draw its chart (screenshots to a temporary folder; ``make screenshots`` writes them to
docs/, which the README shows, so a test run leaves the checkout clean)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from popscore.contract import Snapshot
from popscore.tools.client import BoardApiError, BoardClient
from popscore.tools.replay import ReplayOptions, replay
from tests.integration.kafka_io import produce
from tests.integration.test_pipeline import covered, expected_last_seen, predictions_by_post, real_slice

pytestmark = pytest.mark.integration

BOARD_SIZE = 100


def configure_private_stack(settings) -> None:
    settings.stack.workers = 2
    settings.worker.leaderboard_size = BOARD_SIZE
    settings.worker.board_max_posts = 50


def worker_urls(stack) -> list[str]:
    """The stack's own worker first, then the second one."""
    host = stack.state.endpoints_obj().host
    return [stack.state.endpoints_obj().as_dict()["worker_web"],
            f"http://{host}:{stack.state.processes['worker-2']['web_port']}"]


def http(url: str, body: bytes | None = None, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def replay_slice(stack, events) -> dict[str, list[dict]]:
    """Replay ``events``; the predictions of posts named ``board-...`` once each has its last temporal one."""
    settings, endpoints = stack.settings, stack.state.endpoints_obj()
    result = asyncio.run(replay(events, endpoints.broker_bootstrap, settings.kafka.topics,
                                ReplayOptions(create_topics=False, progress=False)))
    assert result.complete
    last_seen = expected_last_seen(events)
    grouped = predictions_by_post(endpoints.broker_bootstrap, settings.kafka.topics.predictions, "board-",
                                  lambda g: covered(g, last_seen))
    assert covered(grouped, last_seen)
    return grouped


@pytest.fixture(scope="module")
def slices():
    """The slice's posts in two parts: the first replayed before the tests look, the second while the
    browser watches."""
    events = real_slice("board-", n_posts=40)
    posts = [e.post_id for _, e in events if not isinstance(e, Snapshot)]
    first = set(posts[:25])
    return [(k, e) for k, e in events if e.post_id in first], [(k, e) for k, e in events if e.post_id not in first]


@pytest.fixture(scope="module")
def replayed(private_stack, slices) -> dict[str, list[dict]]:
    return replay_slice(private_stack, slices[0])


BAD_K = ["abc", "0", "-5", str(BOARD_SIZE + 1), "99999999999999999999", "1.5", "", "1e3", " "]


@pytest.mark.parametrize("path", ["/leaderboard", "/feed/board"])
def test_every_bad_k_and_an_unknown_board_get_400_with_a_message(private_stack, path):
    url = worker_urls(private_stack)[1] + path
    for k in BAD_K:
        status, body = http(f"{url}?k={urllib.request.quote(k)}")
        assert status == 400 and "k must be" in body["error"], (k, status, body)
    for board in ["nope", "top:platform:nowhere", "lb:top", "TOP"]:
        status, body = http(f"{url}?board={urllib.request.quote(board)}")
        assert status == 400 and f"unknown board {board!r}" in body["error"] and "GET /boards" in body["error"]


def test_bad_post_id_lists_get_400_with_a_message(private_stack):
    url = worker_urls(private_stack)[0]
    status, body = http(url + "/feed/predictions")
    assert status == 400 and "at least one post id" in body["error"]
    too_many = "&".join(f"post_id=p{i}" for i in range(51))
    status, body = http(f"{url}/feed/predictions?{too_many}")
    assert status == 400 and "at most 50 post ids" in body["error"]
    for raw, message in [(b"not json", "must be JSON"), (b"[1, 2]", "JSON object"), (b"{}", "at least one post id"),
                         (b'{"post_ids": []}', "at least one post id"), (b'{"post_ids": "a"}', "at least one"),
                         (b'{"post_ids": ["a", 3]}', "non-empty strings"), (b'{"post_ids": [""]}', "non-empty"),
                         (json.dumps({"post_ids": [f"p{i}" for i in range(51)]}).encode(), "at most 50")]:
        status, body = http(url + "/predictions", raw)
        assert status == 400 and message in body["error"], (raw, body)


def test_both_workers_serve_the_same_boards_and_list_them(private_stack, replayed):
    urls = worker_urls(private_stack)
    listed = [http(url + "/boards")[1] for url in urls]
    assert listed[0] == listed[1]
    names = [b["name"] for b in listed[0]["boards"]]
    assert names[:2] == ["top", "rising"] and "top:platform:hackernews" in names, names
    for name in names:
        boards = [http(f"{url}/leaderboard?board={urllib.request.quote(name)}&k=5")[1] for url in urls]
        assert [e["post_id"] for e in boards[0]["entries"]] == [e["post_id"] for e in boards[1]["entries"]]
        assert 1 <= len(boards[0]["entries"]) <= 5
    latest = {post: [r for r in rs if r["model"] == "temporal"][-1] for post, rs in replayed.items()}
    (top,) = [http(f"{url}/leaderboard?board=top&k={BOARD_SIZE}")[1] for url in urls[1:]]
    ours = [e for e in top["entries"] if e["post_id"] in latest]
    assert ours and [e["rank"] for e in top["entries"]] == list(range(1, len(top["entries"]) + 1))
    for entry in ours:  # an entry carries its post and its prediction, as the predictions topic says
        record = latest[entry["post_id"]]
        # (a post observed only at its upload, as some of the sample's are, is 0 s old)
        assert entry["platform"] == "hackernews" and entry["created_at"] and entry["age_s"] >= 0
        assert entry["prediction"]["score"] == pytest.approx(record["score"])
        assert entry["prediction"]["interval"] == pytest.approx(record["interval"])
        assert entry["prediction"]["model_name"] == record["model_name"]
        assert entry["prediction"]["model_version"] == record["model_version"]
        assert any(v is not None for v in entry["counters"].values())


def test_batch_lookup_returns_each_posts_latest_predictions(private_stack, replayed):
    posts = sorted(replayed)[:5]

    async def lookup():
        async with BoardClient(worker_urls(private_stack)[1]) as client:
            return await client.latest([*posts, "board-never-seen"])

    found = asyncio.run(lookup())
    assert found["board-never-seen"] is None
    for post in posts:
        temporal = [r for r in replayed[post] if r["model"] == "temporal"][-1]
        (static,) = [r for r in replayed[post] if r["model"] == "static"]
        assert found[post]["temporal"].score == pytest.approx(temporal["score"])
        assert found[post]["temporal"].as_of == temporal["as_of"]
        assert found[post]["static"].score == pytest.approx(static["score"])
        assert found[post]["static"].explanation["word_attention"] == static["explanation"]["word_attention"]


def _next_snapshot(events, post_id: str) -> Snapshot:
    """A later snapshot of ``post_id`` with every counter it reports grown."""
    last = [e for _, e in events if isinstance(e, Snapshot) and e.post_id == post_id][-1]
    counts = {name: int(value * 1.5) + 25 for name, value in last.counts.model_dump(exclude_none=True).items()}
    return last.model_copy(update={"observed_at": last.observed_at + timedelta(minutes=30),
                                   "counts": type(last.counts)(**counts)})


def test_the_feeds_deliver_a_prediction_within_a_second_of_its_publication(private_stack, slices, replayed):
    settings, endpoints = private_stack.settings, private_stack.state.endpoints_obj()
    url = worker_urls(private_stack)[1]  # the feeds read Redis: the worker that scored the post need not be this one
    top = http(f"{url}/leaderboard?board=top&k={BOARD_SIZE}")[1]["entries"]
    post_id = next(e["post_id"] for e in top if e["post_id"].startswith("board-"))
    snapshot = _next_snapshot(slices[0], post_id)
    # the prediction is as of the stored observation, in whole seconds (some of the sample's times have fractions)
    new_as_of = snapshot.observed_at.replace(microsecond=0).isoformat().replace("+00:00", "Z")

    async def scenario():
        topic = settings.kafka.topics.predictions
        consumer = AIOKafkaConsumer(bootstrap_servers=endpoints.broker_bootstrap, group_id=None,
                                    enable_auto_commit=False, fetch_max_wait_ms=20)
        await consumer.start()
        partitions = [TopicPartition(topic, p) for p in range(settings.kafka.topics.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for partition in partitions:
            await consumer.position(partition)
        async with BoardClient(url) as client:
            arrivals: dict[str, list] = {"prediction": [], "board": []}

            async def stamp(name, feed):
                async for item in feed:
                    arrivals[name].append((time.time(), item))

            tasks = [asyncio.create_task(stamp("prediction", client.follow_predictions([post_id]))),
                     asyncio.create_task(stamp("board", client.follow_board("top", BOARD_SIZE)))]
            try:
                while not (arrivals["prediction"] and arrivals["board"]):  # each feed starts with the current state
                    await asyncio.sleep(0.05)
                before = arrivals["prediction"][0][1].predictions["temporal"].as_of
                await produce(endpoints.broker_bootstrap, settings.kafka.topics.snapshots,
                              [(post_id.encode(), snapshot.model_dump_json(by_alias=True).encode())])
                published, give_up = None, time.monotonic() + 30
                while published is None:
                    assert time.monotonic() < give_up, "the new snapshot's prediction never reached Kafka"
                    for messages in (await consumer.getmany(timeout_ms=200)).values():
                        for message in messages:
                            record = json.loads(message.value)
                            if record["post_id"] == post_id and record["model"] == "temporal" \
                                    and record["as_of"] == new_as_of:  # not a late one of the replay
                                published = (message.timestamp / 1000, record)
                score = published[1]["score"]

                def board_shows_it():
                    return next((t for t, board in arrivals["board"][1:] for e in board.entries
                                 if e.post_id == post_id and e.value == pytest.approx(score)), None)

                def feed_shows_it():
                    return next(((t, u) for t, u in arrivals["prediction"][1:]
                                 if u.predictions["temporal"].as_of == published[1]["as_of"]), None)

                deadline = time.monotonic() + 10
                while (feed_shows_it() is None or board_shows_it() is None) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        await consumer.stop()
        return before, published, feed_shows_it(), board_shows_it()

    before, (published_at, record), fed, seen_board = asyncio.run(scenario())
    assert fed is not None, "the prediction feed never showed the new snapshot's prediction"
    seen_prediction, update = fed
    assert update.post_id == post_id and record["as_of"] > before
    assert update.predictions["temporal"].score == pytest.approx(record["score"])
    # the record's timestamp is taken when the worker hands it to its producer, before Kafka has it: stricter
    print(f"after publication: prediction feed {seen_prediction - published_at:.3f} s, "
          f"board feed {seen_board - published_at:.3f} s" if seen_board else "")
    assert seen_prediction - published_at < 1.0, seen_prediction - published_at
    assert seen_board is not None, "the board feed never showed the new prediction"
    assert seen_board - published_at < 1.0, seen_board - published_at


def test_the_client_raises_the_apis_message(private_stack):
    async def bad():
        async with BoardClient(worker_urls(private_stack)[0]) as client:
            await client.board("top", k=0)

    with pytest.raises(BoardApiError, match="k must be from 1 to 100"):
        asyncio.run(bad())


# --- the page, in a real headless Chromium ------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test installs them as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip: popscore[dev])")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshot_dir(tmp_path) -> Path:
    """docs/'s pictures are refreshed on purpose (POPSCORE_SCREENSHOT_DIR, set by ``make screenshots``)."""
    return Path(os.environ.get("POPSCORE_SCREENSHOT_DIR") or tmp_path)


def save_screenshot(browser, path: Path) -> None:
    assert browser.save_screenshot(str(path)), f"chromium wrote no screenshot to {path}"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def wait_for(condition, timeout_s: float = 30.0, what: str = ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_page_updates_without_reload_and_draws_the_post_chart(private_stack, slices, replayed, browser,
                                                                 screenshot_dir):
    from selenium.webdriver.common.by import By

    url = worker_urls(private_stack)[1]
    browser.get(url + "/")
    # read in one script each time: the rows are replaced at every push, so element handles go stale
    shown = lambda: browser.execute_script(  # noqa: E731
        "return [...document.querySelectorAll('#board tbody tr')].map(r => r.dataset.postId)")
    titles = lambda: browser.execute_script(  # noqa: E731
        "return [...document.querySelectorAll('#board tbody tr a')].map(a => a.textContent)")
    wait_for(lambda: len(shown()) > 0, what="board entries")
    browser.execute_script("window.__notReloaded = true")
    before, updates = shown(), int(browser.find_element(By.ID, "board").get_attribute("data-updates"))
    assert all(titles())  # a title (or the id) per entry

    more = threading.Thread(target=replay_slice, args=(private_stack, slices[1]))
    more.start()
    try:
        wait_for(lambda: shown() != before, timeout_s=90, what="the board to change")
    finally:
        more.join()
    assert browser.execute_script("return window.__notReloaded === true")  # changed by push, not by a reload
    assert int(browser.find_element(By.ID, "board").get_attribute("data-updates")) > updates
    assert browser.find_element(By.ID, "status").text == "live"
    time.sleep(1.5)  # let the row highlight fade before the screenshot
    save_screenshot(browser, screenshot_dir / "board.png")

    browser.execute_script("document.querySelector('#board tbody tr a').click()")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#chart circle.observed"), what="the chart's points")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#chart path.predicted"), what="the prediction")
    assert browser.execute_script("return document.body.dataset.view") == "post"
    assert browser.find_elements(By.CSS_SELECTOR, "#time-attention rect")
    assert browser.execute_script("return window.__notReloaded === true")
    browser.set_window_size(1400, 1250)  # the chart and the explanation in one picture
    save_screenshot(browser, screenshot_dir / "board-post.png")


def test_a_worker_stops_promptly_with_a_feed_open(private_stack):
    """Last in the module: it stops the second worker. An open feed must not hold the worker's graceful stop
    for aiohttp's shutdown timeout (60 s): the feed ends when the server shuts down."""
    from popscore.tools.stack.process import group_alive, stop_group

    pid = private_stack.state.processes["worker-2"]["pid"]

    async def scenario():
        async with BoardClient(worker_urls(private_stack)[1]) as client:
            feed = client.follow_board("top", 5)
            await anext(feed)  # connected, the first event in
            started = time.monotonic()
            stopper = asyncio.get_running_loop().run_in_executor(None, stop_group, pid, 90.0)
            with pytest.raises(StopAsyncIteration):  # the server ended the stream
                while True:
                    await asyncio.wait_for(anext(feed), timeout=90)
            await stopper
            return time.monotonic() - started

    stopped_in = asyncio.run(scenario())
    assert not group_alive(pid)  # the worker process group, as the stack itself judges it gone
    assert stopped_in < 30, f"the worker took {stopped_in:.1f} s to stop with a feed open"
