"""The regions of a post's picture that drive its predicted popularity: occlusion sensitivity through the served
models (the image encoder, then the static model that scored the post).

Why occlusion and not Grad-CAM (what *Pay Attention to Virality* draws): Grad-CAM needs the gradient of the score
with respect to the encoder's last feature maps, and the served ONNX files have no backward pass (nor do Triton's
ONNX Runtime or Python backends compute one); the feature maps are not even an output of the served encoder.
Occlusion needs only forward passes of the models that actually scored the post, so the map explains the served
prediction itself: each cell of a ``grid`` x ``grid`` grid is filled with the encoder's mean grey (0 after
normalisation) in turn, all ``grid² + 1`` pictures are encoded and scored in one batch each, and a cell's value is
how much the predicted log score drops when it is hidden (positive: the region raises the prediction).

The picture is the thumbnail kept in Redis (``thumb:<post_id>``), preprocessed like any picture: the map is of the
224 x 224 centre crop the encoder sees, drawn over that crop. A video's frames have no map; their weights are the
prediction's ``explanation.frame_attention``.
"""

from __future__ import annotations

import io
from typing import Awaitable, Callable

import numpy as np

from popscore import features as F
from popscore.media import MEAN, STD, decode_image, preprocess_image


class NoHeatmap(LookupError):
    """The post has no kept picture, or no model that could score it now."""


def occluded(picture: np.ndarray, grid: int) -> np.ndarray:
    """[grid² + 1, 3, H, W]: the picture, then one copy per cell (row-major) with that cell set to 0."""
    _, h, w = picture.shape
    out = np.repeat(picture[None], grid * grid + 1, axis=0)
    ys, xs = np.linspace(0, h, grid + 1).astype(int), np.linspace(0, w, grid + 1).astype(int)
    for cell in range(grid * grid):
        r, c = divmod(cell, grid)
        out[cell + 1, :, ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = 0.0
    return out


async def sensitivity(picture: np.ndarray, grid: int,
                      score: Callable[[np.ndarray], Awaitable[np.ndarray]]) -> np.ndarray:
    """[grid, grid]: the drop of ``score`` (pictures [N, 3, H, W] -> [N] log scores) when each cell is hidden."""
    scores = np.asarray(await score(occluded(picture, grid)), dtype=np.float64).reshape(-1)
    return (scores[0] - scores[1:]).reshape(grid, grid)


def render(picture: np.ndarray, heat: np.ndarray) -> bytes:
    """A PNG of the preprocessed picture with the heat drawn over it: red where hiding a region lowers the
    prediction, blue where it raises it, opacity by the size of the change."""
    from PIL import Image

    rgb = np.clip((picture.transpose(1, 2, 0) * STD + MEAN) * 255.0, 0, 255)
    h, w, _ = rgb.shape
    scale = float(np.abs(heat).max()) or 1.0
    cells = np.asarray(Image.fromarray((heat / scale * 127.5 + 127.5).astype(np.uint8)).resize((w, h),
                                                                                              Image.NEAREST))
    signed = cells.astype(np.float32) / 127.5 - 1.0
    colour = np.where(signed[..., None] > 0, np.array([255.0, 0, 0]), np.array([0, 0, 255.0]))
    alpha = 0.6 * np.abs(signed)[..., None]
    out = io.BytesIO()
    Image.fromarray((rgb * (1 - alpha) + colour * alpha).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


async def post_heatmap(worker, post_id: str) -> tuple[bytes, np.ndarray]:
    """(PNG, [grid, grid] sensitivity) of a scored image post, through the models serving its platform now."""
    from popscore.stream.redis_schema import PostMeta

    thumbnail = await worker.store.get_thumbnail(post_id)
    if thumbnail is None:
        raise NoHeatmap(f"no picture of post {post_id!r} is kept (none was used, or it expired)")
    meta = PostMeta.from_hash(await worker.store.get_post(post_id))
    route = worker.models.router.route(meta.platform or "")
    if route.model_set is None or worker.models.image_encoder is None:
        raise NoHeatmap(f"no model scores post {post_id!r}'s pictures now")
    model_set = worker.models.image_sets.get(route.platform, route.model_set)
    predictor, spec = model_set.predictors["static"], model_set.spec("static")
    ((static, title),) = await worker.store.content_inputs([post_id])
    picture = preprocess_image(decode_image(thumbnail, worker.settings.media.max_image_pixels))
    embedded = await worker.infer.embed_titles([title]) if title else None

    async def score(pictures: np.ndarray) -> np.ndarray:
        n = len(pictures)
        visual = await worker.infer.embed_pictures(list(pictures))
        text = {} if embedded is None else {k: np.repeat(v, n, axis=0) for k, v in embedded[0].items()}
        inputs = F.build_static_inputs(spec, np.full(n, meta.created_at or 0.0), [route.platform] * n,
                                       visual_embedding=visual, **text)
        if static is not None and len(static) == 4 * spec.static_dim:
            inputs["static_features"][:] = np.frombuffer(static, dtype=np.float32)
        results = await predictor.infer({t.name: inputs[t.name] for t in predictor.model.config.input})
        return np.concatenate([r.outputs["log_score"] for r in results]).reshape(-1)

    heat = await sensitivity(picture, worker.settings.media.heatmap_grid, score)
    return render(picture, heat), heat
