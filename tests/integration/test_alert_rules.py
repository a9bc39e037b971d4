"""The alert rules (deploy/prometheus/credits.rules.yml) load in Prometheus, pass their unit
tests (a firing and a quiet case for every alert), and each says what it is, how bad, and
where the operator's guide says what to do."""

import subprocess
from collections import Counter

import yaml

from tests.prometheus_support import REPO, RULE_TESTS, RULES, alert_rules, tool
from tests.unit.test_doc_links import anchors

OPERATIONS = REPO / "docs" / "operations.md"
SEVERITIES = {"critical", "warning"}
PROMTOOL_TIMEOUT_SECONDS = 120


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_SECONDS,
        check=False,
    )


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    firing: Counter[str] = Counter()
    quiet: Counter[str] = Counter()
    for case in cases:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet)[check["alertname"]] += 1
    for rule in alert_rules():
        name = str(rule["alert"])
        assert firing[name] >= 1, f"{name} is never shown firing"
        assert quiet[name] >= 1, f"{name} is never shown quiet"


def test_every_alert_has_a_summary_a_severity_and_a_runbook_that_exists() -> None:
    sections = anchors(OPERATIONS)
    for rule in alert_rules():
        annotations = rule["annotations"]
        labels = rule["labels"]
        assert isinstance(annotations, dict)
        assert isinstance(labels, dict)
        assert annotations.get("summary"), rule["alert"]
        assert labels.get("severity") in SEVERITIES, rule["alert"]
        page, _, section = str(annotations.get("runbook", "")).partition("#")
        assert page == "docs/operations.md", rule["alert"]
        assert section in sections, f"{rule['alert']}: no section #{section} in {OPERATIONS.name}"
