"""Floor (b), the database: the work of one cycle (credits_reserve, then credits_confirm
of what it reserved, each its own transaction, prepared) driven by pgbench, which ships
with the embedded PostgreSQL, against the same database the service uses."""

import re
import subprocess
import tempfile

from pgserver._commands import POSTGRES_BIN_PATH

PGBENCH = POSTGRES_BIN_PATH / "pgbench"
PGBENCH_THREADS = 2
# The service's lock timeout when a client gives no deadline is the statement timeout;
# pgbench waits as long as the service's clients would (their 10 s call timeout).
LOCK_TIMEOUT_MS = 10_000
TPS_PATTERN = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
FAILED_PATTERN = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)

# pgbench integers are 64-bit; a random key over this range does not repeat in a run.
SCRIPT = """\
\\set a random(0, {last_account})
\\set k random(1, 9000000000000000000)
SELECT reservation_id AS rid FROM credits_reserve('pgbench', :k::text, '\\x00'::bytea,
  '{prefix}' || :a::text, 1, interval '15 minutes', '', '', '', '{{}}'::jsonb, now(),
  {lock_ms}) \\gset
SELECT status FROM credits_confirm('{prefix}' || :a::text, :rid::uuid, 1, false, now(), {lock_ms});
"""


def run(
    url: str, *, clients: int, accounts: int, prefix: str, duration_seconds: float
) -> tuple[float, int]:
    """(cycles per second, failed cycles) of `clients` pgbench clients over `accounts`
    accounts named `prefix` + 0… (funded beforehand)."""
    script = SCRIPT.format(last_account=accounts - 1, prefix=prefix, lock_ms=LOCK_TIMEOUT_MS)
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as file:
        file.write(script)
        file.flush()
        done = subprocess.run(
            [
                str(PGBENCH),
                "--no-vacuum",
                "--protocol=prepared",
                f"--client={clients}",
                f"--jobs={PGBENCH_THREADS}",
                f"--time={max(1, round(duration_seconds))}",
                f"--file={file.name}",
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=duration_seconds + 120,
        )
    found = TPS_PATTERN.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"pgbench failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    failed = FAILED_PATTERN.search(done.stdout)
    return float(found.group(1)), int(failed.group(1)) if failed else 0
