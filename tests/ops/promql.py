"""Helpers of the ops tests: the metric names the worker really exports, and the metric names a PromQL
expression (an alert rule or a Grafana panel target) refers to."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "popscore.rules.yml"
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "popscore.json"

# Series Prometheus itself creates for every scrape target.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

# Triton's own metrics (job "triton"). The nv_inference_* and nv_cpu_* names are those the embedded tritonserver
# exports (test_dashboard.py's live test reads them); nv_gpu_* appear only on a GPU (Triton's metrics docs).
TRITON_METRICS = {"nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                  "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                  "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
                  "nv_inference_compute_output_duration_us", "nv_inference_pending_request_count",
                  "nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes"}
TRITON_GPU_METRICS = {"nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes",
                      "nv_gpu_power_usage", "nv_gpu_power_limit", "nv_energy_consumption"}

SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                   "bool", "offset", "inf", "nan"}


def promtool() -> str:
    """The promtool binary, or a clean skip saying how to get it."""
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not on PATH: install Debian's `prometheus` package (apt-get install -y prometheus)")
    return path


def exported_metric_names() -> set[str]:
    """Every series name WorkerMetrics can expose, with the suffixes prometheus_client adds.

    A labelled metric has no sample until a label set is used, so names come from each family's type;
    the samples of the families that already have some are added too.
    """
    from popscore.stream.metrics import WorkerMetrics

    names: set[str] = set()
    for family in WorkerMetrics().registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Metric names referred to in a PromQL expression (functions, keywords, labels removed).

    Grafana's ``$variables`` count as nothing; a selector written only as ``{__name__="x"}`` counts as x.
    """
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    text = _GRAFANA_VARIABLE.sub(" ", expr)
    text = _STRING.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    for match in _IDENT.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names
