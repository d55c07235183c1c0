"""The memes study's picture views (trainer/picture_views.py): the letterbox keeps the whole picture, each band
is the part of the picture it names, the mid-level statistics are those of the stages they claim, and the cache
computes a picture once. Pictures with known answers (coloured bands); a randomly initialised encoder, so no
weights are needed."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from popscore.media import preprocess_image  # noqa: E402
from popscore.trainer import image_encoder as ie  # noqa: E402
from popscore.trainer import picture_views as pv  # noqa: E402

RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)


def banded(w: int, h: int, colours=(RED, GREEN, BLUE)) -> "Image.Image":
    """A picture of len(colours) horizontal bands of (nearly) equal height, top to bottom."""
    rgb = np.zeros((h, w, 3), np.uint8)
    for (_, upper, _, lower), c in zip(pv.tile_boxes(w, h, len(colours)), colours):
        rgb[upper:lower] = c
    return Image.fromarray(rgb)


def to_uint8(chw: np.ndarray) -> np.ndarray:
    return np.clip(np.round((chw.transpose(1, 2, 0) * pv.STD + pv.MEAN) * 255), 0, 255).astype(int)


def test_letterbox_box_keeps_the_aspect_and_centres():
    assert pv.letterbox_box(400, 200) == (0, 56, 224, 112)  # wide: full width, grey above and below
    assert pv.letterbox_box(100, 400) == (84, 0, 56, 224)  # tall: full height, grey left and right
    assert pv.letterbox_box(256, 256) == (0, 0, 224, 224)
    with pytest.raises(ValueError):
        pv.letterbox_box(0, 10)


def test_letterbox_shows_the_whole_picture_where_the_centre_crop_cuts_it():
    img = banded(256, 768)  # a tall meme: three stacked panels
    boxed = pv.letterbox(img)
    assert boxed.shape == (224, 224, 3) and boxed.dtype == np.uint8
    left, top, w, h = pv.letterbox_box(256, 768)
    assert (boxed[:, :left - 1] == pv.PAD_VALUE).all() and (boxed[:, left + w + 1:] == pv.PAD_VALUE).all()
    column = boxed[:, left + w // 2].astype(int)
    # all three panels, in order, each about a third of the height
    for k, colour in enumerate((RED, GREEN, BLUE)):
        row = int((k + 0.5) * h / 3)
        assert np.abs(column[row] - colour).max() <= 3, (k, column[row])
    # the served centre crop of the same picture sees the middle panel only
    crop = to_uint8(preprocess_image(img))
    assert np.abs(crop[:, 112] - GREEN).max() <= 3


def test_tile_boxes_partition_the_picture_top_to_bottom():
    for w, h in ((256, 256), (256, 800), (455, 256), (10, 4)):
        boxes = pv.tile_boxes(w, h)
        assert len(boxes) == 3 and boxes[0][1] == 0 and boxes[-1][3] == h
        assert all(a[3] == b[1] for a, b in zip(boxes, boxes[1:]))  # contiguous, no overlap, no gap
        heights = [b[3] - b[1] for b in boxes]
        assert max(heights) - min(heights) <= 1 and all(b[0] == 0 and b[2] == w for b in boxes)
    with pytest.raises(ValueError):
        pv.tile_boxes(10, 2)


def test_each_band_view_holds_its_band_of_the_picture():
    img = banded(300, 300)
    views = pv.view_inputs(img)
    assert views.shape == (len(pv.VIEWS), 3, 224, 224) and views.dtype == np.float32
    np.testing.assert_array_equal(views[pv.VIEWS.index("crop")], preprocess_image(img))
    left, top, w, h = pv.letterbox_box(300, 100)  # a band of a 300 x 300 picture is 300 x 100
    for name, colour in zip(pv.TILES, (RED, GREEN, BLUE)):
        rgb = to_uint8(views[pv.VIEWS.index(name)])
        inside = rgb[top + 2:top + h - 2, left + 2:left + w - 2].reshape(-1, 3)
        assert np.abs(inside - colour).max() <= 3, name  # the band, and nothing of its neighbours
        assert (np.abs(rgb[:top - 1] - pv.PAD_VALUE) <= 1).all()  # grey where the band does not reach
    whole = to_uint8(views[pv.VIEWS.index("whole")])
    assert np.abs(whole[10, 112] - RED).max() <= 3 and np.abs(whole[213, 112] - BLUE).max() <= 3


def test_mid_level_encoder_taps_the_stages_it_names():
    assert pv.stage_ends() == [0, 2, 4, 7, 10, 14, 15]
    assert 2 * sum(pv.mid_channels()) == pv.MID_DIM
    torch.manual_seed(0)
    backbone = ie.EfficientNetLite0().eval()
    model = pv.MidLevelEncoder(backbone).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        out = model(x)
        assert out.shape == (2, pv.FEATURE_DIM)
        torch.testing.assert_close(out[:, :pv.POOLED_DIM], backbone(x))
        h = backbone.stem(x)
        stage_out = {}
        for i, block in enumerate(backbone.blocks):
            h = block(h)
            stage_out[i] = h
        taps = [stage_out[pv.stage_ends()[s]] for s in pv.MID_STAGES]
    means = torch.cat([t.mean(dim=(2, 3)) for t in taps], 1)
    stds = torch.cat([t.flatten(2).std(2, unbiased=False) for t in taps], 1)
    torch.testing.assert_close(out[:, pv.POOLED_DIM:pv.POOLED_DIM + means.shape[1]], means)
    torch.testing.assert_close(out[:, pv.POOLED_DIM + means.shape[1]:], stds)
    assert [t.shape[1] for t in taps] == [112, 192, 320]


def test_view_blocks_pick_and_pool_the_right_views():
    n = 2
    feats = np.zeros((n, len(pv.VIEWS), pv.FEATURE_DIM), np.float32)
    for k in range(len(pv.VIEWS)):
        feats[:, k, :pv.POOLED_DIM] = 10 * k + np.arange(pv.POOLED_DIM) % 3  # view k's pooled output
        feats[:, k, pv.POOLED_DIM:] = 100 + k  # view k's mid-level statistics
    blocks = pv.view_blocks(feats)
    idx = {v: k for k, v in enumerate(pv.VIEWS)}
    assert {k: v.shape for k, v in blocks.items()} == {"whole": (n, 1280), "tiles": (n, 2560), "mid": (n, 1248),
                                                       "views_mean": (n, 1280)}
    assert blocks["whole"][0, 0] == 10 * idx["whole"]
    tiles = [10 * idx[t] for t in pv.TILES]
    assert blocks["tiles"][0, 0] == pytest.approx(np.mean(tiles)) and blocks["tiles"][0, 1280] == max(tiles)
    assert (blocks["mid"] == 100 + idx["whole"]).all()  # the whole picture's, not the crop's
    assert blocks["views_mean"][0, 0] == pytest.approx(np.mean([10 * idx[v] for v in ("whole", *pv.TILES)]))


def test_view_features_are_cached_per_picture(tmp_path, monkeypatch):
    torch.manual_seed(0)
    loads = []

    def fake_load_model(threads=None):
        loads.append(1)
        return ie.EfficientNetLite0().eval()

    monkeypatch.setattr(ie, "load_model", fake_load_model)
    monkeypatch.setattr(pv, "views_version", lambda: "test")
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    banded(64, 96).save(a)
    banded(96, 64, (BLUE, RED, GREEN)).save(b)
    first = pv.view_features_of_files([a, b], cache_dir=tmp_path / "cache")
    assert first.shape == (2, len(pv.VIEWS), pv.FEATURE_DIM) and len(loads) == 1
    again = pv.view_features_of_files([b, a], cache_dir=tmp_path / "cache")
    assert len(loads) == 1  # everything from the cache: the encoder is not even loaded
    np.testing.assert_array_equal(again, first[::-1])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a picture")
    with pytest.raises(ie.MediaDecodeError, match="bad.jpg"):
        pv.view_features_of_files([bad], cache_dir=tmp_path / "cache")
