"""A real Prometheus (Debian's `prometheus` binary) scraping the embedded stack's worker, evaluating the
alert rules and answering every dashboard query: the rules must evaluate without runtime errors (such as
many-to-many matching, which `promtool check rules` cannot see) and the core panels must show data."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

import pytest
import yaml

from tests.ops.promql import RULES
from tests.ops.test_dashboard import expressions, load

pytestmark = pytest.mark.integration

# Panels that must show data once the worker has consumed one valid and one broken snapshot.
MUST_HAVE_DATA = {
    'sum by (topic) (rate(popscore_records_consumed_total{instance=~"$instance"}[$__rate_interval]))',
    'sum by (topic, reason) (rate(popscore_dead_letters_total{instance=~"$instance"}[$__rate_interval]))',
    'count by (model, platform, model_version) (popscore_model_info{instance=~"$instance"} == 1)',
    'min by (platform) (popscore_model_set_servable{instance=~"$instance"})',
    'max by (topic, partition) (popscore_consumer_lag_records{instance=~"$instance", topic!~".*__assignor-__leader"})',
    'histogram_quantile(0.99, sum by (operation, le) (rate(popscore_redis_seconds_bucket{instance=~"$instance"}'
    '[$__rate_interval])))',
    "sum by (model) (nv_inference_pending_request_count)",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def prometheus(endpoints, tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not on PATH: install Debian's `prometheus` package (apt-get install -y prometheus)")
    target = urllib.parse.urlparse(endpoints.as_dict()["worker_metrics"]).netloc
    triton = urllib.parse.urlparse(endpoints.as_dict()["triton_metrics"]).netloc
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "popscore-worker", "static_configs": [{"targets": [target]}]},
                           {"job_name": "triton", "static_configs": [{"targets": [triton]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail(f"prometheus did not start:\n{(tmp_path / 'prometheus.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def query(base: str, expr: str) -> list:
    answer = get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def test_real_prometheus_evaluates_the_rules_and_answers_the_dashboard(prometheus, endpoints, stack_settings):
    from tests.integration.kafka_io import produce

    post_id = f"prom-{uuid.uuid4().hex[:8]}"
    valid = json.dumps({"schema": "snapshot.v1", "post_id": post_id, "observed_at": "2024-05-01T10:00:00Z",
                        "counts": {"likes": 3}}).encode()
    records = [(post_id.encode(), valid), (f"{post_id}-bad".encode(), b"{broken json")]

    # A rate needs two scrapes that differ: feed records while Prometheus scrapes, until the panels fill.
    def fill(expr: str) -> str:
        return (expr.replace("$__rate_interval", "20s").replace("$model", ".*").replace("$platform", ".*")
                .replace("$instance", ".*"))

    empty = set(MUST_HAVE_DATA)
    deadline = time.monotonic() + 60
    while empty and time.monotonic() < deadline:
        asyncio.run(produce(endpoints.broker_bootstrap, stack_settings.kafka.topics.snapshots, records))
        time.sleep(2)
        empty = {expr for expr in empty if not query(prometheus, fill(expr))}
    assert not empty, f"dashboard queries without data after 60 s: {sorted(empty)}"

    # Every dashboard query is accepted by a real Prometheus (syntax and types at evaluation time).
    dashboard_exprs = [e for _, e in expressions(load())]
    assert MUST_HAVE_DATA <= set(dashboard_exprs)
    for expr in dashboard_exprs:
        query(prometheus, fill(expr))

    # Every rule has been evaluated and none failed at run time.
    deadline = time.monotonic() + 15
    while True:
        groups = get(f"{prometheus}/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if rules and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules) or \
                time.monotonic() > deadline:
            break
        time.sleep(1)
    expected = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert len(rules) == len(expected)
    failing = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not failing, f"rules failing at evaluation: {failing}"

    # The fleet rules count the one live worker, and on the healthy stack its availability alerts are not even
    # pending (every rule has been evaluated by now, Triton scraped).
    assert [r["value"][1] for r in query(prometheus, "popscore:workers_up:count")] == ["1"]
    assert query(prometheus, 'ALERTS{alertname=~"PopscoreWorkerDown|PopscoreTritonDown"}') == []
