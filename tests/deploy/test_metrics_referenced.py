"""The dashboard and the alert rules read only metrics (and labels) that exist."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import prometheus_client
import pytest
from prometheus_client.metrics import MetricWrapperBase

import worker.metrics
from tests.deploy import DEPLOY
from tests.deploy.promql import references

# PyYAML is a dev dependency; without it these checks cannot run at all.
yaml = pytest.importorskip("yaml", reason="pip install pyyaml")

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "switchboard.json"
RULE_FILES = [DEPLOY / "prometheus" / "alerts.yml", DEPLOY / "k8s" / "base" / "prometheusrule.yaml"]

# Labels Prometheus adds to every scraped series (static configs, ServiceMonitor).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "container", "endpoint"})
# Series that do not come from the worker: the name, where it comes from, its labels.
EXTERNAL: dict[str, frozenset[str]] = {
    # Prometheus itself, per scrape target.
    "up": frozenset(),
    # RabbitMQ's rabbitmq_prometheus plugin, /metrics/detailed?family=queue_coarse_metrics
    # (and family=queue_consumer_count); deploy/prometheus/prometheus.yml scrapes them.
    "rabbitmq_detailed_queue_messages_ready": frozenset({"vhost", "queue"}),
    "rabbitmq_detailed_queue_messages_unacked": frozenset({"vhost", "queue"}),
    "rabbitmq_detailed_queue_messages": frozenset({"vhost", "queue"}),
    "rabbitmq_detailed_queue_consumers": frozenset({"vhost", "queue"}),
}


def _our_metrics() -> Iterator[MetricWrapperBase]:
    for value in vars(worker.metrics).values():
        if isinstance(value, MetricWrapperBase):
            yield value


def _exposed(metric: MetricWrapperBase) -> dict[str, frozenset[str]]:
    """Series names a metric object is exposed as, with their labels (the client library's rules)."""
    # The client keeps these private but stable; the exposition rules below depend on them.
    name = metric._name
    labels = frozenset(metric._labelnames)
    kind = str(metric._type)
    if kind == "counter":
        return {f"{name}_total": labels, f"{name}_created": labels}
    if kind == "histogram":
        return {
            f"{name}_bucket": labels | {"le"},
            f"{name}_sum": labels,
            f"{name}_count": labels,
            f"{name}_created": labels,
        }
    if kind == "summary":
        return {name: labels | {"quantile"}, f"{name}_sum": labels, f"{name}_count": labels}
    if kind == "info":
        info_labels = {
            label for family in metric.collect() for sample in family.samples for label in sample.labels
        }
        return {f"{name}_info": labels | info_labels}
    if kind == "stateset":
        return {name: labels | {name}}
    return {name: labels}


def exported() -> dict[str, frozenset[str]]:
    """Every series name the worker's /metrics can show, with its label names.

    worker/metrics.py, plus the default process and platform collectors of the
    registry /metrics serves (worker/http.py uses ``generate_latest()``).
    """
    series: dict[str, frozenset[str]] = {}
    for metric in _our_metrics():
        series.update(_exposed(metric))
    ours = {metric._name for metric in _our_metrics()}
    for family in prometheus_client.REGISTRY.collect():
        if family.name not in ours:
            for sample in family.samples:
                series[sample.name] = series.get(sample.name, frozenset()) | frozenset(sample.labels)
    return series


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, expr) for every query and template variable of the dashboard."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if "expr" in target:
                    found.append((f"panel {panel['title']!r}", target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append(
                (f"variable ${variable['name']}", query["query"] if isinstance(query, dict) else query)
            )
    return found


def rule_expressions() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path in RULE_FILES:
        document = yaml.safe_load(path.read_text())
        groups = (
            document["spec"]["groups"] if document.get("kind") == "PrometheusRule" else document["groups"]
        )
        for group in groups:
            for rule in group["rules"]:
                found.append((f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"]))
    return found


ALL_EXPRESSIONS = dashboard_expressions() + rule_expressions()


class TestPromqlReader:
    """The reader the checks below rely on finds what it must (so they can fail)."""

    def test_reads_selectors_matchers_and_grouping(self) -> None:
        """Metric names, matcher labels and by() labels are found; functions, keywords, ranges are not."""
        found = references(
            'histogram_quantile(0.95, sum by (le, vendor) (rate(switchboard_x_bucket{job=~"$job", type="a,b"}[5m])))'
            " / ignoring(code) up or vector(0)"
        )
        assert found.metrics == {"switchboard_x_bucket", "up"}
        assert found.matchers["switchboard_x_bucket"] == {"job", "type"}
        assert found.grouping == {"le", "vendor", "code"}

    def test_reads_grafana_label_values(self) -> None:
        """label_values(metric{...}, label) yields the metric and the label."""
        found = references('label_values(switchboard_commands_in_flight{job=~"$job"}, vendor)')
        assert found.metrics == {"switchboard_commands_in_flight"}
        assert found.grouping == {"vendor"}


def test_there_is_something_to_check() -> None:
    """The dashboard and both rule files were read (an empty list would pass everything)."""
    wheres = {where.split(":")[0] for where, _ in ALL_EXPRESSIONS}
    assert {"alerts.yml", "prometheusrule.yaml"} <= wheres
    assert sum(1 for where, _ in ALL_EXPRESSIONS if where.startswith("panel")) >= 20


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRESSIONS, ids=[w for w, _ in ALL_EXPRESSIONS])
def test_expression_reads_only_existing_metrics_and_labels(where: str, expr: str) -> None:
    """Each metric named exists (worker/metrics.py or a documented external source) with the labels used."""
    known = {**exported(), **EXTERNAL}
    found = references(expr)
    unknown = sorted(found.metrics - set(known))
    assert not unknown, f"{where} reads metrics nothing exports: {unknown}"
    for metric, labels in found.matchers.items():
        bad = labels - known[metric] - TARGET_LABELS
        assert not bad, f"{where}: {metric} has no label {sorted(bad)}"
    available = set().union(*(known[m] for m in found.metrics)) | TARGET_LABELS
    bad_grouping = found.grouping - available
    assert not bad_grouping, f"{where} groups by labels none of its metrics has: {sorted(bad_grouping)}"


def test_dashboard_shows_every_worker_metric() -> None:
    """Every metric in worker/metrics.py appears on the dashboard (a new metric needs a panel)."""
    shown: set[str] = set()
    for _, expr in dashboard_expressions():
        shown |= references(expr).metrics
    missing = sorted(metric._name for metric in _our_metrics() if not set(_exposed(metric)) & shown)
    assert not missing, f"metrics with no panel in {DASHBOARD.name}: {missing}"
