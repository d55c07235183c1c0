"""Faults injected into a running stack; after recovery every snapshot is stored exactly once, every post's latest
observation has a prediction (on the topic, in Redis, on the leaderboard), and readiness told the truth meanwhile.

The worker is killed with SIGKILL at named points of its path (stream/failpoints.py); Redis is killed and
restarted (its AOF keeps what it acknowledged) or paused; Triton is frozen and killed; the broker is paused.
Each test prints its figures (posts, snapshots, seconds from the end of the fault to nothing missing).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from popscore.stream.redis_schema import PREDICTED_TO, RedisKeys
from popscore.tools.stack.process import group_alive
from tests.integration.outcomes import (Traffic, check_nothing_lost, ensure_known_state, metric, redis_of,
                                        send_posts,
                                        send_snapshots)

pytestmark = pytest.mark.integration

OUTAGE_S = 60  # how long a paused service stays paused: the worker must survive an outage of a minute


@pytest.fixture(scope="module", autouse=True)
def fault_control(private_stack):
    if not hasattr(private_stack, "kill_component"):
        pytest.skip(f"{type(private_stack).__name__} cannot kill or pause single components")


@pytest.fixture(autouse=True)
def known_state(private_stack, fault_control):
    """Each test starts with every component up and the worker scoring with Triton, even after a test that
    failed before its own cleanup (a component left dead or paused, the circuits left open)."""
    ensure_known_state(private_stack)


def configure_private_stack(settings) -> None:
    """``Traffic`` gives each test a platform of its own (its leaderboard holds exactly the test's posts); these
    tests are about what a fault loses, so the Hacker News set scores those platforms, through the operator's
    stand-in setting, and the faults hit the model path (Triton, the local runtime)."""
    settings.serving.unknown_platform = "hackernews"


def readyz(stack) -> tuple[int, dict]:
    url = stack.state.endpoints_obj().as_dict()["worker_web"] + "/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return 0, {}


def wait_for(condition, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s}s: {what}")


def worker_pid(stack) -> int:
    return int(stack.state.processes["worker"]["pid"])


def run_until_killed(stack, failpoint: str, send) -> None:
    """Restart the worker armed with ``failpoint``, ``send`` traffic, wait for the SIGKILL, start a clean worker."""
    stack.settings.worker.failpoints = failpoint
    try:
        stack.restart_worker()
        pid = worker_pid(stack)
        send()
        wait_for(lambda: not group_alive(pid), 60, f"the worker to die at {failpoint}")
    finally:
        stack.settings.worker.failpoints = ""
        if group_alive(worker_pid(stack)):
            stack.stop_worker()  # not killed: leave no armed worker to the next test
        stack.start_worker()


@pytest.mark.parametrize("failpoint, envelopes", [
    ("after_merge=2", False),      # mid-merge: some steps of the batch stored, none scored
    ("before_publish=1", True),    # merged and scored, nothing produced
    ("after_delivery=1", False),   # predictions in Kafka, leaderboards and marks not written
])
def test_a_worker_killed_mid_batch_loses_nothing(private_stack, failpoint, envelopes):
    traffic = Traffic(f"kill{failpoint.split('_')[1][:5]}{int(envelopes)}", n_posts=30)
    send_posts(private_stack, traffic)
    first, second = traffic.rounds(2)
    run_until_killed(private_stack, failpoint, lambda: send_snapshots(private_stack, first, envelopes))
    send_snapshots(private_stack, second, envelopes)
    figures = check_nothing_lost(private_stack, traffic)
    print(f"kill -9 at {failpoint}: {figures}")


def test_a_worker_killed_while_snapshots_wait_for_their_post_scores_them_after_restart(private_stack):
    traffic = Traffic("killawait", n_posts=15)
    run_until_killed(private_stack, "awaiting_post=1", lambda: send_snapshots(private_stack, traffic.snapshots))
    send_posts(private_stack, traffic)  # the new worker finds them waiting in Redis
    figures = check_nothing_lost(private_stack, traffic)
    print(f"kill -9 while awaiting the post: {figures}")


def test_snapshots_whose_post_never_comes_are_scored_after_a_restart(private_stack):
    traffic = Traffic("nopost", n_posts=5)
    run_until_killed(private_stack, "awaiting_post=1", lambda: send_snapshots(private_stack, traffic.snapshots))
    client = redis_of(private_stack)
    # without their post the platform is unknown: check the topic and the marks, not the platform's board
    keys = RedisKeys.of(private_stack.settings)
    latest = {}
    for post_id, at, _ in traffic.snapshots:
        latest[post_id] = max(at, latest.get(post_id, 0))
    waited = wait_for(lambda: all(client.hget(keys.post(p), PREDICTED_TO) == str(t).encode()
                                  for p, t in latest.items()), 60, "post-less posts scored after the grace period")
    # scored, then taken off the awaiting set (in that order: wait for it rather than race it)
    wait_for(lambda: not any(client.zscore(keys.awaiting(keys.shard(p)), p) for p in latest), 30,
             "the scored posts taken off the awaiting set")
    assert metric(private_stack, "popscore_predictions_without_post_total") >= len(latest)
    print(f"post never came, worker killed: scored {len(latest)} posts {waited:.1f}s after restart")


def test_redis_killed_and_restarted_loses_nothing(private_stack):
    traffic = Traffic("rediskill", n_posts=30)
    send_posts(private_stack, traffic)
    first, second = traffic.rounds(2)
    send_snapshots(private_stack, first, envelopes=True)
    private_stack.kill_component("redis")
    try:
        send_snapshots(private_stack, second, envelopes=True)
        wait_for(lambda: "redis" in readyz(private_stack)[1].get("failing", {}), 30,
                 "readiness to report Redis failing")
    finally:
        private_stack.start_component("redis")
    figures = check_nothing_lost(private_stack, traffic)
    assert wait_for(lambda: readyz(private_stack)[0] == 200, 30, "readiness back") >= 0
    print(f"Redis kill -9 and restart: {figures}")


@pytest.mark.parametrize("component, check", [("redis", "redis"), ("broker", "broker")])
def test_a_paused_service_makes_the_worker_unready_and_it_catches_up(private_stack, component, check):
    traffic = Traffic(f"pause{component}", n_posts=30)
    send_posts(private_stack, traffic)
    first, second = traffic.rounds(2)
    send_snapshots(private_stack, first)
    private_stack.pause_component(component)
    try:
        if component == "redis":
            send_snapshots(private_stack, second)  # consumed, cannot be stored: retried until Redis answers
        wait_for(lambda: check in readyz(private_stack)[1].get("failing", {}), 30,
                 f"readiness to report {check} failing")
        time.sleep(OUTAGE_S)
    finally:
        private_stack.resume_component(component)
    if component == "broker":
        send_snapshots(private_stack, second)
    figures = check_nothing_lost(private_stack, traffic)
    wait_for(lambda: readyz(private_stack)[0] == 200, 60, "readiness back")
    assert group_alive(worker_pid(private_stack))
    print(f"{component} paused: {figures}")


def test_an_outage_past_its_budget_stops_the_worker_without_committing(private_stack):
    traffic = Traffic("budget", n_posts=20)
    send_posts(private_stack, traffic)
    private_stack.settings.worker.outage_budget_s = 3.0
    try:
        private_stack.restart_worker()
    finally:
        private_stack.settings.worker.outage_budget_s = 120.0
    pid, log = worker_pid(private_stack), private_stack.state.processes["worker"]["log"]
    private_stack.pause_component("redis")
    try:
        send_snapshots(private_stack, traffic.snapshots)
        stopped = wait_for(lambda: not group_alive(pid), 60, "the worker to stop after its outage budget")
    finally:
        private_stack.resume_component("redis")
    with open(log) as lines:
        assert "popscore worker stopped: snapshots: " in lines.read()
    private_stack.start_worker()
    figures = check_nothing_lost(private_stack, traffic)
    print(f"outage past a 3 s budget: the worker stopped {stopped:.1f}s into it; after a restart {figures}")


def test_a_frozen_then_dead_triton_falls_back_quickly(private_stack):
    traffic = Traffic("tritonfreeze", n_posts=30)
    send_posts(private_stack, traffic)
    first, second = traffic.rounds(2)
    private_stack.pause_component("triton")
    try:
        send_snapshots(private_stack, first)
        frozen = check_nothing_lost(private_stack, _part(traffic, first), timeout_s=30)
    finally:
        private_stack.resume_component("triton")
    assert readyz(private_stack)[1]["models"]["popscore_hackernews_temporal"]["local"] > 0
    private_stack.kill_component("triton")
    try:
        send_snapshots(private_stack, second)
        figures = check_nothing_lost(private_stack, traffic)
    finally:
        private_stack.start_component("triton")  # the module's stack serves from Triton again
    print(f"Triton frozen: {frozen}; Triton killed: {figures}")


def _part(traffic: Traffic, snapshots) -> Traffic:
    """``traffic`` restricted to some of its snapshots (the posts that have any)."""
    part = Traffic.__new__(Traffic)
    part.prefix, part.n_posts, part.n_snapshots = traffic.prefix, traffic.n_posts, traffic.n_snapshots
    ids = {p for p, _, _ in snapshots}
    part.posts = [(k, v) for k, v in traffic.posts if k.decode() in ids]
    part.snapshots = list(snapshots)
    return part
