"""popscore.media: what a post's media fields give the image encoder, and the reason when they give nothing."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from popscore.contract import Frame, Media, RejectedRecord, decode_record
from popscore.media import (DISALLOWED, MISSING, OVERSIZED, UNDECODABLE, LocalMediaStore, MediaProblem,
                            has_pictures, load_pictures)

LIMITS = dict(max_bytes=200_000, max_pixels=1_000_000, thumbnail_px=64)


def png(w: int = 40, h: int = 30, colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(out, format="PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture()
def root(tmp_path):
    (tmp_path / "ok.png").write_bytes(png())
    return tmp_path


def test_inline_image_is_preprocessed_for_the_encoder(root):
    got = load_pictures(Media(image=b64(png())), LocalMediaStore([root]), **LIMITS)
    assert len(got.pictures) == 1 and got.pictures[0].shape == (3, 224, 224) and not got.is_video
    # a red picture: the red channel is high after (x - 0.5) / 0.5, the others low
    assert got.pictures[0][0].mean() > 0.5 and got.pictures[0][1].mean() < -0.5
    assert max(Image.open(io.BytesIO(got.thumbnail)).size) <= 64


def test_reference_is_read_under_an_allow_listed_root(root):
    got = load_pictures(Media(image_uris=[f"file://{root}/ok.png"]), LocalMediaStore([root]), **LIMITS)
    assert got.pictures[0].shape == (3, 224, 224)


def test_frames_are_all_loaded_in_order(root):
    frames = [Frame(image=b64(png(colour=(0, 0, 250)))), Frame(uri=f"file://{root}/ok.png")]
    got = load_pictures(Media(frames=frames), LocalMediaStore([root]), **LIMITS)
    assert got.is_video and len(got.pictures) == 2
    assert got.pictures[0][2].mean() > 0.5 and got.pictures[1][0].mean() > 0.5


@pytest.mark.parametrize("media, reason", [
    (lambda root: Media(image=b64(b"not a picture at all")), UNDECODABLE),
    (lambda root: Media(image="%%% not base64 %%%"), UNDECODABLE),
    (lambda root: Media(image=b64(png()[:60])), UNDECODABLE),  # truncated
    (lambda root: Media(image=b64(png(2000, 1000))), OVERSIZED),  # 2 M pixels, the header says so
    (lambda root: Media(image=b64(b"\0" * 300_000)), OVERSIZED),  # bytes, before decoding
    (lambda root: Media(image_uris=[f"file://{root}/absent.png"]), MISSING),
    (lambda root: Media(image_uris=[f"file://{root}/../outside.png"]), DISALLOWED),
    (lambda root: Media(image_uris=["https://img.example/1.png"]), DISALLOWED),
    (lambda root: Media(frames=[Frame(uri=f"file://{root}/ok.png"), Frame(image=b64(b"junk"))]), UNDECODABLE),
])
def test_unusable_media_is_a_problem_with_its_reason(root, media, reason):
    (root.parent / "outside.png").write_bytes(png())
    with pytest.raises(MediaProblem) as problem:
        load_pictures(media(root), LocalMediaStore([root]), **LIMITS)
    assert problem.value.reason == reason


def test_symlink_out_of_the_root_is_disallowed(root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    outside.write_bytes(png())
    (root / "link.png").symlink_to(outside)
    with pytest.raises(MediaProblem) as problem:
        load_pictures(Media(image_uris=[f"file://{root}/link.png"]), LocalMediaStore([root]), **LIMITS)
    assert problem.value.reason == DISALLOWED


def test_has_pictures():
    assert not has_pictures(Media())
    assert not has_pictures(Media(video_uri="https://v.example/1.mp4"))
    assert has_pictures(Media(image="AAAA")) and has_pictures(Media(image_uris=["file:///x.png"]))


def test_contract_accepts_media_additively_and_bounds_frames():
    post = {"schema": "post.v1", "post_id": "p1", "platform": "reddit", "created_at": "2024-01-01T00:00:00Z"}
    ok = dict(post, media={"image": b64(png()), "frames": [{"image": "AAAA"}, {"uri": "file:///f/1.png"}]})
    decoded = decode_record(json.dumps(ok).encode(), accept=("post.v1",))
    assert decoded.media.image is not None and len(decoded.media.frames) == 2
    for bad in ({"frames": [{}]}, {"frames": [{"image": "AAAA", "uri": "file:///x.png"}]},
                {"frames": [{"image": "AAAA"}] * 33}):
        with pytest.raises(RejectedRecord):
            decode_record(json.dumps(dict(post, media=bad)).encode(), accept=("post.v1",))


def test_the_trainer_preprocesses_with_the_same_function():
    pytest.importorskip("torch")
    from popscore.media import preprocess_image
    from popscore.trainer.image_encoder import preprocess_image as trainer_preprocess

    assert trainer_preprocess is preprocess_image
    image = (np.arange(60 * 50 * 3) % 251).astype(np.uint8).reshape(60, 50, 3)
    assert preprocess_image(image).shape == (3, 224, 224)
