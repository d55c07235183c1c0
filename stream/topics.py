"""The input topics' partition count must be ``kafka.topics.partitions``: a post's Redis shard is the partition
murmur2 gives its key with that many partitions (``redis_schema.shard_of``), so with any other real count the keys
of a partition a worker owns spread over shards other workers also write, and readers of per-shard boards and sets
miss the shards beyond the configured count. The worker checks it before it starts (and refuses to, naming the
topic and both counts); the tools that create topics check the ones that already existed.
"""

from __future__ import annotations

from collections.abc import Iterable


class PartitionCountMismatch(RuntimeError):
    """A topic exists with another partition count than ``kafka.topics.partitions``: no retry can fix that."""


def mismatches(found: dict[str, int], names: Iterable[str], configured: int) -> list[str]:
    """One sentence per topic of ``names`` whose count in ``found`` (topic -> partitions) is not ``configured``."""
    return [f"topic {name!r} has {found[name]} partitions but kafka.topics.partitions "
            f"(POPSCORE_KAFKA__TOPICS__PARTITIONS) is {configured}"
            for name in names if name in found and found[name] != configured]


async def partition_counts(admin) -> dict[str, int]:
    """Topic -> partition count of every topic the broker has, from a metadata request for all topics (asking for
    named topics could auto-create them with the broker's default count)."""
    return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics() if t["error_code"] == 0}


async def check_partition_counts(admin, names: list[str], configured: int) -> list[str]:
    """The topics of ``names`` that do not exist (to create, or wait for); raises ``PartitionCountMismatch`` if
    one that exists has another count than ``configured``."""
    found = await partition_counts(admin)
    wrong = mismatches(found, names, configured)
    if wrong:
        raise PartitionCountMismatch(
            "; ".join(wrong) + ". Redis keys are sharded by the configured count, one shard per partition: set "
            "POPSCORE_KAFKA__TOPICS__PARTITIONS to the topics' count (which re-shards every Redis key: migrate the "
            "state or start it empty) or recreate the topics with the configured count")
    return [name for name in names if name not in found]
