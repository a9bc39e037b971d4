"""What the processes under test use, read from /proc (Linux): CPU time and memory of a
process and all its descendants."""

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
# /proc/<pid>/stat fields after the command name: state is field 3, ppid 4, utime 14,
# stime 15 (1-based, man 5 proc).
PPID_FIELD, UTIME_FIELD, STIME_FIELD = 4, 14, 15


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after its last ")".
    return ["", "", *raw[raw.rindex(")") + 2 :].split()]


def tree(root: int) -> list[int]:
    """`root` and every process descended from it."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[PPID_FIELD - 1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used so far."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[UTIME_FIELD - 1]) + int(fields[STIME_FIELD - 1])
    return ticks / CLOCK_TICKS_PER_SECOND


@dataclass(frozen=True)
class Memory:
    rss_bytes: int  # resident pages, shared ones counted in every process
    pss_bytes: int  # shared pages divided among the processes that share them


def memory(pids: list[int]) -> Memory:
    rss = pss = 0
    for pid in pids:
        try:
            lines = (PROC / str(pid) / "smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            name, _, value = line.partition(":")
            if name == "Rss":
                rss += int(value.split()[0]) * 1024
            elif name == "Pss":
                pss += int(value.split()[0]) * 1024
    return Memory(rss, pss)
