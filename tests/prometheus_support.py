"""Prometheus's own tools for the monitoring tests: promtool and prometheus from the
distribution's package, installed by scripts/ensure-prometheus.sh when missing (as `make
test` does before the suite), and the metric names an expression reads."""

import re
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "credits.rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "credits.rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "credits.json"
ENSURE_SCRIPT = REPO / "scripts" / "ensure-prometheus.sh"
INSTALL_TIMEOUT_SECONDS = 600

# Every metric of ours is named credits_…; PromQL functions and keywords never are.
METRIC_NAME = re.compile(r"\bcredits_[a-z0-9_]+\b")
# A label matcher's value ({method="Confirm"}) or a template's text is no metric name.
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def tool(name: str) -> str:
    """The path of promtool or prometheus, installed first if it is not on PATH."""
    found = shutil.which(name)
    if found is None:
        subprocess.run([str(ENSURE_SCRIPT)], check=True, timeout=INSTALL_TIMEOUT_SECONDS)
        found = shutil.which(name)
    assert found is not None, f"{name} is not on PATH after {ENSURE_SCRIPT.name}"
    return found


def alert_rules() -> list[dict[str, object]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def metric_names(expression: str) -> set[str]:
    """The metric names an expression reads, a histogram's series under their own names."""
    return set(METRIC_NAME.findall(QUOTED.sub('""', expression)))
