"""A short `make chaos` (docs/proof.md): its own PostgreSQL, Redis, two service
instances and the gateway, clients under every kind of fault, fuzzing, then the checks.
The full run is `make chaos`; this one proves in tens of seconds that the machinery
works and that a short run finds nothing."""

import json
import signal
import subprocess
import sys
from pathlib import Path

from chaos.faults import KINDS

RUN_SECONDS = 40
# Start-up, the clients' last retries and the checks, on a loaded machine.
RUN_TIMEOUT_SECONDS = 240
STOP_TIMEOUT_SECONDS = 60
ROOT = Path(__file__).resolve().parents[2]


def test_a_short_chaos_run_injects_every_fault_and_finds_nothing(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "chaos",
        *("--duration", str(RUN_SECONDS), "--clients", "6", "--accounts", "3"),
        *("--fault-interval", "0.5", "--fuzzers", "1", "--report", str(report_path)),
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = process.communicate(timeout=RUN_TIMEOUT_SECONDS)
    finally:
        if process.poll() is None:
            # SIGTERM lets the run stop every process it started.
            process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
    assert report_path.exists(), err.decode()[-3000:]
    report = json.loads(report_path.read_text())
    summary = {k: v for k, v in report.items() if k not in ("statuses", "fuzz_statuses")}
    assert process.returncode == 0, json.dumps(summary)
    assert report["ok"], json.dumps(summary)
    assert (report["violations"], report["unexpected_statuses"]) == (0, 0)
    assert set(report["faults"]) == set(KINDS), report["faults"]
    assert report["operations"] > 100
    assert report["fuzzed_inputs"] > 100
    assert report["replays"] > 0
