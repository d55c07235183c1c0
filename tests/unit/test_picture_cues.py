"""The low-level picture cues of the memes study (trainer/picture_cues.py) on pictures whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from popscore.trainer import picture_cues as pc


def solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def cue(rgb: np.ndarray, name: str) -> float:
    return float(pc.picture_cues(rgb)[pc.CUE_NAMES.index(name)])


def test_colourfulness_is_zero_for_grey_and_grows_with_saturated_colour():
    greys = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[:, None], 64, 1)
    grey_ramp = np.stack([greys] * 3, -1)
    assert pc.colourfulness(grey_ramp) == pytest.approx(0.0, abs=1e-9)
    red_blue = solid(64, 64, (255, 0, 0))
    red_blue[:, 32:] = (0, 0, 255)
    pastel = solid(64, 64, (200, 170, 170))
    pastel[:, 32:] = (170, 170, 200)
    assert pc.colourfulness(red_blue) > 3 * pc.colourfulness(pastel) > 0


def test_shape_and_stored_size():
    wide = solid(50, 100, (10, 20, 30))
    assert cue(wide, "aspect_ratio") == 2.0
    assert (cue(wide, "stored_width"), cue(wide, "stored_height")) == (100.0, 50.0)
    assert cue(solid(300, 256, (0, 0, 0)), "aspect_ratio") == pytest.approx(256 / 300)


def test_brightness_contrast_and_caption_panel_shares():
    top_white = solid(100, 80, (255, 255, 255))
    top_white[60:] = (0, 0, 0)  # 60 % white caption panel, 40 % black
    assert cue(top_white, "near_white_share") == pytest.approx(0.6)
    assert cue(top_white, "near_black_share") == pytest.approx(0.4)
    assert cue(top_white, "brightness") == pytest.approx(0.6)
    assert cue(top_white, "contrast") == pytest.approx(np.sqrt(0.6 * 0.4))  # std of a 0/1 mix
    yellow = solid(10, 10, (255, 255, 0))  # bright but saturated: not a white panel
    assert cue(yellow, "near_white_share") == 0.0 and cue(yellow, "saturation") == 1.0


def test_edge_density_separates_flat_from_busy():
    assert pc.edge_density(pc.luma(solid(40, 40, (120, 120, 120)))) == 0.0
    stripes = np.zeros((40, 40, 3), np.uint8)
    stripes[:, ::2] = 255  # every column flips from black to white: all edges
    assert pc.edge_density(pc.luma(stripes)) == 1.0


def test_horizontal_panels_counts_stacked_pictures_between_flat_strips():
    one = noise(120, 90)
    assert pc.horizontal_panels(pc.luma(one)) == 1
    comic = solid(130, 90, (255, 255, 255))
    comic[5:60], comic[70:125] = noise(55, 90, 1), noise(55, 90, 2)  # two panels on a white page
    assert pc.horizontal_panels(pc.luma(comic)) == 2
    assert pc.horizontal_panels(pc.luma(solid(50, 50, (255, 255, 255)))) == 0
    sliver = solid(100, 90, (255, 255, 255))
    sliver[40:43] = noise(3, 90)  # a 3-row line is not a panel
    assert pc.horizontal_panels(pc.luma(sliver)) == 0


def test_picture_cues_rejects_a_grey_array_and_caches_per_file(tmp_path):
    from PIL import Image

    with pytest.raises(ValueError):
        pc.picture_cues(np.zeros((10, 10), np.uint8))
    path = tmp_path / "p.png"
    Image.fromarray(noise(30, 60)).save(path)
    first = pc.cues_of_files([path], cache_dir=tmp_path / "cache")
    assert first.shape == (1, len(pc.CUE_NAMES)) and first[0, 0] == 2.0
    assert list((tmp_path / "cache" / "picture-cues" / pc.CUES_VERSION).glob("*.npy"))
    np.testing.assert_allclose(pc.cues_of_files([path], cache_dir=tmp_path / "cache"), first)
