"""The upstream code stream/faust_ext/ overrides, calls or mirrors is still what it was written against.

A failure names the override to re-check (see the table in ``popscore.stream.faust_ext``). After re-checking it
against the new upstream code, record the new signature or hash here, and the new pin in pyproject.toml.
"""

import asyncio
import hashlib
import importlib
import importlib.metadata
import inspect
import re
import tomllib
import weakref
from pathlib import Path
from types import SimpleNamespace

import faust
import pytest
from aiokafka.consumer.consumer import AIOKafkaConsumer
from aiokafka.producer.producer import AIOKafkaProducer
from faust.transport import by_url
from mode.services import WaitResults

from popscore.stream.faust_ext import transport
from popscore.stream.faust_ext.app import App

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
PINNED = ("faust-streaming", "mode-streaming", "aiokafka")


def resolve(path: str):
    """``module:qualname`` -> the object."""
    module, qualname = path.split(":")
    obj = importlib.import_module(module)
    for name in qualname.split("."):
        obj = getattr(obj, name)
    return obj


def call_shape(function) -> str:
    """The signature without annotations: parameter names, kinds and defaults are what a caller relies on."""
    signature = inspect.signature(function)
    return str(signature.replace(
        parameters=[p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()],
        return_annotation=inspect.Signature.empty))


def source_hash(function) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


def test_installed_versions_are_the_exact_pins():
    stream_extra = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["stream"]
    pins = dict(re.fullmatch(r"([\w.-]+)(?:\[[\w,]+\])?==([\w.]+)", spec).groups()  # name[extras]==version
                for spec in stream_extra if "==" in spec)
    for package in PINNED:
        assert package in pins, f"{package} is not pinned exactly (==) in pyproject's stream extra"
        assert importlib.metadata.version(package) == pins[package], (
            f"{package} {importlib.metadata.version(package)} is installed but {pins[package]} is pinned: "
            "re-check every override in stream/faust_ext/ against it")


# (upstream function, its call shape, the override that overrides it (same shape) or calls it)
CALL_SHAPES = [
    ("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer", "(self, transport)",
     "popscore.stream.faust_ext.transport:ConsumerThread._create_worker_consumer"),
    ("faust.transport.drivers.aiokafka:Consumer._new_consumer_thread", "(self)",
     "popscore.stream.faust_ext.transport:Consumer._new_consumer_thread"),
    ("mode.services:Service.wait_first", "(self, *coros, timeout=None)",
     "popscore.stream.faust_ext.transport:Consumer.wait_first"),
    ("faust.transport.consumer:Consumer.stop_flow", "(self)",
     "popscore.stream.faust_ext.transport:Consumer.stop_flow"),
    ("faust.transport.consumer:ThreadDelegateConsumer._commit", "(self, offsets)",
     "popscore.stream.faust_ext.transport:Consumer._commit"),
    ("faust.app.base:App.on_init_dependencies", "(self)",
     "popscore.stream.faust_ext.app:App.on_init_dependencies"),
    # Called, not overridden.
    ("faust.transport.drivers.aiokafka:Producer._ensure_producer", "(self)", None),
    ("aiokafka.producer.producer:AIOKafkaProducer.partitions_for", "(self, topic)", None),
    ("aiokafka.producer.producer:AIOKafkaProducer.create_batch", "(self)", None),
    ("aiokafka.producer.producer:AIOKafkaProducer.send_batch", "(self, batch, topic, *, partition)", None),
    ("aiokafka.producer.message_accumulator:BatchBuilder.append",
     "(self, *, timestamp, key, value, headers=[])", None),
    ("aiokafka.partitioner:DefaultPartitioner.__call__", "(key, all_partitions, available)", None),
    ("faust.streams:Stream._enable_passive", "(self, channel, *, declare=False)", None),
]


@pytest.mark.parametrize(("upstream", "shape", "override"), CALL_SHAPES, ids=[u for u, *_ in CALL_SHAPES])
def test_upstream_call_shape(upstream, shape, override):
    assert call_shape(resolve(upstream)) == shape, (
        f"{upstream} changed its call shape: re-check stream/faust_ext/ where it is used")
    if override is not None:
        assert call_shape(resolve(override)) == shape, f"{override} no longer has the shape of {upstream}"


# (upstream function, sha256 of its source, the override that mirrors it or relies on its body)
MIRRORED = [
    ("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer",
     "c2701bfc3e6f6cad95c2be36d6a255a86e2c57d18d36cc1082b5fb5c482d99d7",
     "transport.ConsumerThread._create_worker_consumer (the consumer it returns is not started, with a fixed "
     "fetch wait)"),
    ("faust.transport.drivers.aiokafka:Consumer._new_consumer_thread",
     "0870ec53dea75083995e3565c0f0a25a1c63ecceaeb238e92e2585e3623af5a9",
     "transport.Consumer._new_consumer_thread (a copy with the thread class replaced)"),
    ("faust.transport.consumer:Consumer._drain_messages",
     "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417",
     "transport.Consumer.wait_first (the one call shape it handles inline)"),
    ("mode.services:Service.wait_first",
     "feade6a31f8a67897cf687c54c66f5f4535288050bbaac07249ce2063d36ae2e",
     "transport.Consumer.wait_first (its WaitResults)"),
    ("faust.transport.consumer:ThreadDelegateConsumer._commit",
     "a20eec84e4b2ed5072f6c6ab7707ac03d69e2255d67f115c31f8dc9cc246dc66",
     "transport.Consumer._commit (True: committed)"),
    ("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._commit",
     "932852ce7a23f658804273d0296de6affaa7d21c19311c279712c2fae91a3b03",
     "transport.Consumer._commit (True: committed)"),
    ("faust.transport.drivers.aiokafka:Producer.send",
     "0b5bd08f52e5e2a90ff6307dbfc3c97afb01cb2687835e8fe8486c5bcad02dc1",
     "transport.Producer.send_many (replaces a send per record)"),
    ("aiokafka.producer.producer:AIOKafkaProducer._partition",
     "e45fa9c539d431d1a8af1efb94604c35e9108132a28f6a1e5b03977a0c67beaa",
     "transport.Producer._partition_of (a keyed send's partition)"),
    ("faust.streams:Stream.take_events",
     "607d48aead118ba8ea868718a0df87de1c5fcecd10ec542c659b448796728e08",
     "micro_batches.take_batches (a variant of it)"),
    ("faust.streams:_tracks_buffer_agen",
     "bf38f607c6ff40f66f1f71ee8b38a05108aaed529f3a567643bd9c3c60867da9",
     "micro_batches.take_batches (its registration in Stream._active_agens)"),
    ("faust.streams:Stream.on_stop",
     "81b327b1578dff1c76da6f64a0ea3a2e9ce936b5896eb98502f61f175186fcdd",
     "micro_batches.take_batches (closed through Stream._active_agens)"),
    ("faust.app.base:App.on_init_dependencies",
     "7621a70a9b01f93f5d8ee7a909a2065402bd7c5458ffa7e338e51de5032624b2",
     "app.App.on_init_dependencies (removes the monitor it adds)"),
]


@pytest.mark.parametrize(("upstream", "sha256", "override"), MIRRORED, ids=[u for u, *_ in MIRRORED])
def test_mirrored_upstream_source_is_unchanged(upstream, sha256, override):
    assert source_hash(resolve(upstream)) == sha256, (
        f"{upstream} changed: re-check popscore.stream.faust_ext.{override}")


def test_the_worker_consumer_gets_the_apps_fetch_wait(tmp_path):
    """Through the ``popscore-kafka`` entry point and Faust's own ``_create_worker_consumer``."""
    assert by_url("popscore-kafka://localhost:9092") is transport.Transport

    async def created_consumer():
        app = faust.App("fetch-wait", broker="popscore-kafka://localhost:9092", datadir=str(tmp_path))
        app.fetch_max_wait_ms = 20
        return app.consumer._thread._create_worker_consumer(app.transport)

    assert asyncio.run(created_consumer())._fetch_max_wait_ms == 20


def test_aiokafka_builds_its_fetcher_from_the_private_fetch_wait():
    async def consumer():
        return AIOKafkaConsumer(fetch_max_wait_ms=123)

    assert asyncio.run(consumer())._fetch_max_wait_ms == 123, (
        "AIOKafkaConsumer no longer keeps fetch_max_wait_ms in _fetch_max_wait_ms: "
        "re-check transport.ConsumerThread._create_worker_consumer")
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start), (
        "AIOKafkaConsumer.start no longer builds its fetcher from _fetch_max_wait_ms: "
        "re-check transport.ConsumerThread._create_worker_consumer")


def test_only_stop_flow_suspends_flow():
    """The hand-off replaces waiting on ``suspend_flow``: whatever sets it must also interrupt the hand-off."""
    faust_root = Path(faust.__file__).parent
    setters = [(path.relative_to(faust_root), line.strip()) for path in sorted(faust_root.rglob("*.py"))
               for line in path.read_text().splitlines() if re.search(r"suspend_flow\.set\(", line)]
    assert setters == [(Path("transport/consumer.py"), "self.suspend_flow.set()")], setters
    assert "self.suspend_flow.set()" in inspect.getsource(resolve("faust.transport.consumer:Consumer.stop_flow"))


def test_wait_results_has_the_fields_wait_first_fills():
    assert WaitResults._fields == ("done", "results", "stopped")


def test_stream_internals_take_batches_uses(tmp_path):
    app = faust.App("stream-internals", store="memory://", datadir=str(tmp_path))
    stream = app.channel().stream()
    assert isinstance(stream._active_agens, weakref.WeakSet)
    assert isinstance(stream._processors, list)


def test_the_keyed_partition_is_the_one_aiokafkas_send_chooses(tmp_path):
    """``Producer.partitioner_for`` against aiokafka's own ``AIOKafkaProducer._partition``."""
    partitions = {0, 1, 2, 3, 4, 5}

    async def partitions_for(topic):
        return partitions

    async def ours_and_aiokafkas():
        app = faust.App("partitions", broker="popscore-kafka://localhost:9092", datadir=str(tmp_path))
        producer = app.producer
        assert isinstance(producer, transport.Producer)
        # What ``_partition`` and ``partitions_for`` read of an AIOKafkaProducer, with the partitioner Faust
        # hands to it.
        metadata = SimpleNamespace(partitions_for_topic=lambda topic: partitions,
                                   available_partitions_for_topic=lambda topic: partitions)
        producer._producer = SimpleNamespace(_metadata=metadata, _partitioner=producer.partitioner,
                                             partitions_for=partitions_for)
        partition_of = await producer.partitioner_for("topic")
        keys = [f"post-{i}".encode() for i in range(500)]
        return ([partition_of(key) for key in keys],
                [AIOKafkaProducer._partition(producer._producer, "topic", None, key, None, key, None)
                 for key in keys])

    ours, aiokafkas = asyncio.run(ours_and_aiokafkas())
    assert ours == aiokafkas
    assert len(set(ours)) == len(partitions)


def test_the_app_runs_without_faust_monitor(tmp_path):
    app = App("no-monitor", datadir=str(tmp_path))
    app.on_init_dependencies()
    assert app.monitor not in app.sensors
