"""The embedded stack: broker, Redis, Triton and the Faust worker, started on free local ports.

``popscore up``, ``down`` and ``status`` and the test fixtures all go through ``EmbeddedStack``. Its
state (endpoints, process ids, log files) is written to ``<run_dir>/stack.json`` so that a detached
stack can be inspected and stopped from another shell.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from popscore.settings import Settings, settings_reference
from popscore.tools.stack import components as c
from popscore.tools.stack.process import ManagedProcess, StackError, ensure_port_free, free_port, group_alive, \
    kill_group, signal_group, stop_group, termination_deferred

STATE_FILE = "stack.json"
COMPONENTS = ("broker", "redis", "triton", "worker")
INFRASTRUCTURE = ("broker", "redis", "triton")


@dataclass
class StackState:
    run_dir: str
    endpoints: dict[str, int | str]
    processes: dict[str, dict[str, str | int]] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)

    def endpoints_obj(self) -> c.Endpoints:
        endpoints = dict(self.endpoints)
        endpoints["redis_cluster_nodes"] = tuple(map(tuple, endpoints.get("redis_cluster_nodes", ())))
        return c.Endpoints(**endpoints)  # type: ignore[arg-type]

    def save(self) -> None:
        path = Path(self.run_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, run_dir: Path) -> "StackState | None":
        path = run_dir / STATE_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


HEALTH: dict[str, Callable[[c.Endpoints], bool]] = {
    "broker": c.broker_healthy,
    "redis": c.redis_healthy,
    "triton": c.triton_healthy,
    "worker": c.worker_healthy,
}


def allocate_endpoints(host: str, fixed: dict[str, int] | None = None, redis_cluster_nodes: int = 0
                       ) -> c.Endpoints:
    """Free ports for every service; a port given explicitly must be free or we fail fast. With
    ``redis_cluster_nodes``, a client and a cluster bus port for each node of a Redis Cluster, the first node's
    client port being ``redis_port``."""
    fixed = fixed or {}
    ports: dict[str, int] = {}
    for name in ("broker_port", "redis_port", "triton_http_port", "triton_grpc_port", "triton_metrics_port",
                 "worker_web_port", "worker_metrics_port"):
        if fixed.get(name):
            ensure_port_free(host, fixed[name], name.removesuffix("_port"))
            ports[name] = fixed[name]
        else:
            ports[name] = free_port_besides(host, ports.values())
    taken = set(ports.values())
    nodes = []
    for node in range(redis_cluster_nodes):
        port = ports["redis_port"] if node == 0 else free_port_besides(host, taken)
        bus_port = free_port_besides(host, taken | {port})
        taken |= {port, bus_port}
        nodes.append((port, bus_port))
    return c.Endpoints(host=host, **ports, redis_cluster_nodes=tuple(nodes))


def free_port_besides(host: str, taken) -> int:
    """A free port that is none of ``taken`` (ports handed out but perhaps not yet bound by their process)."""
    taken = set(taken)
    port = free_port(host)
    while port in taken:
        port = free_port(host)
    return port


def worker_settings_env(settings: Settings, endpoints: c.Endpoints, run_dir: Path) -> dict[str, str]:
    """The worker gets the stack's Settings whole, pointed at the embedded services (and, with a Redis Cluster with
    replicas, ``redis.replica_acks`` 1 unless it was given)."""
    env = dict(os.environ)
    env.update({name: value for name, value, _ in settings_reference(settings)})
    env.update({
        "POPSCORE_KAFKA__BOOTSTRAP_SERVERS": endpoints.broker_bootstrap,
        "POPSCORE_REDIS__URL": endpoints.redis_url,
        "POPSCORE_REDIS__MODE": endpoints.redis_mode,
        "POPSCORE_TRITON__HTTP_URL": f"{endpoints.host}:{endpoints.triton_http_port}",
        "POPSCORE_TRITON__GRPC_URL": f"{endpoints.host}:{endpoints.triton_grpc_port}",
        "POPSCORE_WORKER__WEB_PORT": str(endpoints.worker_web_port),
        "POPSCORE_WORKER__METRICS_PORT": str(endpoints.worker_metrics_port),
        "POPSCORE_STACK__RUN_DIR": str(run_dir),
        "POPSCORE_STACK__MODEL_REPO": str(settings.stack.model_repo.resolve()),
        "POPSCORE_SERVING__PYTHON_BACKEND_MIRROR": str(run_dir / "triton_repository"),
        "PYTHONUNBUFFERED": "1",
    })
    if endpoints.redis_cluster_nodes and settings.stack.redis_cluster_replicas \
            and "replica_acks" not in settings.redis.model_fields_set:
        # The replicas are there for failover: a batch is acknowledged only once one of them has its writes.
        env["POPSCORE_REDIS__REPLICA_ACKS"] = "1"
    return env


class EmbeddedStack:
    kind = "embedded"

    def __init__(self, settings: Settings, fixed_ports: dict[str, int] | None = None,
                 log: Callable[[str], None] = lambda _: None) -> None:
        self.settings = settings
        self.run_dir = settings.stack.run_dir.resolve()
        self.fixed_ports = fixed_ports
        self.log = log
        self.state: StackState | None = None

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self, with_worker: bool = True) -> StackState:
        existing = StackState.load(self.run_dir)
        if existing and any(_alive(p) for p in existing.processes.values()):
            raise StackError(f"a stack is already running from {self.run_dir}; run `popscore down` first")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self._redis_cluster_nodes():  # the cluster is created anew: its nodes' ports are new
            shutil.rmtree(self.run_dir / "redis-cluster", ignore_errors=True)
        endpoints = allocate_endpoints(self.settings.stack.host, self.fixed_ports, self._redis_cluster_nodes())
        self.state = StackState(run_dir=str(self.run_dir), endpoints=asdict(endpoints))
        try:
            self._start_infrastructure(endpoints)
            if with_worker:
                self._start_workers(endpoints)
        except BaseException:
            self.stop()
            raise
        return self.state

    def _start_infrastructure(self, endpoints: c.Endpoints) -> None:
        from popscore.serving.model_repository import build_python_backend_repository

        models = build_python_backend_repository(self.settings.stack.model_repo.resolve(),
                                                 self.run_dir / "triton_repository")
        self.state.models = [m.name for m in models if m.versions]
        for name in INFRASTRUCTURE:
            self._spawn_infrastructure(name, endpoints)
        for name in INFRASTRUCTURE:
            if name == "redis" and endpoints.redis_cluster_nodes:
                self._form_redis_cluster(endpoints)
            self._wait_healthy(name, endpoints)
        self._create_topics(endpoints)

    def _redis_cluster_nodes(self) -> int:
        """The Redis Cluster's nodes with ``redis.mode`` cluster (masters and their replicas), else 0."""
        stack = self.settings.stack
        return stack.redis_cluster_masters * (1 + stack.redis_cluster_replicas) \
            if self.settings.redis.mode == "cluster" else 0

    def _spawn_redis_node(self, node: int, endpoints: c.Endpoints, log_name: str | None = None) -> None:
        name = redis_node_name(node)
        self._spawn(name, c.redis_cluster_node_argv(endpoints, node, self.run_dir / "redis-cluster" / name,
                                                    self.settings.redis.memory_budget_bytes()),
                    log_name=log_name or name)
        self.state.processes[name]["port"] = endpoints.redis_cluster_nodes[node][0]
        self.state.save()

    def _form_redis_cluster(self, endpoints: c.Endpoints) -> None:
        """Once every node answers, join them (``redis-cli --cluster create``); ``redis`` is healthy once every
        node says the cluster is ok."""
        for node, (port, _) in enumerate(endpoints.redis_cluster_nodes):
            self._wait_healthy(redis_node_name(node), endpoints,
                               lambda e, port=port: c.redis_node_healthy(e.host, port))
        c.create_redis_cluster(endpoints, self.settings.stack.redis_cluster_replicas)
        self.log(f"redis cluster created: {len(endpoints.redis_cluster_nodes)} nodes, "
                 f"{self.settings.stack.redis_cluster_replicas} replica(s) per master")

    def _spawn_infrastructure(self, name: str, endpoints: c.Endpoints, log_name: str | None = None) -> None:
        """Start broker, Redis or Triton on the stack's ports, with its data in the run directory (Redis's
        append-only file, Triton's model repository mirror), so that starting it again finds them."""
        if name == "broker":
            self._spawn(name, c.broker_argv(endpoints), log_name=log_name)
        elif name == "redis" and endpoints.redis_cluster_nodes:
            for node in range(len(endpoints.redis_cluster_nodes)):
                self._spawn_redis_node(node, endpoints)
        elif name == "redis":
            self._spawn(name, c.redis_argv(endpoints, self.run_dir / "redis",
                                           self.settings.redis.memory_budget_bytes()), log_name=log_name)
        elif name == "triton":
            backends = c.prepare_triton_backends(self.run_dir)
            self._spawn(name, c.triton_argv(endpoints, self.run_dir / "triton_repository", backends,
                                            self.state.models), env=c.triton_env(), log_name=log_name)
        else:
            raise StackError(f"{name!r} is not an infrastructure component ({', '.join(INFRASTRUCTURE)})")

    def _create_topics(self, endpoints: c.Endpoints) -> None:
        topics = self.settings.kafka.topics
        c.create_topics(endpoints, [topics.posts, topics.snapshots, topics.predictions, topics.deadletter],
                        topics.partitions)
        self.log(f"topics ready: {topics.posts}, {topics.snapshots}, {topics.predictions}, "
                 f"{topics.deadletter} ({topics.partitions} partitions)")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None,
               log_name: str | None = None) -> None:
        with termination_deferred():  # a SIGTERM now would leave the child unrecorded, hence unstopped
            process = ManagedProcess.spawn(name, argv, self.run_dir / "logs" / f"{log_name or name}.log", env=env,
                                           cwd=self.run_dir)
            self.state.processes[name] = {"pid": process.pid, "log": str(process.log_path)}
            self.state.save()

    def _start_workers(self, endpoints: c.Endpoints, adapt_env: Callable[[dict], dict] = lambda env: env) -> None:
        """``stack.workers`` worker processes in one consumer group (the partitions are shared out between
        them); the first serves the stack's web and metrics ports, the others free ones. Ready once every one
        has its partitions (a worker is not ready while the group rebalances)."""
        env = adapt_env(worker_settings_env(self.settings, endpoints, self.run_dir))
        self._spawn("worker", c.worker_argv(), env=env, log_name=f"worker-{int(time.time() * 1000)}")
        extra_ports = {}
        taken = {endpoints.worker_web_port, endpoints.worker_metrics_port}  # handed out, perhaps not bound yet
        for n in range(2, self.settings.stack.workers + 1):
            name = f"worker-{n}"
            web_port = free_port_besides(endpoints.host, taken)
            metrics_port = free_port_besides(endpoints.host, taken | {web_port})
            taken |= {web_port, metrics_port}
            self._spawn(name, c.worker_argv(), env={**env, "POPSCORE_WORKER__WEB_PORT": str(web_port),
                                                     "POPSCORE_WORKER__METRICS_PORT": str(metrics_port)},
                        log_name=f"{name}-{int(time.time() * 1000)}")
            self.state.processes[name].update(web_port=web_port, metrics_port=metrics_port)
            extra_ports[name] = web_port
        self.state.save()
        self._wait_healthy("worker", endpoints)
        for name, port in extra_ports.items():
            self._wait_healthy(name, endpoints, lambda _, port=port: c.worker_ready(endpoints.host, port))

    def worker_names(self) -> list[str]:
        """The running workers, the stack's own ("worker") last."""
        return _extra_workers(self.state) + (["worker"] if "worker" in self.state.processes else [])

    def _wait_healthy(self, name: str, endpoints: c.Endpoints,
                      healthy: Callable[[c.Endpoints], bool] | None = None) -> None:
        healthy = healthy or HEALTH[name]
        info = self.state.processes[name]
        process = ManagedProcess(name, int(info["pid"]), Path(str(info["log"])))
        deadline = time.monotonic() + self.settings.stack.start_timeout_s
        while time.monotonic() < deadline:
            if not process.alive():
                raise StackError(f"{name} exited during start-up; last lines of {process.log_path}:\n"
                                 f"{process.log_tail()}")
            if healthy(endpoints):
                self.log(f"{name} healthy (pid {process.pid})")
                return
            time.sleep(0.25)
        raise StackError(f"{name} not healthy after {self.settings.stack.start_timeout_s:.0f}s; "
                         f"last lines of {process.log_path}:\n{process.log_tail()}")

    def restart_worker(self, kill: bool = False) -> None:
        """Stop the worker gracefully (SIGTERM) or with SIGKILL, start a new one, wait until it is ready."""
        self.stop_worker(kill)
        self.start_worker()

    def stop_worker(self, kill: bool = False) -> None:
        for name in self.worker_names():
            pgid = int(self.state.processes[name]["pid"])
            if kill:
                kill_group(pgid, self.settings.stack.stop_timeout_s)
            else:
                stop_group(pgid, self.settings.stack.stop_timeout_s)
            if name != "worker":
                del self.state.processes[name]
        self.state.save()

    def start_worker(self) -> None:
        """Start the workers (``stack.workers``) on the running infrastructure; wait until they have their
        partitions."""
        self._start_workers(self.state.endpoints_obj())

    # --- faults (tests) --------------------------------------------------------------------------------

    def stop_component(self, name: str) -> None:
        """Stop one component (tests use it to take Triton away under a running worker)."""
        info = self.state.processes.get(name)
        if info:
            stop_group(int(info["pid"]), self.settings.stack.stop_timeout_s)

    def kill_component(self, name: str) -> None:
        """SIGKILL one component's process group, as a crash would end it: no shutdown, no final flush.
        Returns once every process of the group is gone."""
        kill_group(self._pgid(name), self.settings.stack.stop_timeout_s)

    def pause_component(self, name: str) -> None:
        """SIGSTOP one component's process group: its ports still accept connections but nothing answers,
        like a hung or overloaded server. ``resume_component`` continues it; ``stop`` ends it even paused."""
        signal_group(self._pgid(name), signal.SIGSTOP)

    def resume_component(self, name: str) -> None:
        """SIGCONT a paused component's process group."""
        signal_group(self._pgid(name), signal.SIGCONT)

    def start_component(self, name: str) -> None:
        """Start a stopped or killed broker, Redis or Triton again, on the same ports and with the same data,
        and wait until it is healthy (workers: ``start_worker``).

        Redis reloads its append-only file, so it comes back with every write it acknowledged. Triton
        loads the stack's models from the same model repository mirror (as the worker last refreshed it). The
        broker comes back empty: Tansu runs with in-memory storage, so its records and committed offsets
        are lost and only the topics are created again. Pausing (``pause_component``) is the supported
        fault for the broker.
        """
        endpoints = self.state.endpoints_obj()
        node = redis_node_index(name) if endpoints.redis_cluster_nodes else None
        if name not in INFRASTRUCTURE and node is None:
            raise StackError(f"start_component starts {', '.join(INFRASTRUCTURE)}, not {name!r}; "
                             f"workers start with start_worker()")
        info = self.state.processes.get(name)
        if info and group_alive(int(info["pid"])):
            raise StackError(f"{name} is still running (pid {info['pid']}); stop or kill it first")
        if node is not None:  # one node of the cluster, with its data; healthy once the cluster is whole again
            self._spawn_redis_node(node, endpoints, log_name=f"{name}-{int(time.time() * 1000)}")
            self._wait_healthy(name, endpoints, HEALTH["redis"])
            return
        self._spawn_infrastructure(name, endpoints, log_name=f"{name}-{int(time.time() * 1000)}")
        self._wait_healthy(name, endpoints)
        if name == "broker":
            self._create_topics(endpoints)

    def _pgid(self, name: str) -> int:
        info = self.state.processes.get(name) if self.state else None
        if info is None:
            raise StackError(f"no component {name!r} in this stack")
        return int(info["pid"])

    def stop(self) -> list[str]:
        """Stop every component; returns the names of those that were still running (none: nothing to stop).
        A stopping signal that arrives meanwhile is raised once all are stopped, not half-way."""
        with termination_deferred():
            return self._stop()

    def _stop(self) -> list[str]:
        state = self.state or StackState.load(self.run_dir)
        if state is None:
            return []
        running = []
        # workers first: they commit and leave
        order = _extra_workers(state) + [name for component in reversed(COMPONENTS) for name in
                                         (_extra_redis(state) if component == "redis" else []) + [component]]
        for name in order:
            info = state.processes.get(name)
            if info:
                if _alive(info):
                    running.append(name)
                stop_group(int(info["pid"]), self.settings.stack.stop_timeout_s)
        state.processes.clear()
        state.save()
        return running

    # --- inspection ------------------------------------------------------------------------------------

    def status(self) -> dict:
        state = self.state or StackState.load(self.run_dir)
        if state is None or not state.processes:  # never started, or stopped: its endpoints are stale
            return {"running": False, "run_dir": str(self.run_dir), "components": {}}
        endpoints = state.endpoints_obj()
        components = {}
        for name in list(COMPONENTS) + _extra_redis(state) + _extra_workers(state):
            info = state.processes.get(name)
            if info is None:
                continue
            alive = _alive(info)
            healthy = (HEALTH[name](endpoints) if name in HEALTH
                       else c.redis_node_healthy(endpoints.host, int(info["port"]), cluster=True) if "port" in info
                       else c.worker_ready(endpoints.host, int(info["web_port"])))
            components[name] = {"pid": info["pid"], "alive": alive, "healthy": alive and healthy, "log": info["log"],
                                **{port: info[port] for port in ("web_port", "metrics_port") if port in info}}
        return {"running": bool(components) and all(v["alive"] for v in components.values()),
                "run_dir": state.run_dir, "endpoints": endpoints.as_dict(), "models": state.models,
                "components": components}


def _extra_workers(state: StackState) -> list[str]:
    """The workers beyond the first (``stack.workers`` > 1): ``worker-2``, ``worker-3``, ..."""
    return sorted((name for name in state.processes if name.startswith("worker-")), key=lambda n: int(n[7:]))


def redis_node_name(node: int) -> str:
    """The process name of a Redis Cluster node (0-based): ``redis`` for the first (``redis_port``), then
    ``redis-2``, ``redis-3``, ..."""
    return "redis" if node == 0 else f"redis-{node + 1}"


def redis_node_index(name: str) -> int | None:
    if name == "redis":
        return 0
    if name.startswith("redis-") and name[6:].isdigit():
        return int(name[6:]) - 1
    return None


def _extra_redis(state: StackState) -> list[str]:
    """A Redis Cluster's nodes beyond the first: ``redis-2``, ``redis-3``, ..."""
    return sorted((name for name in state.processes if redis_node_index(name) not in (None, 0)),
                  key=lambda n: int(n[6:]))


def _alive(info: dict) -> bool:
    return group_alive(int(info["pid"]))
