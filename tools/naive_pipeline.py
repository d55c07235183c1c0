"""The naive pipeline the benchmark compares against: what a first version of popscore would do.

Per record: validate, one Redis round trip per operation (read the post, append a JSON string to a list,
read the list back), one Triton request per snapshot (plus one per post for its content vector, kept in
the post hash), one awaited produce per prediction. Same contract, same features, same models; only the
batching is missing. It is a baseline, not a product
path, and lives outside ``stream/`` for that reason.
"""

from __future__ import annotations

import json
import time

import numpy as np
import tritonclient.grpc.aio as grpcaio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from tritonclient.grpc import InferInput

from popscore import features as F
from popscore.contract import decode_record
from popscore.settings import COUNTER_NAMES, Settings
from popscore.stream.predictions import encode, prediction_records
from popscore.stream.redis_client import connect


def naive_sequence(items: list[bytes]) -> np.ndarray:
    rows = []
    for item in items:
        entry = json.loads(item)
        rows.append([entry["t"], *[np.nan if entry.get(c) is None else entry[c] for c in COUNTER_NAMES]])
    rows.sort(key=lambda row: row[0])
    return np.array(rows, dtype=np.float64).reshape(-1, 1 + len(COUNTER_NAMES))


async def _infer(triton, kind: str, platform: str, spec: F.FeatureSpec, features: dict[str, np.ndarray]
                 ) -> dict[str, np.ndarray]:
    inputs, outputs = F.model_tensors(kind, spec)
    tensors = []
    for tensor_spec in inputs:
        array = np.ascontiguousarray(features[tensor_spec.name], dtype=np.float32)
        tensor = InferInput(tensor_spec.name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = await triton.infer(F.model_name(kind, platform), tensors)
    return {t.name: result.as_numpy(t.name) for t in outputs}


async def run_naive(settings: Settings, bootstrap: str, redis_url: str, grpc_url: str, in_topic: str,
                    out_topic: str, expected: int, timeout_s: float, model_platform: str = "hackernews"
                    ) -> tuple[int, float]:
    """Consume ``expected`` snapshots one at a time, scored by ``model_platform``'s model set; returns
    (processed, seconds)."""
    spec = F.DEFAULT_SPEC
    client = connect(settings.redis.model_copy(update={"url": redis_url}))
    triton = grpcaio.InferenceServerClient(grpc_url)
    consumer = AIOKafkaConsumer(in_topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id="popscore-naive", enable_auto_commit=True)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await consumer.start()
    await producer.start()
    processed, started = 0, None
    deadline = time.monotonic() + timeout_s
    try:
        while processed < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=1)
            for messages in batch.values():
                for message in messages:
                    started = started or time.monotonic()
                    snapshot = decode_record(message.value, accept=("snapshot.v1",))
                    key = f"naive:{snapshot.post_id}"
                    meta = await client.hgetall(f"naive-post:{snapshot.post_id}")
                    entry = {"t": snapshot.observed_at.timestamp(), **snapshot.counts.as_dict()}
                    await client.rpush(key, json.dumps(entry))
                    seq = naive_sequence(await client.lrange(key, 0, -1))
                    created = float(meta.get(b"created_at", seq[0, 0]))
                    platform = meta.get(b"platform", b"unknown").decode()
                    if b"content" not in meta:
                        static = F.build_static_inputs(spec, np.array([created]), [platform])
                        content = await _infer(triton, "content", model_platform, spec, static)
                        meta[b"content"] = np.concatenate(
                            [content["content_vector"], content["modality_weights"]], axis=1).tobytes()
                        await client.hset(f"naive-post:{snapshot.post_id}", "content", meta[b"content"])
                    cached = np.frombuffer(meta[b"content"], dtype=np.float32)[None, :]
                    vector, weights = cached[:, :-len(F.MODALITIES)], cached[:, -len(F.MODALITIES):]
                    features = F.build_temporal_inputs(spec, [seq], np.array([created]), [platform],
                                                       settings.score.weights_for, np.array([seq[-1, 0]]), vector)
                    outputs = {**await _infer(triton, "temporal", model_platform, spec, features),
                               "modality_weights": weights}
                    record = prediction_records([snapshot.post_id], "temporal", "naive", np.array([seq[-1, 0]]),
                                                int(spec.horizon_s), outputs, time.time(),
                                                model_name=F.model_name("temporal", model_platform),
                                                platforms=[platform], trained_for=model_platform)[0]
                    await producer.send_and_wait(out_topic, key=snapshot.post_id.encode(), value=encode(record))
                    processed += 1
    finally:
        await consumer.stop()
        await producer.stop()
        await triton.close()
        await client.aclose()
    return processed, (time.monotonic() - started) if started else 0.0


async def run_naive_images(settings: Settings, bootstrap: str, grpc_url: str, in_topic: str, out_topic: str,
                           expected: int, timeout_s: float, model_platform: str = "hackernews") -> tuple[int, float]:
    """The image posts' baseline: consume ``expected`` posts one at a time; per post its picture is decoded, sent
    to the image encoder in a request of its own, then the post to the static model in another, and its
    prediction produced and awaited. Returns (processed, seconds)."""
    from tritonclient.grpc import InferRequestedOutput

    from popscore.media import build_media_store, load_pictures

    spec, media = F.DEFAULT_SPEC, settings.media
    store = build_media_store(media)
    triton = grpcaio.InferenceServerClient(grpc_url)
    consumer = AIOKafkaConsumer(in_topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id="popscore-naive-images", enable_auto_commit=True,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await consumer.start()
    await producer.start()
    processed, started = 0, None
    deadline = time.monotonic() + timeout_s
    try:
        while processed < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=1)
            for messages in batch.values():
                for message in messages:
                    started = started or time.monotonic()
                    post = decode_record(message.value, accept=("post.v1",))
                    loaded = load_pictures(post.media, store, media.max_image_bytes, media.max_image_pixels,
                                           media.thumbnail_px)
                    embeddings = []
                    for picture in loaded.pictures:  # one request per picture
                        image = InferInput("image", [1, *picture.shape], "FP32")
                        image.set_data_from_numpy(picture[None].astype(np.float32))
                        result = await triton.infer("popscore_image_encoder", [image],
                                                    outputs=[InferRequestedOutput("image_embedding")])
                        embeddings.append(result.as_numpy("image_embedding"))
                    created = np.array([post.created_at.timestamp()])
                    features = F.build_static_inputs(spec, created, [post.platform], [post],
                                                     visual_embedding=np.mean(embeddings, axis=0))
                    outputs = await _infer(triton, "static", model_platform, spec, features)
                    record = prediction_records([post.post_id], "static", "naive", created, int(spec.horizon_s),
                                                outputs, time.time(), model_name=F.model_name("static", model_platform),
                                                platforms=[post.platform], trained_for=model_platform)[0]
                    await producer.send_and_wait(out_topic, key=post.post_id.encode(), value=encode(record))
                    processed += 1
    finally:
        await consumer.stop()
        await producer.stop()
        await triton.close()
    return processed, (time.monotonic() - started) if started else 0.0
