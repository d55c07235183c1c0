"""Occlusion sensitivity (stream/heatmap.py) finds the region a score depends on."""

from __future__ import annotations

import asyncio
import io

import numpy as np
from PIL import Image

from popscore.media import preprocess_image
from popscore.stream.heatmap import occluded, render, sensitivity

GRID = 4


def corner_picture() -> np.ndarray:
    """A grey picture with a bright square in its top-left corner, preprocessed like any post's picture."""
    rgb = np.full((240, 240, 3), 90, np.uint8)
    rgb[:70, :70] = 250
    return preprocess_image(rgb)


async def corner_score(pictures: np.ndarray) -> np.ndarray:
    """A score that depends on the top-left corner alone: its brightness."""
    return pictures[:, :, :56, :56].mean(axis=(1, 2, 3))


def test_hiding_the_corner_that_drives_the_score_is_the_hottest_cell():
    heat = asyncio.run(sensitivity(corner_picture(), GRID, corner_score))
    assert heat.shape == (GRID, GRID)
    assert np.unravel_index(np.argmax(heat), heat.shape) == (0, 0)
    assert heat[0, 0] > 0 and np.allclose(np.delete(heat.reshape(-1), 0), 0.0)


def test_occluded_copies_hide_one_cell_each():
    picture = corner_picture()
    copies = occluded(picture, GRID)
    assert copies.shape == (GRID * GRID + 1, *picture.shape)
    assert np.array_equal(copies[0], picture)
    changed = [(copies[i] != picture).any(axis=0).mean() for i in range(1, GRID * GRID + 1)]
    assert np.allclose(changed, 1 / GRID ** 2)  # no pixel of the picture is already 0 (mean grey)
    assert (copies[1:, :, :56, :56] == 0).all(axis=(1, 2, 3)).sum() == 1  # only the first cell's copy hides it


def test_render_is_a_png_of_the_picture_red_where_it_matters():
    picture = corner_picture()
    heat = asyncio.run(sensitivity(picture, GRID, corner_score))
    image = Image.open(io.BytesIO(render(picture, heat)))
    assert image.format == "PNG" and image.size == (224, 224)
    pixels = np.asarray(image.convert("RGB")).astype(int)
    assert pixels[20, 20, 0] - pixels[20, 20, 2] > 100  # red over the corner
    assert abs(pixels[200, 200, 0] - pixels[200, 200, 2]) < 10  # untouched elsewhere
