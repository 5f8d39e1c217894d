#!/usr/bin/env python3
"""Write k8s/base/prometheusrule.yaml from prometheus/alerts.yml (the one source of the rules).

Run after editing alerts.yml; ``--check`` only says whether the file is up to date
(deploy/validate.sh and tests/deploy fail while the two differ).
"""

import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[1]
HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/k8s/render-prometheusrule.py: edit
# alerts.yml and run the script. The Prometheus operator loads these rules.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: switchboard
  labels:
    app.kubernetes.io/name: switchboard
    app.kubernetes.io/component: worker
    # kube-prometheus-stack's Prometheus selects rules by its Helm release name (README, "Operating").
    release: kube-prometheus-stack
spec:
"""


def render() -> str:
    lines = (DEPLOY / "prometheus" / "alerts.yml").read_text().splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)  # the file's header comment
    return HEADER + "".join(f"  {line}\n" if line.strip() else "\n" for line in lines)


if __name__ == "__main__":
    target = DEPLOY / "k8s" / "base" / "prometheusrule.yaml"
    if "--check" in sys.argv[1:]:
        if target.read_text() != render():
            sys.exit(f"{target} is out of date: run {Path(__file__).relative_to(DEPLOY.parent)}")
    else:
        target.write_text(render())
