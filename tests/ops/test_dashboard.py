"""The Grafana dashboard and its provisioning: every panel queries metrics the worker really exports."""

from __future__ import annotations

import copy
import json
import re
import subprocess

import yaml

import pytest

from tests.ops.promql import DASHBOARD, DEPLOY, PROMETHEUS_SYNTHETIC, TRITON_GPU_METRICS, TRITON_METRICS, \
    exported_metric_names, metric_names, promtool

PROVISIONING = DEPLOY / "grafana" / "provisioning"

# What the dashboard must show (issue 6): the metric behind each asked-for view.
REQUIRED = {
    "throughput": {"popscore_records_consumed_total", "popscore_records_produced_total"},
    "latency": {"popscore_end_to_end_seconds_bucket", "popscore_inference_seconds_bucket", "popscore_redis_seconds_bucket"},
    "consumer lag": {"popscore_consumer_lag_records"},
    "dead letters": {"popscore_dead_letters_total"},
    "model versions": {"popscore_model_info"},
    "prediction distribution": {"popscore_predicted_log_score_bucket"},
    "online accuracy": {"popscore_online_mae", "popscore_online_srcc", "popscore_offline_mae"},
    "fallback and flagged predictions": {"popscore_fallback_predictions_total", "popscore_flagged_predictions_total"},
    "model sets servable": {"popscore_model_set_servable"},
    "triton queue and compute": {"nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
                                 "nv_inference_pending_request_count"},
    "gpu": {"nv_gpu_utilization", "nv_gpu_memory_used_bytes"},
}

# Grafana's built-in variables, replaced by plausible values to hand the expressions to promtool.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$model": ".*",
                     "$platform": ".*", "$instance": ".*"}


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def query_panels(dashboard: dict) -> list[dict]:
    """Every panel that queries (rows excluded), nested row panels included."""
    found = []
    for panel in dashboard["panels"]:
        found += panel.get("panels", [])
        if panel["type"] != "row":
            found.append(panel)
    return found


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    exprs = [(f"panel {p['title']!r} target {t.get('refId')}", t["expr"])
             for p in query_panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            # label_values(metric, label) / query_result(expr): keep the metric or the expression.
            inner = re.fullmatch(r"\s*(?:label_values|query_result)\((.*)\)\s*", query, re.S)
            expr = inner.group(1).rsplit(",", 1)[0] if inner and query.strip().startswith("label_values") else \
                (inner.group(1) if inner else query)
            exprs.append((f"variable {var['name']!r}", expr))
    return exprs


def unknown_metrics(dashboard: dict) -> dict[str, set[str]]:
    known = exported_metric_names() | PROMETHEUS_SYNTHETIC | TRITON_METRICS | TRITON_GPU_METRICS
    found = {}
    for where, expr in expressions(dashboard):
        unknown = metric_names(expr) - known
        if unknown:
            found[where] = unknown
    return found


def test_every_panel_queries_only_metrics_the_worker_exports():
    assert unknown_metrics(load()) == {}


def test_the_metric_check_fails_on_a_misspelt_or_unsuffixed_metric():
    dashboard = copy.deepcopy(load())
    panel = next(p for p in query_panels(dashboard) if p["title"] == "Dead letters by reason")
    panel["targets"][0]["expr"] = panel["targets"][0]["expr"].replace("popscore_dead_letters_total", "popscore_dead_letters")
    panel["targets"].append({"refId": "Z", "expr": "rate(popscore_records_consumd_total[5m])"})
    found = unknown_metrics(dashboard)
    assert set(found) == {"panel 'Dead letters by reason' target A", "panel 'Dead letters by reason' target Z"}
    assert found["panel 'Dead letters by reason' target A"] == {"popscore_dead_letters"}


def test_dashboard_covers_every_asked_for_view():
    used = set().union(*(metric_names(expr) for _, expr in expressions(load())))
    for view, names in REQUIRED.items():
        assert names <= used, f"{view}: the dashboard does not query {sorted(names - used)}"


def test_dashboard_structure():
    dashboard = load()
    assert dashboard["uid"] == "popscore" and dashboard["title"]
    panels = query_panels(dashboard)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    datasource_uid = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"][0]["uid"]
    for panel in panels:
        assert panel["targets"], f"{panel['title']}: no query"
        assert panel.get("description"), f"{panel['title']}: no description"
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, f"{panel['title']}: outside the 24-column grid"
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target.get("datasource", panel["datasource"])["uid"] == datasource_uid, panel["title"]


def test_every_dashboard_expression_parses(tmp_path):
    """promtool parses each PromQL expression (Grafana variables filled in) as a recording rule."""
    exe = promtool()
    rules = []
    for i, (where, expr) in enumerate(expressions(load())):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{where}: unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([exe, "check", "rules", str(path)], capture_output=True, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_provisioning_points_grafana_at_prometheus_and_the_dashboard_folder():
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [d["type"] for d in datasources] == ["prometheus"]
    assert datasources[0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "popscore.yml").read_text())["providers"]
    assert providers[0]["type"] == "file"
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_rates_use_grafanas_rate_interval():
    """A fixed [5m] hides short spikes when zoomed in and breaks below 4 scrape intervals."""
    for where, expr in expressions(load()):
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", f"{where}: fixed window [{window}]"


def test_fallback_and_flagged_predictions_are_shown_per_platform():
    """Issue 18: a panel counts the fallback and the flagged predictions, per platform, by reason and by flag."""
    panel = next(p for p in query_panels(load()) if p["title"] == "Fallback and flagged predictions by platform")
    by = {metric: re.search(r"by \(([^)]*)\)", t["expr"]).group(1).replace(" ", "").split(",")
          for t in panel["targets"] for metric in metric_names(t["expr"])}
    assert set(by["popscore_fallback_predictions_total"]) >= {"platform", "kind", "reason"}
    assert set(by["popscore_flagged_predictions_total"]) >= {"platform", "kind", "flag"}


def test_model_panels_tell_model_sets_apart():
    """A panel that shows served models one by one shows them per model set (platform): one platform's version
    or accuracy must not be averaged with another's."""
    from popscore.stream.metrics import WorkerMetrics

    with_platform = {f"{c._name}{suffix}" for c in WorkerMetrics().registry._collector_to_names
                     if "platform" in c._labelnames for suffix in ("", "_total", "_bucket", "_count", "_sum")}
    for where, expr in expressions(load()):
        if not metric_names(expr) & with_platform:
            continue
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            labels = set(grouping.replace(" ", "").split(","))
            if "model" in labels:
                assert "platform" in labels, f"{where}: by ({grouping}) in {expr}"


# --- issue 21 item 6: Faust's assignor topic, the per-replica variable, Triton's panels ----------------------

SELECTOR = re.compile(r"\b(popscore_[a-z0-9_]+)(\{[^}]*\})?")


def test_lag_queries_leave_out_faust_assignor_topic():
    """Faust's internal `<app id>-__assignor-__leader` topic is consumed by every worker but is not input."""
    lag = [(where, m) for where, expr in expressions(load()) for m in SELECTOR.finditer(expr)
           if m.group(1) == "popscore_consumer_lag_records"]
    assert lag, "no panel shows the consumer lag"
    for where, match in lag:
        assert 'topic!~".*__assignor-__leader"' in (match.group(2) or ""), f"{where}: {match.group(0)}"


def test_every_worker_query_follows_the_replica_variable():
    dashboard = load()
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "instance")
    assert variable["query"]["query"] == 'label_values(up{job="popscore-worker"}, instance)'
    assert variable["includeAll"] and variable["allValue"] == ".*"
    for where, expr in expressions(dashboard):
        if where.startswith("variable"):
            continue
        for match in SELECTOR.finditer(expr):
            assert 'instance=~"$instance"' in (match.group(2) or ""), f"{where}: {match.group(0)}"


@pytest.mark.integration
def test_triton_panels_query_names_the_embedded_triton_exports(endpoints):
    """The nv_inference_* names the dashboard uses are what the real (CPU) tritonserver exports."""
    import urllib.request

    url = endpoints.as_dict()["triton_metrics"]
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    used = set().union(*(metric_names(expr) for _, expr in expressions(load())))
    triton_used = {name for name in used if name.startswith("nv_") and name not in TRITON_GPU_METRICS}
    assert triton_used and triton_used <= exported, sorted(triton_used - exported)
    assert TRITON_METRICS <= exported, sorted(TRITON_METRICS - exported)
