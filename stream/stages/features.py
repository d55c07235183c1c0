"""Features: posts, or the updated sequences of posts -> scoring jobs, one per model set the posts route to and
one for the fallback (which runs no model).

A post's inputs are its static features and title token states; stored with the post go its static features
(kept for the fallback's posts too, so a model set of their platform that comes later can compute their vectors)
and its content vector (the per-post half of MTAF-temporal). A sequence's inputs are its dynamic features and the
post's content vector as the merge returned it; a vector of another content model or version, or of a post that
never came, is recomputed from the stored inputs and written back.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from popscore import features as F
from popscore.contract import Post
from popscore.media import (DISALLOWED, UNDECODABLE, MediaProblem, MediaStore, PostPictures, build_media_store,
                            has_pictures, load_pictures)
from popscore.serving.model_sets import ModelSet
from popscore.serving.routing import Route
from popscore.settings import Settings
from popscore.stream.fallback import count_fallback
from popscore.stream.metrics import WorkerMetrics
from popscore.stream.redis_schema import content_tag, decode_content, encode_content
from popscore.stream.sequence_store import SequenceUpdate, SnapshotSequenceStore
from popscore.stream.served_models import ServedModels

if TYPE_CHECKING:
    from popscore.stream.stages.infer import Infer

log = logging.getLogger(__name__)


@dataclass
class ScoringJob:
    """One model's inputs for a batch of posts of one model set (or of the fallback, which runs no model), and
    what naming and recording its predictions needs."""

    kind: str  # "static" or "temporal" (popscore.features.MODEL_KINDS)
    model_set: ModelSet | None  # None: the persistence fallback (temporal only)
    post_ids: list[str]
    as_of: np.ndarray
    inputs: dict[str, np.ndarray]
    spec: F.FeatureSpec
    created: np.ndarray
    routes: list[Route]  # per row: the post's platform after aliasing, and for the fallback why
    categories: list[str | None] | None = None
    explanations: dict | None = None  # per row: outputs computed earlier, or what names an output
    without_post: np.ndarray | None = None  # per row: scored without the post event (None: none was)


def group_rows(routes: list[Route]) -> list[tuple[ModelSet | None, list[int] | None]]:
    """(model set or None for the fallback, rows routed to it; None: every row) in first-seen order. Traffic of
    one platform is one group and is not copied."""
    first = routes[0].model_set
    if all(route.model_set is first for route in routes):
        return [(first, None)]
    groups: dict[int, tuple[ModelSet | None, list[int]]] = {}
    for row, route in enumerate(routes):
        groups.setdefault(id(route.model_set), (route.model_set, []))[1].append(row)
    return list(groups.values())


def take(items, rows: list[int] | None):
    """``items`` (a list or an array) at ``rows``; all of them for None."""
    if rows is None:
        return items
    if isinstance(items, np.ndarray):
        return items[rows]
    return [items[row] for row in rows]


def set_content_tag(model_set: ModelSet) -> bytes:
    content = model_set.predictors["content"]
    return content_tag(content.name, content.version)


class Features:
    def __init__(self, settings: Settings, models: ServedModels, infer: Infer, store: SnapshotSequenceStore,
                 metrics: WorkerMetrics) -> None:
        self.weights_for = settings.score.weights_for
        self.media = settings.media
        self.media_store: MediaStore = build_media_store(settings.media)
        self.models = models
        self.infer = infer
        self.store = store
        self.metrics = metrics
        self.stream_clock = 0.0  # the latest observation scored: event time, so replays mature posts too

    async def static_jobs(self, posts: list[Post], pictures: tuple[np.ndarray | None, dict[str, list]] | None = None,
                          source: str = "post") -> tuple[list[ScoringJob], list[np.ndarray | None],
                                                         list[bytes | None], list[str | None]]:
        """(static jobs, each post's static features, each post's encoded content vector or None, each post's
        media problem or None). ``pictures``: the posts' pictures read already (``retry_pictures``), with notes
        for the explanation; ``source``: what the content vectors are counted as (``popscore_content_vectors``)."""
        routes = [self.models.router.route(p.platform) for p in posts]
        created = np.array([p.created_at.timestamp() for p in posts])
        scored = [row for row, route in enumerate(routes) if route.model_set is not None]
        if not scored:
            titles, (visual, media_notes) = None, (None, {})
        else:
            titles, (visual, media_notes) = await asyncio.gather(
                self.infer.embed_titles([posts[row].text.title for row in scored]),
                self._pictures(posts, scored) if pictures is None else asyncio.sleep(0, pictures))
        title_row = {row: i for i, row in enumerate(scored)}  # a scored post's row in ``titles``
        static_features: list[np.ndarray | None] = [None] * len(posts)
        content: list[bytes | None] = [None] * len(posts)
        jobs = []
        for model_set, rows in group_rows(routes):
            members = range(len(posts)) if rows is None else rows
            group_routes, group_posts, group_created = take(routes, rows), take(posts, rows), take(created, rows)
            platforms = [r.platform for r in group_routes]
            if model_set is None:
                count_fallback(self.metrics, "static", group_routes)
                fallback = F.build_static_features(self.models.fallback_spec, group_created, platforms, group_posts)
                for row, features in zip(members, fallback):
                    static_features[row] = features
                continue
            in_titles = [title_row[row] for row in members]
            text = {} if titles is None else {k: v[in_titles] for k, v in titles[0].items()}
            words = None if titles is None else [titles[1][i] for i in in_titles]
            spec, content_spec = model_set.spec("static"), model_set.spec("content")
            if visual is not None:
                text["visual_embedding"] = take(visual, rows)
            inputs = F.build_static_inputs(spec, group_created, platforms, group_posts, **text)
            content_inputs = inputs if content_spec == spec else \
                F.build_static_inputs(content_spec, group_created, platforms, group_posts, **text)
            encoded = encode_content(set_content_tag(model_set),
                                     *await self.infer.content_vectors(model_set, content_inputs))
            for i, row in enumerate(members):
                static_features[row], content[row] = content_inputs["static_features"][i], encoded[i]
            explanations = {"words": words} if words else {}
            explanations.update({name: take(notes, rows) for name, notes in media_notes.items()})
            image_set = self.models.image_sets.get(model_set.platform) if visual is not None else None
            seen = np.flatnonzero(inputs["modality_mask"][:, 2] > 0) if image_set is not None else ()
            if len(seen) == 0:
                jobs.append(ScoringJob("static", model_set, [p.post_id for p in group_posts], group_created, inputs,
                                       spec, group_created, group_routes, explanations=explanations or None))
                continue
            # Posts whose picture was used go to the platform's image static model, the others to its static model.
            unseen = np.flatnonzero(inputs["modality_mask"][:, 2] == 0)
            for part_set, part in ((image_set, seen), (model_set, unseen)):
                if len(part) == 0:
                    continue
                part = part.tolist()
                part_spec = part_set.spec("static")
                part_inputs = {k: v[part] for k, v in inputs.items()} if part_spec == spec else \
                    F.build_static_inputs(part_spec, group_created[part], take(platforms, part),
                                          take(group_posts, part), **{k: v[part] for k, v in text.items()})
                jobs.append(ScoringJob("static", part_set, [group_posts[i].post_id for i in part],
                                       group_created[part], part_inputs, part_spec, group_created[part],
                                       take(group_routes, part),
                                       explanations={k: take(v, part) for k, v in explanations.items()} or None))
        self.metrics.content_vectors.labels(source).inc(len(scored))
        return jobs, static_features, content, media_notes.get("media_problem") or [None] * len(posts)

    async def retry_pictures(self, posts: list[Post]) -> tuple[list[int], list[str | None],
                                                              tuple[np.ndarray | None, dict[str, list]]]:
        """Read again the pictures of posts that were unavailable (``stream/media_retry.py``): (the rows whose
        picture was read and can be scored with it, each post's media problem now, the pictures for
        ``static_jobs`` of those rows). A post whose platform no model set scores any more has problem
        ``disallowed`` here; a new failure is not counted in ``popscore_media_rejected_total`` again."""
        scored = [row for row, p in enumerate(posts) if self.models.router.route(p.platform).model_set is not None]
        visual, notes = await self._pictures(posts, scored, count_rejected=False) if scored else (None, {})
        problems: list[str | None] = list(notes.get("media_problem") or [None] * len(posts))
        for row in range(len(posts)):
            if row not in scored or visual is None:
                problems[row] = problems[row] or DISALLOWED
        read = [row for row in range(len(posts)) if problems[row] is None]
        picked = (None if visual is None else visual[read],
                  {name: [values[row] for row in read] for name, values in notes.items() if name != "media_problem"})
        return read, problems, picked

    def _load_pictures(self, media: list) -> list[PostPictures | MediaProblem]:
        limits = self.media
        out: list[PostPictures | MediaProblem] = []
        for item in media:
            try:
                out.append(load_pictures(item, self.media_store, limits.max_image_bytes, limits.max_image_pixels,
                                         limits.thumbnail_px))
            except MediaProblem as problem:
                out.append(problem)
            except Exception as exc:  # noqa: BLE001  a decoder's surprise costs the picture, never the post
                log.warning("a post's picture could not be used: %r", exc)
                out.append(MediaProblem(UNDECODABLE, f"decoding failed ({type(exc).__name__})"))
        return out

    async def _pictures(self, posts: list[Post], scored: list[int], count_rejected: bool = True
                        ) -> tuple[np.ndarray | None, dict[str, list]]:
        """(visual embeddings [len(posts), VISUAL_DIM], NaN where a post has no usable picture; per-row notes for
        the explanation: ``media_problem`` and ``frame_attention``). (None, {}) when no scored post carries media,
        so posts without pictures cost nothing here. Pictures are read and decoded off the event loop, and
        encoded in batches of the encoder's ``max_batch_size`` posts (a video's frames in its post's batch), one
        batch encoded while the next is decoded; a video's frame embeddings are pooled by their mean
        (uniform frame attention: no frame-attention weights have been learnt, there is no video data with
        popularity to learn them from)."""
        with_media = [row for row in scored if has_pictures(posts[row].media)]
        if not with_media or not self.infer.encodes_pictures:
            return None, {}
        # Posts are read and decoded a chunk at a time, each chunk's pictures sent to the encoder at once, so
        # Triton encodes one chunk while the next is decoded.
        loaded: list[PostPictures | MediaProblem] = []
        requests = []
        step = self.infer.picture_batch
        for lo in range(0, len(with_media), step):
            part = await asyncio.to_thread(self._load_pictures, [posts[row].media for row in with_media[lo:lo + step]])
            loaded += part
            pictures = [picture for item in part if isinstance(item, PostPictures) for picture in item.pictures]
            if pictures:
                requests.append(asyncio.ensure_future(self.infer.embed_pictures(pictures)))
        embedded = np.concatenate(await asyncio.gather(*requests)) if requests else None
        visual = np.full((len(posts), F.VISUAL_DIM), np.nan, np.float32)
        problems: list[str | None] = [None] * len(posts)
        frame_attention: list[list[float] | None] = [None] * len(posts)
        thumbnails: dict[str, bytes] = {}
        offset = 0
        for row, item in zip(with_media, loaded):
            if isinstance(item, MediaProblem):
                problems[row] = item.reason
                if count_rejected:
                    self.metrics.media_rejected.labels(item.reason).inc()
                continue
            n = len(item.pictures)
            visual[row] = embedded[offset:offset + n].mean(axis=0)
            offset += n
            if item.is_video:
                frame_attention[row] = [round(1.0 / n, 4)] * n
            thumbnails[posts[row].post_id] = item.thumbnail
            self.metrics.media_posts.labels("video" if item.is_video else "image").inc()
        if thumbnails:
            await self.store.put_thumbnails(thumbnails, self.media.thumbnail_ttl_s)
        notes: dict[str, list] = {}
        if any(p is not None for p in problems):
            notes["media_problem"] = problems
        if any(a is not None for a in frame_attention):
            notes["frame_attention"] = frame_attention
        return visual, notes

    async def temporal_jobs(self, updates: list[SequenceUpdate]) -> list[ScoringJob]:
        """The temporal jobs of these updates."""
        if not updates:
            return []
        routes = [self.models.router.route(u.post.platform) for u in updates]
        jobs = []
        for model_set, rows in group_rows(routes):
            group = await self._reaching_back(take(updates, rows), self.models.temporal_spec(routes[0] if rows is None
                                                                                            else routes[rows[0]]))
            job = self._fallback_job(group, take(routes, rows)) if model_set is None else \
                await self._temporal_job(model_set, group, take(routes, rows))
            self.stream_clock = max(self.stream_clock, float(job.as_of.max()))
            jobs.append(job)
        return jobs

    async def _reaching_back(self, updates: list[SequenceUpdate], spec: F.FeatureSpec) -> list[SequenceUpdate]:
        """The updates, each with a sequence reaching back as far as ``spec``'s features read: a tail the merge
        returned for a shorter look-back (a model reading further back was promoted since) is replaced by the
        whole stored sequence."""
        lookback = F.lookback_s(spec)
        short = [i for i, update in enumerate(updates) if not update.reaches_back(lookback)]
        if not short:
            return updates
        self.metrics.sequences_reread.inc(len(short))
        whole = await self.store.sequences([updates[i].post_id for i in short])
        updates = list(updates)
        for i, sequence in zip(short, whole):
            updates[i] = replace(updates[i], sequence=sequence, n_earlier=0)
        return updates

    @staticmethod
    def _sequences(updates: list[SequenceUpdate]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray,
                                                           np.ndarray | None, np.ndarray]:
        """(sequences or their tails, created, as_of, without_post or None, observations before each tail) of the
        updates' posts. A snapshot may come before its post: then the first observation stands in for the upload
        time (the merge returns the whole sequence of such a post)."""
        seqs = [u.sequence for u in updates]
        n_earlier = np.array([u.n_earlier for u in updates], np.int64)
        created = np.array([u.post.created_at if u.post.created_at is not None else u.sequence[0, 0]
                            for u in updates])
        as_of = np.array([u.sequence[-1, 0] for u in updates])
        without_post = np.array([u.post.created_at is None for u in updates])
        return seqs, created, as_of, without_post if without_post.any() else None, n_earlier

    async def _temporal_job(self, model_set: ModelSet, updates: list[SequenceUpdate], routes: list[Route]
                            ) -> ScoringJob:
        spec = model_set.spec("temporal")
        seqs, created, as_of, without_post, n_earlier = self._sequences(updates)
        platforms = [route.platform for route in routes]
        vectors, weights = await self._cached_content(model_set, updates, created, platforms)
        inputs = F.build_temporal_inputs(spec, seqs, created, platforms, self.weights_for, as_of, vectors, n_earlier)
        return ScoringJob("temporal", model_set, [u.post_id for u in updates], as_of, inputs, spec, created, routes,
                          [u.post.category for u in updates], {"modality_weights": weights}, without_post)

    def _fallback_job(self, updates: list[SequenceUpdate], routes: list[Route]) -> ScoringJob:
        """Posts no model set scores: their dynamic features (the persistence baseline's input and the rising
        board's growth), under their platform's score weights."""
        spec = self.models.fallback_spec
        seqs, created, as_of, without_post, n_earlier = self._sequences(updates)
        weights = F.weight_matrix([route.platform for route in routes], self.weights_for, spec.counters)
        dynamic = F.build_sequence(spec, seqs, created, as_of, weights, n_earlier=n_earlier)["dynamic_features"]
        return ScoringJob("temporal", None, [u.post_id for u in updates], as_of, {"dynamic_features": dynamic}, spec,
                          created, routes, [u.post.category for u in updates], None, without_post)

    async def _cached_content(self, model_set: ModelSet, updates: list[SequenceUpdate], created: np.ndarray,
                              platforms: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The content vectors the merge returned; stale or missing ones (of another content model or version,
        or none) are recomputed and stored."""
        content = model_set.predictors["content"]
        spec = model_set.spec("content")
        dim = next(o.dims[0] for o in content.model.config.output if o.name == "content_vector")
        tag = set_content_tag(model_set)
        vectors, weights, ok = decode_content([u.post.content for u in updates], tag, dim, len(F.MODALITIES))
        stale = np.flatnonzero(~ok)
        if len(stale):
            self.metrics.content_vectors.labels("recomputed").inc(len(stale))
            post_ids = [updates[i].post_id for i in stale]
            stored = await self.store.content_inputs(post_ids)
            titled = [row for row, (_, title) in enumerate(stored) if title is not None]
            text = {}
            embedded = await self.infer.embed_titles([stored[row][1] for row in titled]) if titled else None
            if embedded is not None:  # rows without a stored title keep an all-zero mask, i.e. text masked
                tokens, mask = embedded[0]["text_tokens"], embedded[0]["text_token_mask"]
                text = {"text_tokens": np.zeros((len(stale), *tokens.shape[1:]), np.float32),
                        "text_token_mask": np.zeros((len(stale), mask.shape[1]), np.float32)}
                text["text_tokens"][titled], text["text_token_mask"][titled] = tokens, mask
            # A post that never came has no stored features: its first observation stands in for the upload.
            inputs = F.build_static_inputs(spec, created[stale], [platforms[i] for i in stale], **text)
            for row, (static, _) in enumerate(stored):
                if static is not None and len(static) == 4 * spec.static_dim:
                    inputs["static_features"][row] = np.frombuffer(static, dtype=np.float32)
            vectors[stale], weights[stale] = await self.infer.content_vectors(model_set, inputs)
            await self.store.put_content(post_ids, encode_content(tag, vectors[stale], weights[stale]))
        return vectors, weights
