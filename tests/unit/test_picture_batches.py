"""The features stage's pictures (Features._pictures): one encoder request per micro-batch for all its pictures and
frames, none at all when no post carries media, and a problem per post that cannot be used."""

from __future__ import annotations

import asyncio
import base64
import io
from datetime import datetime, timezone

import numpy as np
from PIL import Image

from popscore.contract import Frame, Media, Post
from popscore.settings import Settings
from popscore.stream.metrics import WorkerMetrics
from popscore.stream.stages.features import Features


class CountingEncoder:
    """The infer stage's picture half: records each request, embeds a picture as its mean red value."""

    encodes_pictures = True

    def __init__(self, picture_batch: int = 8) -> None:
        self.picture_batch = picture_batch
        self.requests: list[int] = []

    async def embed_pictures(self, pictures):
        self.requests.append(len(pictures))
        return np.stack([np.full(1280, p[0].mean(), np.float32) for p in pictures])


class Thumbnails:
    def __init__(self) -> None:
        self.kept: dict[str, bytes] = {}

    async def put_thumbnails(self, thumbnails, ttl_s):
        self.kept.update(thumbnails)


def png(red: int) -> str:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (red, 0, 0)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def post(i: int, media: Media | None = None) -> Post:
    return Post(post_id=f"p{i}", platform="reddit", created_at=datetime(2025, 1, 1, tzinfo=timezone.utc),
                media=media or Media())


def features(encoder, store) -> Features:
    return Features(Settings(), models=None, infer=encoder, store=store, metrics=WorkerMetrics())


def test_no_media_no_request_no_decoding():
    encoder, store = CountingEncoder(), Thumbnails()
    visual, notes = asyncio.run(features(encoder, store)._pictures([post(i) for i in range(5)], list(range(5))))
    assert visual is None and notes == {} and encoder.requests == [] and store.kept == {}


def test_all_pictures_and_frames_of_a_batch_in_one_request_frames_pooled():
    encoder, store = CountingEncoder(), Thumbnails()
    posts = [post(0, Media(image=png(255))), post(1),
             post(2, Media(frames=[Frame(image=png(0)), Frame(image=png(255)), Frame(image=png(255))])),
             post(3, Media(image="not base64!")), post(4, Media(image=png(0)))]
    visual, notes = asyncio.run(features(encoder, store)._pictures(posts, list(range(5))))
    assert encoder.requests == [5]  # 2 pictures + 3 frames, one request
    assert np.isnan(visual[1]).all() and np.isnan(visual[3]).all()
    assert visual[0, 0] > 0.9 and visual[4, 0] < -0.9
    assert abs(visual[2, 0] - (-1 + 1 + 1) / 3) < 0.02  # the mean of the frames
    assert notes["media_problem"] == [None, None, None, "undecodable", None]
    assert notes["frame_attention"][2] == [0.3333] * 3 and notes["frame_attention"][0] is None
    assert set(store.kept) == {"p0", "p2", "p4"}


def test_a_large_batch_is_sent_in_chunks_of_the_encoder_batch():
    encoder, store = CountingEncoder(picture_batch=4), Thumbnails()
    posts = [post(i, Media(image=png(20 * i))) for i in range(10)]
    visual, _ = asyncio.run(features(encoder, store)._pictures(posts, list(range(10))))
    assert encoder.requests == [4, 4, 2]
    assert np.allclose(visual[:, 0], [(20 * i / 255 - 0.5) / 0.5 for i in range(10)], atol=0.01)  # in order


def test_only_scored_posts_are_decoded():
    encoder, store = CountingEncoder(), Thumbnails()
    posts = [post(0, Media(image=png(255))), post(1, Media(image=png(0)))]
    visual, _ = asyncio.run(features(encoder, store)._pictures(posts, [1]))
    assert encoder.requests == [1] and np.isnan(visual[0]).all() and set(store.kept) == {"p1"}


def test_a_decoder_surprise_costs_the_picture_not_the_batch(monkeypatch):
    import popscore.stream.stages.features as stage

    def explode(media, *args):
        if media.image == "boom":
            raise RuntimeError("a decoder bug")
        return real(media, *args)

    real = stage.load_pictures
    monkeypatch.setattr(stage, "load_pictures", explode)
    encoder, store = CountingEncoder(), Thumbnails()
    posts = [post(0, Media(image="boom")), post(1, Media(image=png(255)))]
    visual, notes = asyncio.run(features(encoder, store)._pictures(posts, [0, 1]))
    assert notes["media_problem"] == ["undecodable", None] and np.isnan(visual[0]).all() and visual[1, 0] > 0.9
