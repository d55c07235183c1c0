"""Issue 20 through the real stack: posts with inline images, media references, video frames and broken media.

Every post is scored once at upload. A valid picture is read, decoded, encoded by the served
``popscore_image_encoder`` and scored with the visual modality on (``modality_weights.visual`` > 0), by the
platform's ``popscore_<platform>_image_static`` where the repository has one; a broken one is scored by the
platform's static model with the visual modality off, flagged ``media_rejected`` with its reason, and counted by
reason. The heat-map view answers a PNG for a scored image post and 404 for a post without a picture; the live board's
post view shows it for an image post (a real headless Chromium; skipped without one).

The image static model: the memes model (``popscore_reddit_image_static``) when the repository has it; until then
the fixture serves a copy of the repository's reddit static model under that name with metadata declaring the
visual modality (the same MTAF graph, which takes ``visual_embedding`` like every static model; it was not
trained on pictures, so it shows routing and masking, not a visual model's quality).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.integration.kafka_io import consume_until, produce
from tests.integration.test_board import browser, wait_for  # noqa: F401 (a fixture)
from tests.integration.test_platform_routing import counts, scrape

pytestmark = pytest.mark.integration

MEDIA_ROOT = Path(tempfile.mkdtemp(prefix="popscore-media-"))
OUTSIDE = Path(tempfile.mkdtemp(prefix="popscore-outside-"))
IMAGE_STATIC = "popscore_reddit_image_static"


def configure_private_stack(settings) -> None:
    settings.media.roots = [str(MEDIA_ROOT)]
    repo = settings.stack.model_repo
    if not (repo / IMAGE_STATIC).exists():
        source = repo / "popscore_reddit_static"
        version = max(int(p.name) for p in source.iterdir() if p.name.isdigit())
        target = repo / IMAGE_STATIC / "1"
        shutil.copytree(source / str(version), target)
        meta = json.loads((target / "metadata.json").read_text())
        meta.update(model=IMAGE_STATIC, version=1, modalities=["content", "text", "visual"])
        (target / "metadata.json").write_text(json.dumps(meta))
        config = (source / "config.pbtxt").read_text().replace('"popscore_reddit_static"', f'"{IMAGE_STATIC}"')
        (repo / IMAGE_STATIC / "config.pbtxt").write_text(config)


def picture(seed: int, size=(160, 120), fmt="PNG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def build_posts() -> tuple[list[tuple[bytes, bytes]], dict[str, str | None], dict[str, int]]:
    """(records, post_id -> expected media problem or None for a valid picture / 'none' for no media,
    post_id -> frames of a video)."""
    created = (datetime.now(timezone.utc) - timedelta(hours=1)).replace(microsecond=0)
    for i in range(3):
        (MEDIA_ROOT / f"ref{i}.jpg").write_bytes(picture(100 + i, fmt="JPEG"))
    (OUTSIDE / "secret.png").write_bytes(picture(7))
    (MEDIA_ROOT / "escape.png").symlink_to(OUTSIDE / "secret.png")
    huge = io.BytesIO()
    Image.new("RGB", (5000, 4000), (10, 20, 30)).save(huge, format="PNG")  # 20 M pixels, a few KB of PNG
    cases: dict[str, tuple[dict, str | None]] = {}
    for i in range(4):
        cases[f"inline-{i}"] = ({"image": b64(picture(i))}, None)
    for i in range(3):
        cases[f"ref-{i}"] = ({"image_uris": [f"file://{MEDIA_ROOT}/ref{i}.jpg"]}, None)
    cases["video-0"] = ({"frames": [{"image": b64(picture(20 + k))} for k in range(4)]}, None)
    cases["video-1"] = ({"frames": [{"uri": f"file://{MEDIA_ROOT}/ref{k}.jpg"} for k in range(3)]
                         + [{"image": b64(picture(30))}]}, None)
    cases["bad-undecodable"] = ({"image": b64(b"GIF89a but not really a picture")}, "undecodable")
    cases["bad-not-base64"] = ({"image": "**not base64**"}, "undecodable")
    cases["bad-oversized"] = ({"image": b64(huge.getvalue())}, "oversized")
    cases["bad-missing"] = ({"image_uris": [f"file://{MEDIA_ROOT}/absent.jpg"]}, "missing")
    cases["bad-outside"] = ({"image_uris": [f"file://{OUTSIDE}/secret.png"]}, "disallowed")
    cases["bad-symlink"] = ({"image_uris": [f"file://{MEDIA_ROOT}/escape.png"]}, "disallowed")
    cases["bad-https"] = ({"image_uris": ["https://img.example/1.jpg"]}, "disallowed")
    cases["bad-frame"] = ({"frames": [{"image": b64(picture(40))}, {"uri": f"file://{MEDIA_ROOT}/none.jpg"}]},
                          "missing")
    corner = np.full((240, 240, 3), 128, np.uint8)  # mean grey, what occlusion fills in, but for one corner
    corner[:40, :40] = np.indices((40, 40)).sum(0)[..., None] % 2 * 255  # a sharp checkerboard in the top left
    corner_png = io.BytesIO()
    Image.fromarray(corner).save(corner_png, format="PNG")
    cases["corner"] = ({"image": b64(corner_png.getvalue())}, None)
    cases["plain-0"] = ({}, "none")
    cases["plain-1"] = ({"video_uri": "https://v.example/1.mp4"}, "none")
    records, expected, frames = [], {}, {}
    for n, (name, (media, problem)) in enumerate(cases.items()):
        post_id = f"media-{name}"
        post = {"schema": "post.v1", "post_id": post_id, "platform": "reddit", "created_at":
                created.isoformat().replace("+00:00", "Z"), "text": {"title": f"a picture post number {n}"},
                "media": media}
        records.append((post_id.encode(), json.dumps(post).encode()))
        expected[post_id] = problem
        if "frames" in media and problem is None:
            frames[post_id] = len(media["frames"])
    return records, expected, frames


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def test_pictures_frames_and_broken_media_through_the_worker(private_stack):
    settings, endpoints = private_stack.settings, private_stack.state.endpoints_obj()
    records, expected, frames = build_posts()
    asyncio.run(produce(endpoints.broker_bootstrap, settings.kafka.topics.posts, records))
    messages = asyncio.run(consume_until(
        endpoints.broker_bootstrap, settings.kafka.topics.predictions,
        lambda ms: {json.loads(m.value)["post_id"] for m in ms} >= set(expected), timeout_s=180))
    static = [json.loads(m.value) for m in messages if json.loads(m.value)["model"] == "static"]
    by_post = Counter(r["post_id"] for r in static)
    assert by_post == Counter(set(expected)), "every post scored exactly once at upload: nothing lost"

    for r in static:
        problem, where = expected[r["post_id"]], r
        visual = r["explanation"]["modality_weights"]["visual"]
        if problem is None:  # a valid picture: the visual modality on, scored by the image static model
            assert visual > 0 and "media_rejected" not in r["flags"], where
            assert r["model_name"] == IMAGE_STATIC and "media_problem" not in r["explanation"], where
            if r["post_id"] in frames:
                attention = r["explanation"]["frame_attention"]
                assert len(attention) == frames[r["post_id"]] and abs(sum(attention) - 1) < 1e-3, where
            else:
                assert "frame_attention" not in r["explanation"], where
        elif problem == "none":  # no picture: scored as before, nothing reported
            assert visual == 0 and r["model_name"] == "popscore_reddit_static", where
            assert "media_rejected" not in r["flags"] and "media_problem" not in r["explanation"], where
        else:  # broken media: still scored, without the visual modality, and reported with its reason
            assert visual == 0 and r["model_name"] == "popscore_reddit_static", where
            assert "media_rejected" in r["flags"] and r["explanation"]["media_problem"] == problem, where
    letters = asyncio.run(consume_until(endpoints.broker_bootstrap, settings.kafka.topics.deadletter,
                                        lambda ms: False, timeout_s=3))
    assert not letters, "no media post is dead-lettered"

    samples = scrape(private_stack)
    rejected = counts(samples["popscore_media_rejected_total"], "reason")
    want = Counter(p for p in expected.values() if p not in (None, "none"))
    assert rejected == Counter({(reason,): n for reason, n in want.items()})
    used = counts(samples["popscore_media_posts_total"], "kind")
    assert used == Counter({("image",): 8, ("video",): 2})
    flagged = counts(samples["popscore_flagged_predictions_total"], "kind", "flag")
    assert flagged[("static", "media_rejected")] == sum(want.values())

    web = endpoints.as_dict()["worker_web"]
    status, content_type, body = get(f"{web}/posts/media-inline-0/heatmap.png")
    assert status == 200 and content_type.startswith("image/png"), body[:200]
    assert Image.open(io.BytesIO(body)).size == (224, 224)
    # The picture is grey but for a checkerboard in its top-left corner: hiding that corner changes the served
    # prediction most (grey cells are hidden by grey, and change nothing).
    status, _, body = get(f"{web}/posts/media-corner/heatmap.png?format=json")
    grid = np.abs(np.array(json.loads(body)["grid"]))
    print(f"corner heat map (|drop in log score|):\n{np.round(grid, 5)}")
    assert status == 200 and np.unravel_index(np.argmax(grid), grid.shape) == (0, 0)
    status, _, body = get(f"{web}/posts/media-plain-0/heatmap.png")
    assert status == 404 and b"no picture" in body
    print(f"media: {len(static)} posts scored at upload, rejected by reason {dict(want)}, "
          f"image static predictions {sum(r['model_name'] == IMAGE_STATIC for r in static)}")


def test_the_board_post_view_shows_an_image_posts_heat_map(private_stack, browser):
    """The live board's post view shows the heat map (``/posts/{id}/heatmap.png``) of a post whose picture was
    used, linked to the full-size PNG, and no heat-map block for a post without a picture."""
    from selenium.webdriver.common.by import By

    settings, endpoints = private_stack.settings, private_stack.state.endpoints_obj()
    created = (datetime.now(timezone.utc) - timedelta(hours=1)).replace(microsecond=0).isoformat()
    posts = {"board-image": {"image": b64(picture(50))}, "board-plain": {}}
    records = [(pid.encode(), json.dumps({
        "schema": "post.v1", "post_id": pid, "platform": "reddit", "created_at": created.replace("+00:00", "Z"),
        "text": {"title": f"the board's {pid} post"}, "media": media}).encode()) for pid, media in posts.items()]
    asyncio.run(produce(endpoints.broker_bootstrap, settings.kafka.topics.posts, records))
    asyncio.run(consume_until(endpoints.broker_bootstrap, settings.kafka.topics.predictions,
                              lambda ms: {json.loads(m.value)["post_id"] for m in ms} >= set(posts), timeout_s=120))

    web = endpoints.as_dict()["worker_web"]
    browser.get(f"{web}/#/post/board-image")
    wait_for(lambda: browser.execute_script(
        "const i = document.getElementById('heatmap'); return i.complete && i.naturalWidth > 0 && "
        "!document.getElementById('heatmap-block').hidden"), timeout_s=60, what="the heat map to be shown")
    assert browser.execute_script("return document.getElementById('heatmap').naturalWidth") == 224
    link = browser.find_element(By.ID, "heatmap-link").get_attribute("href")
    assert link == f"{web}/posts/board-image/heatmap.png"
    status, content_type, _ = get(link)
    assert status == 200 and content_type.startswith("image/png")

    browser.get(f"{web}/#/post/board-plain")
    wait_for(lambda: browser.find_element(By.ID, "post-title").text == "the board's board-plain post",
             what="the plain post's view")  # drawn with its explanation, the heat-map block decided with it
    assert browser.execute_script("return document.getElementById('heatmap-block').hidden") is True
