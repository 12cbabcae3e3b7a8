"""How busy the machine was beside a run: the CPU time other processes took while it trained,
so a run's seconds can be told apart from those of a run made alone."""
from __future__ import annotations

import os
import time


def _busy_cpu_seconds() -> float | None:
    """Every CPU's busy time since boot (user, nice, system, irq, softirq, steal), from /proc/stat;
    None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(values) < 8:
        return None
    idle, iowait = values[3], values[4]
    return (sum(values) - idle - iowait) / os.sysconf("SC_CLK_TCK")


class OtherWork:
    """Started when training starts; `cores()` when it ends: the average number of cores that
    other processes (and other virtual machines, as steal time) kept busy meanwhile."""

    def __init__(self) -> None:
        self.started = (time.perf_counter(), _busy_cpu_seconds(), time.process_time())

    def cores(self) -> float | None:
        wall, busy, own = time.perf_counter(), _busy_cpu_seconds(), time.process_time()
        wall0, busy0, own0 = self.started
        if busy is None or busy0 is None or wall - wall0 < 1.0:
            return None
        # Clock ticks are 10 ms: a short run's share can come out slightly negative.
        return round(max(0.0, ((busy - busy0) - (own - own0)) / (wall - wall0)), 2)
