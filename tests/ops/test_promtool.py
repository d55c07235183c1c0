"""promtool on the alert rules, their unit tests, the Prometheus config, and the worker's exposition.

promtool comes from Debian's ``prometheus`` package; without it these tests skip and say so.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.ops.promql import PROMETHEUS_CONFIG, PROMETHEUS_SYNTHETIC, RULE_TESTS, RULES, exported_metric_names, \
    metric_names, promtool


def run_promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], input=stdin, capture_output=True, timeout=120)


def output(result: subprocess.CompletedProcess) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")


def rule_list() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


# --- rules ------------------------------------------------------------------------------------------------

def test_alert_rules_pass_promtool_check():
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, output(result)


def test_alert_rule_unit_tests_pass():
    assert RULE_TESTS, "no promtool unit tests under deploy/prometheus/tests"
    result = run_promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, output(result)
    assert "SUCCESS" in output(result)


def test_prometheus_config_passes_promtool_check():
    """Also loads the rule files the config names (rule_files is relative to the config file)."""
    result = run_promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, output(result)
    assert "1 rule files found" in output(result)


def test_every_asked_for_alert_exists_with_a_severity_and_a_runbook():
    rules = {rule["alert"]: rule for rule in rule_list() if "alert" in rule}
    for name in ("PopscoreWorkerDown", "PopscoreTritonDown", "PopscoreTritonModelNotReady",
                 "PopscoreConsumerLagGrowing", "PopscoreDeadLetterRate",
                 "PopscoreTritonUnavailable", "PopscoreEndToEndLatencyHigh", "PopscoreAccuracyDrift",
                 "PopscoreModelSetNotServable"):
        assert name in rules, f"alert {name} missing"
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["runbook"] == f"docs/deployment.md#{name.lower()}", name
        assert {"summary", "description"} <= set(rule["annotations"]), name


def test_runbook_anchors_exist_in_the_deployment_doc():
    doc = (RULES.parents[3] / "docs" / "deployment.md").read_text()
    headings = {line.lstrip("#").strip().lower() for line in doc.splitlines() if line.startswith("#")}
    for rule in rule_list():
        if "alert" in rule:
            assert rule["alert"].lower() in headings, f"docs/deployment.md has no section {rule['alert']}"


def test_every_alert_has_a_unit_test():
    tested = {case["alertname"] for path in RULE_TESTS for test in yaml.safe_load(path.read_text())["tests"]
              for case in test.get("alert_rule_test", [])}
    alerts = {rule["alert"] for rule in rule_list() if "alert" in rule}
    assert alerts <= tested, f"alerts without a promtool unit test: {sorted(alerts - tested)}"


def test_rules_only_query_metrics_the_worker_exports():
    """promtool accepts any well-formed name, so a typo would give a rule that can never fire. The recording
    rules' own series count as known."""
    recorded = {rule["record"] for rule in rule_list() if "record" in rule}
    known = exported_metric_names() | PROMETHEUS_SYNTHETIC | recorded
    for rule in rule_list():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metrics {sorted(unknown)}"


# --- the checks can fail ----------------------------------------------------------------------------------

def test_promtool_check_rejects_a_broken_rule(tmp_path):
    broken = tmp_path / "broken.rules.yml"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "broken", "rules": [
        {"alert": "Broken", "expr": "sum by (topic) (rate(popscore_dead_letters_total[5m]) > ", "for": "5m"},
    ]}]}))
    result = run_promtool("check", "rules", str(broken))
    assert result.returncode != 0
    assert "Broken" in output(result) or "parse error" in output(result)


def test_unit_tests_catch_a_loosened_latency_objective(tmp_path):
    """The same unit tests against rules whose p99 threshold moved from 250 ms to 500 ms must fail."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    text = RULES.read_text()
    assert "\n            > 0.25\n" in text
    (tmp_path / "rules" / RULES.name).write_text(text.replace("\n            > 0.25\n", "\n            > 0.5\n"))
    for path in RULE_TESTS:
        (tmp_path / "tests" / path.name).write_text(path.read_text())
    result = run_promtool("test", "rules", *(str(tmp_path / "tests" / p.name) for p in RULE_TESTS))
    assert result.returncode != 0
    assert "PopscoreEndToEndLatencyHigh" in output(result)


def test_rule_metric_check_catches_a_misspelt_metric():
    known = exported_metric_names() | PROMETHEUS_SYNTHETIC
    expr = "sum by (topic) (rate(popscore_dead_letter_total[5m])) / sum by (topic) (rate(popscore_records_consumed_total[5m]))"
    assert metric_names(expr) - known == {"popscore_dead_letter_total"}


# --- promtool check metrics on the worker's exposition ----------------------------------------------------

def populated_exposition() -> bytes:
    """The text format of a WorkerMetrics registry after every metric has seen a labelled value."""
    from prometheus_client import generate_latest

    from popscore.stream.metrics import WorkerMetrics

    m = WorkerMetrics()
    m.records_in.labels("snapshots").inc(120)
    m.records_in.labels("posts").inc(10)
    m.records_out.labels("predictions").inc(100)
    m.records_out.labels("deadletter").inc(3)
    m.snapshots_in.inc(117)
    m.posts_in.inc(10)
    m.dead_letters.labels("snapshots", "invalid").inc(2)
    m.dead_letters.labels("snapshots", "not_json").inc()
    m.sequence_merges.labels("appended").inc(110)
    m.sequence_merges.labels("duplicate").inc(7)
    m.post_metadata.labels("cache").inc(100)
    m.post_metadata.labels("redis").inc(10)
    m.counter_decreases.inc()
    m.batch_size.labels("snapshots").observe(117)
    m.redis_seconds.labels("merge").observe(0.002)
    m.inference_seconds.labels("temporal", "hackernews", "1", "triton").observe(0.004)
    m.inference_seconds.labels("static", "reddit", "1", "local").observe(0.02)
    m.inference_batch.labels("temporal").observe(64)
    m.end_to_end_seconds.labels("temporal").observe(0.03)
    m.predictions.labels("temporal", "hackernews", "1", "triton").inc(64)
    m.predictions.labels("temporal", "fallback", "1", "baseline").inc(3)
    m.flagged_predictions.labels("temporal", "hackernews", "out_of_range").inc(5)
    m.flagged_predictions.labels("temporal", "fallback", "fallback").inc(3)
    m.fallback_predictions.labels("temporal", "other", "no_model").inc(3)
    m.fallback_predictions.labels("static", "youtube", "not_servable").inc(2)
    m.model_set_servable.labels("hackernews").set(1)
    m.model_set_servable.labels("youtube").set(0)
    m.predicted_log_score.labels("temporal", "hackernews").observe(3.2)
    m.content_vectors.labels("post").inc(10)
    m.media_posts.labels("image").inc(4)
    m.media_rejected.labels("undecodable").inc()
    m.media_retries.labels("recovered").inc()
    m.media_retries_scheduled.inc()
    m.media_retries_pending.set(1)
    m.model_info.labels("temporal", "hackernews", "1").set(1)
    m.triton_up.labels("temporal", "hackernews").set(1)
    m.model_reloads.labels("temporal", "hackernews", "loaded").inc()
    m.batch_failures.labels("snapshots", "transient").inc()
    m.predictions_without_post.inc()
    m.agent_crashes.labels("snapshots").inc()
    m.background_errors.labels("probe").inc()
    m.consumer_lag.labels("snapshots", "0").set(12)
    m.tracked_posts.set(40)
    m.in_flight.set(1)
    m.online_mae.labels("temporal", "hackernews", "1", "1").set(0.6)
    m.online_srcc.labels("temporal", "hackernews", "1", "1").set(0.7)
    m.online_evaluated.labels("temporal", "hackernews", "1", "1").inc(50)
    m.offline_mae.labels("temporal", "hackernews", "1", "1").set(0.55)
    return generate_latest(m.registry)


def check_metrics(text: bytes) -> subprocess.CompletedProcess:
    return run_promtool("check", "metrics", stdin=text)


def lint_report(result: subprocess.CompletedProcess) -> str:
    text = output(result)
    if "should not include type" in text:
        text += ("\n(promtool's lint rejects a metric whose name contains its type, e.g. `_counter_` in a "
                 "counter's name: rename it in stream/metrics.py and in the rules/dashboard that use it)")
    return text


def test_worker_exposition_passes_promtool_check_metrics():
    text = populated_exposition()
    result = check_metrics(text)
    assert result.returncode == 0, lint_report(result)
    assert output(result).strip() == "", f"promtool lint findings:\n{lint_report(result)}"


def test_the_exposition_has_every_name_the_rules_and_dashboard_rely_on():
    """The type-derived name list equals what a populated registry really writes (minus _created)."""
    written = {line.split("{")[0].split(" ")[0] for line in populated_exposition().decode().splitlines()
               if line and not line.startswith("#")}
    derived = {name for name in exported_metric_names() if not name.endswith("_created")}
    assert derived <= written, sorted(derived - written)


def test_promtool_check_metrics_rejects_a_bad_exposition():
    bad = b"# HELP popscore_bad a counter without the suffix\n# TYPE popscore_bad counter\npopscore_bad 1\n"
    result = check_metrics(bad)
    assert result.returncode != 0
    assert "popscore_bad" in output(result)


@pytest.mark.integration
def test_live_worker_scrape_passes_promtool_check_metrics(endpoints, stack_settings):
    """Scrape the running embedded stack's worker and lint it exactly as Prometheus would receive it."""
    import asyncio
    import json
    import uuid

    from tests.integration.kafka_io import produce

    promtool()
    # one valid snapshot and one broken record, so labelled series (merges, dead letters) are exposed too
    post_id = f"ops-{uuid.uuid4().hex[:8]}"
    valid = json.dumps({"schema": "snapshot.v1", "post_id": post_id, "observed_at": "2024-05-01T10:00:00Z",
                        "counts": {"likes": 3}}).encode()
    asyncio.run(produce(endpoints.broker_bootstrap, stack_settings.kafka.topics.snapshots,
                        [(post_id.encode(), valid), (f"{post_id}-bad".encode(), b"{broken json")]))
    url = endpoints.as_dict()["worker_metrics"]
    deadline = time.monotonic() + 90
    text, error = b"", None
    while time.monotonic() < deadline:  # the worker serves /metrics once its agents have started
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read()
            if b'reason="not_json"' in text:
                break
        except OSError as exc:
            error = exc
        time.sleep(1)
    assert b"popscore_" in text, f"no popscore metrics at {url} after 90 s ({error})"
    assert b'reason="not_json"' in text, "the broken record did not show up as a dead letter in /metrics"
    result = check_metrics(text)
    assert result.returncode == 0, lint_report(result)
    assert output(result).strip() == "", f"promtool lint findings on the live scrape:\n{lint_report(result)}"
    families = {line.split()[2] for line in text.decode().splitlines() if line.startswith("# TYPE ")}
    assert {"popscore_records_consumed_total", "popscore_dead_letters_total"} <= families
