"""Input topics whose partition count is not ``kafka.topics.partitions`` (stream/topics.py): a worker refuses to
start on them, naming the topic and both counts, and is never ready meanwhile; the tools that create topics
refuse them too. The normal case (counts equal) is every other integration test's worker."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from popscore.stream.topics import PartitionCountMismatch
from popscore.stream.worker import STOPPED_MISCONFIGURED
from popscore.tools.replay import ensure_topics
from popscore.tools.stack import components as c
from popscore.tools.stack.process import StackError, free_port
from popscore.tools.stack.stack import worker_settings_env

pytestmark = pytest.mark.integration

FOUND = 3  # the topics' real count; the settings say 4 (the default)


async def create(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)
                                   for name in names])
    finally:
        await admin.close()


@pytest.fixture
def mismatched(stack_settings, endpoints):
    """Settings naming fresh posts and snapshots topics that exist with ``FOUND`` partitions."""
    settings = stack_settings.model_copy(deep=True)
    run = uuid.uuid4().hex[:8]
    settings.kafka.topics.posts, settings.kafka.topics.snapshots = f"posts-{run}", f"snapshots-{run}"
    settings.worker.app_id = f"partitions-{run}"  # not the session worker's consumer group
    assert settings.kafka.topics.partitions != FOUND
    asyncio.run(create(endpoints.broker_bootstrap, [settings.kafka.topics.posts, settings.kafka.topics.snapshots],
                       FOUND))
    return settings


def expected_message(settings) -> str:
    return (f"has {FOUND} partitions but kafka.topics.partitions (POPSCORE_KAFKA__TOPICS__PARTITIONS) is "
            f"{settings.kafka.topics.partitions}")


def test_a_worker_refuses_topics_with_another_partition_count(mismatched, endpoints, tmp_path):
    """The worker exits with the reason, and its /readyz never says ready before it does."""
    env = worker_settings_env(mismatched, endpoints, tmp_path)
    web_port = free_port(endpoints.host)
    env.update({"POPSCORE_WORKER__WEB_PORT": str(web_port),
                "POPSCORE_WORKER__METRICS_PORT": str(free_port(endpoints.host))})
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(c.worker_argv(), env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        ready_seen = False
        deadline = time.monotonic() + 120
        while proc.poll() is None and not ready_seen and time.monotonic() < deadline:
            ready_seen |= c.worker_ready(endpoints.host, web_port)
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text(errors="replace")
    assert proc.returncode == STOPPED_MISCONFIGURED, output[-3000:]
    assert f"refusing to start: topic '{mismatched.kafka.topics.posts}' {expected_message(mismatched)}" in output
    assert f"topic '{mismatched.kafka.topics.snapshots}' {expected_message(mismatched)}" in output
    assert not ready_seen


def test_the_tools_that_create_topics_refuse_one_with_another_count(mismatched, endpoints):
    """The embedded stack and the replay create missing topics only: an existing one must have the count."""
    topics = mismatched.kafka.topics
    with pytest.raises(StackError, match=re.escape(f"topic '{topics.posts}' {expected_message(mismatched)}")):
        c.create_topics(endpoints, [topics.posts], topics.partitions)
    message = re.escape(f"topic '{topics.snapshots}' {expected_message(mismatched)}")
    with pytest.raises(PartitionCountMismatch, match=message):
        asyncio.run(ensure_topics(endpoints.broker_bootstrap, [topics.snapshots], topics.partitions))
