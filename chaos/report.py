"""What a chaos run counts and what it prints at the end. Any violation or unexpected
status makes the run fail."""

import json
from collections import Counter
from dataclasses import dataclass, field

# The report lists this many examples of each kind of problem; the counts are complete.
EXAMPLES_SHOWN_MAX = 20


@dataclass
class Report:
    operations: int = 0
    unacknowledged: int = 0
    replays: int = 0
    fuzzed: int = 0
    duration_seconds: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    fuzz_statuses: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    unexpected_statuses: list[str] = field(default_factory=list)
    known_defects: Counter[str] = field(default_factory=Counter)
    checks: list[str] = field(default_factory=list)

    def status(self, method: str, code: str) -> None:
        self.statuses[f"{method} {code}"] += 1

    def violation(self, text: str) -> None:
        self.violations.append(text)

    def unexpected(self, text: str) -> None:
        self.unexpected_statuses.append(text)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.unexpected_statuses

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "duration_seconds": round(self.duration_seconds, 1),
            "operations": self.operations,
            "rpc_calls": sum(self.statuses.values()),
            "unacknowledged": self.unacknowledged,
            "replays": self.replays,
            "faults": dict(sorted(self.faults.items())),
            "fuzzed_inputs": self.fuzzed,
            "fuzz_statuses": dict(sorted(self.fuzz_statuses.items())),
            "violations": len(self.violations),
            "unexpected_statuses": len(self.unexpected_statuses),
            "violation_examples": self.violations[:EXAMPLES_SHOWN_MAX],
            "unexpected_examples": self.unexpected_statuses[:EXAMPLES_SHOWN_MAX],
            "checks": self.checks,
            "statuses": dict(sorted(self.statuses.items())),
        }

    def text(self) -> str:
        return json.dumps(self.as_dict(), indent=2)
