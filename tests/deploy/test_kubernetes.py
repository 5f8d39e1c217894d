"""deploy/k8s: the kustomize base builds, validates, and its parts fit each other and the worker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from typing import Any

import pytest

from handlers import build_registry
from tests.deploy import DEPLOY
from tests.deploy.envvars import unknown
from worker import topology

registry = build_registry()

# PyYAML is a dev dependency; without it these checks cannot run at all.
yaml = pytest.importorskip("yaml", reason="pip install pyyaml")

BASE = DEPLOY / "k8s" / "base"
OVERLAY = DEPLOY / "k8s" / "overlays" / "example"
K8S_VERSION = "1.30.0"
WORKER_LABELS = {"app.kubernetes.io/name": "switchboard", "app.kubernetes.io/component": "worker"}


def _kustomize_command(directory: str) -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize", directory]
    if shutil.which("kustomize"):
        return ["kustomize", "build", directory]
    return None


@cache
def build(directory: str) -> tuple[dict[str, Any], ...]:
    command = _kustomize_command(directory)
    if command is None:
        pytest.skip("neither kubectl nor kustomize is installed")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def one(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def config(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap")["data"]
    return data


@pytest.fixture(scope="module")
def base() -> tuple[dict[str, Any], ...]:
    return build(str(BASE))


@pytest.fixture(scope="module")
def overlay() -> tuple[dict[str, Any], ...]:
    return build(str(OVERLAY))


class TestSchemas:
    @pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
    def test_core_resources_validate_strictly(self, directory: Any) -> None:
        """Every built-in kind passes the Kubernetes schema with unknown fields refused."""
        validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
        checked = 0
        for doc in build(str(directory)):
            try:
                validate.validate(doc, K8S_VERSION, True)
                checked += 1
            except validate.SchemaNotFoundError:
                assert doc["apiVersion"].split("/")[0] in ("keda.sh", "monitoring.coreos.com"), doc["kind"]
        assert checked >= 5  # ServiceAccount, ConfigMap, Service, Deployment, PodDisruptionBudget

    def test_a_typo_fails_strict_validation(self, base: tuple[dict[str, Any], ...]) -> None:
        """The schema check would notice a misspelled field (so passing means something)."""
        validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
        deployment = yaml.safe_load(yaml.safe_dump(one(base, "Deployment")))
        deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
        with pytest.raises(validate.ValidationError):
            validate.validate(deployment, K8S_VERSION, True)


class TestWorkerDeployment:
    def test_probes_use_the_worker_endpoints(self, base: tuple[dict[str, Any], ...]) -> None:
        """Liveness and startup probe /healthz, readiness /readyz, on the named metrics port."""
        worker = container(base)
        assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert worker["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert {
            "name": "metrics",
            "containerPort": int(config(base)["SWITCHBOARD_METRICS_PORT"]),
            "protocol": "TCP",
        } in (worker["ports"])

    def test_termination_grace_exceeds_the_drain_period(self, base: tuple[dict[str, Any], ...]) -> None:
        """Kubernetes waits longer than the worker drains (+5 s to publish and close), so no SIGKILL mid-drain."""
        grace = one(base, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        drain = float(config(base)["SWITCHBOARD_SHUTDOWN_GRACE_SECONDS"])
        assert grace >= drain + 5

    def test_runs_unprivileged_with_requests(self, base: tuple[dict[str, Any], ...]) -> None:
        """Non-root uid, no privilege escalation, read-only root, all capabilities dropped, requests set."""
        pod = one(base, "Deployment")["spec"]["template"]["spec"]
        worker = container(base)
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert worker["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert set(worker["resources"]["requests"]) == {"cpu", "memory"}
        assert "memory" in worker["resources"]["limits"]

    def test_config_from_configmap_and_credentials_from_secret(
        self, overlay: tuple[dict[str, Any], ...]
    ) -> None:
        """envFrom takes the generated ConfigMap and Secret, and no credential sits in the ConfigMap."""
        sources = container(overlay)["envFrom"]
        configmap = one(overlay, "ConfigMap")["metadata"]["name"]
        secrets = {d["metadata"]["name"] for d in overlay if d["kind"] == "Secret"}
        assert {"configMapRef": {"name": configmap}} in sources
        secret_refs = [s["secretRef"]["name"] for s in sources if "secretRef" in s]
        assert secret_refs and set(secret_refs) <= secrets
        secret_words = ("PASSWORD", "TOKEN", "KEY", "SECRET", "AMQP_URL", "STORE_URL", "EMAIL")
        assert not [k for k in config(overlay) if any(word in k for word in secret_words)]

    def test_every_env_var_is_a_real_setting(self, overlay: tuple[dict[str, Any], ...]) -> None:
        """Each SWITCHBOARD_* name in the ConfigMap and Secrets is read by the worker (typos are ignored silently)."""
        names = set(config(overlay))
        for doc in overlay:
            if doc["kind"] == "Secret" and doc["metadata"]["name"].startswith("switchboard-credentials"):
                names |= set(doc.get("data", {})) | set(doc.get("stringData", {}))
        assert len(names) > 8
        assert unknown(names) == []

    def test_replicas_share_a_postgres_store(self, overlay: tuple[dict[str, Any], ...]) -> None:
        """The example sets a postgresql:// store: shared by replicas, and opt-outs survive restarts."""
        import base64

        secret = next(
            d for d in overlay if d["kind"] == "Secret" and "SWITCHBOARD_STORE_URL" in d.get("data", {})
        )
        assert base64.b64decode(secret["data"]["SWITCHBOARD_STORE_URL"]).startswith(b"postgresql://")

    def test_postgres_connections_fit_the_default_budget(self, base: tuple[dict[str, Any], ...]) -> None:
        """At KEDA's maximum replica count, pods x pool stays within PostgreSQL's default 100 connections."""
        pool = int(config(base)["SWITCHBOARD_POSTGRES_POOL_SIZE"])
        replicas = one(base, "ScaledObject")["spec"]["maxReplicaCount"]
        assert replicas * pool <= 100 - 10  # room for superuser_reserved_connections and operators

    def test_no_fixed_replica_count(self, base: tuple[dict[str, Any], ...]) -> None:
        """KEDA owns the replica count; a fixed one would be reset on every apply."""
        assert "replicas" not in one(base, "Deployment")["spec"]


class TestAroundTheDeployment:
    def test_selectors_match_the_pods(self, base: tuple[dict[str, Any], ...]) -> None:
        """Deployment, Service and PodDisruptionBudget select the worker pods' labels."""
        pod_labels = one(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert WORKER_LABELS.items() <= pod_labels.items()
        assert one(base, "Deployment")["spec"]["selector"]["matchLabels"] == WORKER_LABELS
        assert one(base, "Service")["spec"]["selector"] == WORKER_LABELS
        pdb = one(base, "PodDisruptionBudget")["spec"]
        assert pdb["selector"]["matchLabels"] == WORKER_LABELS
        assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable") == 1

    def test_scaled_object_watches_every_vendor_queue_over_http(
        self, base: tuple[dict[str, Any], ...]
    ) -> None:
        """One KEDA rabbitmq trigger per vendor queue, over the management API, target = max in flight."""
        scaled = one(base, "ScaledObject")["spec"]
        assert scaled["scaleTargetRef"]["name"] == one(base, "Deployment")["metadata"]["name"]
        assert scaled["minReplicaCount"] >= 2, "one pod restarting must not stop consumption"
        triggers = [t for t in scaled["triggers"] if t["type"] == "rabbitmq"]
        assert {t["metadata"]["queueName"] for t in triggers} == {
            topology.vendor_queue(v) for v in registry.vendors
        }
        auth_names = {d["metadata"]["name"] for d in base if d["kind"] == "TriggerAuthentication"}
        for trigger in triggers:
            assert trigger["type"] == "rabbitmq"
            assert trigger["metadata"]["protocol"] == "http"
            assert trigger["metadata"]["mode"] == "QueueLength"
            assert trigger["metadata"]["value"] == config(base)["SWITCHBOARD_MAX_IN_FLIGHT"]
            assert trigger["metadata"]["vhostName"] == "switchboard"
            assert trigger["authenticationRef"]["name"] in auth_names

    def test_no_scale_out_for_a_vendor_whose_breaker_is_open(self, base: tuple[dict[str, Any], ...]) -> None:
        """The scaling formula counts each vendor's queue only while that vendor's breaker metric is 0."""
        scaled = one(base, "ScaledObject")["spec"]
        modifiers = scaled["advanced"]["scalingModifiers"]
        assert modifiers["target"] == config(base)["SWITCHBOARD_MAX_IN_FLIGHT"]
        assert modifiers["metricType"] == "AverageValue"
        by_name = {t["name"]: t for t in scaled["triggers"]}
        formula = modifiers["formula"]
        for vendor in registry.vendors:
            queue, breaker = by_name[f"{vendor}_queue"], by_name[f"{vendor}_breaker"]
            assert queue["metadata"]["queueName"] == topology.vendor_queue(vendor)
            assert breaker["type"] == "prometheus"
            assert (
                breaker["metadata"]["query"] == f'max(switchboard_circuit_breaker_state{{vendor="{vendor}"}})'
            )
            assert breaker["metadata"]["ignoreNullValues"] == "true"
            assert f"({vendor}_breaker > 0 ? 0 : {vendor}_queue)" in formula
        # Evaluate it, expr-lang's ternary rewritten to Python's, for closed breakers and one open.
        python = re.sub(r"\((\w+) > 0 \? (\w+) : (\w+)\)", r"(\2 if \1 > 0 else \3)", formula)
        values = {f"{v}_queue": 1000 for v in registry.vendors} | {
            f"{v}_breaker": 0 for v in registry.vendors
        }
        assert eval(python, {}, values) == 1000 * len(registry.vendors)
        values["pidj_breaker"] = 2
        assert eval(python, {}, values) == 1000 * (len(registry.vendors) - 1)

    def test_trigger_authentication_secret_exists_in_the_overlay(
        self, overlay: tuple[dict[str, Any], ...]
    ) -> None:
        """KEDA's secretTargetRef names a Secret the overlay creates, with the key it reads."""
        auth = one(overlay, "TriggerAuthentication")["spec"]["secretTargetRef"]
        secrets = {d["metadata"]["name"]: d for d in overlay if d["kind"] == "Secret"}
        for ref in auth:
            assert ref["parameter"] == "host"
            assert ref["key"] in secrets[ref["name"]]["data"]

    def test_service_monitor_scrapes_the_service_as_the_rules_expect(
        self, base: tuple[dict[str, Any], ...]
    ) -> None:
        """The ServiceMonitor selects the Service, uses its port, and yields job="switchboard-worker"."""
        monitor = one(base, "ServiceMonitor")["spec"]
        service = one(base, "Service")
        assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert {e["port"] for e in monitor["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
        assert all(e["path"] == "/metrics" for e in monitor["endpoints"])
        assert service["metadata"]["labels"][monitor["jobLabel"]] == "switchboard-worker"

    def test_rabbitmq_queue_metrics_are_scraped_for_the_rules(self, base: tuple[dict[str, Any], ...]) -> None:
        """A PodMonitor scrapes every RabbitMQ pod's /metrics/detailed with the families the rules read."""
        monitor = one(base, "PodMonitor")["spec"]
        [endpoint] = monitor["podMetricsEndpoints"]
        assert endpoint["path"] == "/metrics/detailed"
        assert endpoint["params"] == {
            "vhost": ["switchboard"],
            "family": ["queue_coarse_metrics", "queue_consumer_count"],
        }
        assert endpoint["port"] == "prometheus"
        assert monitor["selector"]["matchLabels"] == {"app.kubernetes.io/component": "rabbitmq"}
        rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
        for metric in ("rabbitmq_detailed_queue_messages_ready", "rabbitmq_detailed_queue_consumers"):
            assert metric in rules  # both families are read, so both are scraped

    def test_monitoring_objects_carry_the_kube_prometheus_stack_label(
        self, base: tuple[dict[str, Any], ...]
    ) -> None:
        """ServiceMonitor, PodMonitor and PrometheusRule carry release=kube-prometheus-stack."""
        kinds = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
        monitoring = [doc for doc in base if doc["kind"] in kinds]
        assert {doc["kind"] for doc in monitoring} == kinds
        for doc in monitoring:
            assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack", doc["kind"]

    def test_release_label_can_be_overridden_by_an_overlay(self, tmp_path: Any) -> None:
        """The patch documented in the example overlay relabels every monitoring object, and nothing else."""
        (tmp_path / "kustomization.yaml").write_text(
            f"resources:\n  - {os.path.relpath(BASE, tmp_path)}\n"
            "patches:\n"
            "  - target:\n      group: monitoring.coreos.com\n"
            "    patch: |-\n"
            "      - op: replace\n        path: /metadata/labels/release\n        value: prom\n"
        )
        docs = build(str(tmp_path))
        releases = {doc["kind"]: doc["metadata"].get("labels", {}).get("release") for doc in docs}
        assert releases["ServiceMonitor"] == releases["PodMonitor"] == releases["PrometheusRule"] == "prom"
        assert releases["Deployment"] is None

    def test_prometheus_rule_is_alerts_yml(self, base: tuple[dict[str, Any], ...]) -> None:
        """The PrometheusRule carries exactly the groups of deploy/prometheus/alerts.yml."""
        rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
        assert one(base, "PrometheusRule")["spec"] == rules, "run deploy/k8s/render-prometheusrule.py"
