"""How much of this process's CPUs other work keeps busy, so the thread count can follow the load.

Why (measured on 2 cores, Numba's OpenMP layer): a parallel kernel is a fork-join region whose end waits for
every thread of the team. Beside a process that keeps a core busy, one of edgedl's threads is often not
running when a region starts or ends, and the region waits for the scheduler to give it a time slice (a few
milliseconds) although the work itself takes microseconds. A model runs dozens of such regions, so a 0.1 ms
model took 8-12 ms at p90 at 2 threads beside one busy-loop process, while one thread took 0.16 ms.
OpenMP's static split and its end-of-region barrier leave no way for the calling thread to take over the
share of a worker that is not running, so edgedl runs with no more threads than the cores other work leaves
free.

:class:`LoadMonitor` reads the per-CPU counters of ``/proc/stat`` for the CPUs this process may run on, at
most once per ``interval`` seconds, and subtracts this process's own CPU time (its spinning OpenMP workers
included) to get the cores other processes used over that window. Reading costs ~20 µs, so at the default
interval (0.1 s) it adds nothing measurable to a run. Where ``/proc/stat`` is missing (not Linux) the
monitor reports no load and the thread count stays as configured.
"""
from __future__ import annotations

import os
import time

#: seconds between two readings of /proc/stat (the window over which the load is measured)
DEFAULT_INTERVAL = 0.1


def _affinity() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


class LoadMonitor:
    """Cores that other processes keep busy among the CPUs this process may use.

    Parameters
    ----------
    interval : float
        Minimum seconds between readings; :meth:`threads` between readings reuses the last decision.
    stat_path : str
        The ``/proc/stat`` file (tests point it at a fake one).
    cpus : list of int, optional
        CPU indices to watch (default: this process's affinity).
    clock, process_time : callables
        Wall clock and this process's CPU time in seconds (tests replace them).
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL, stat_path: str = "/proc/stat", cpus=None,
                 clock=time.monotonic, process_time=time.process_time):
        self.interval = float(interval)
        self.stat_path = stat_path
        self.cpus = list(cpus) if cpus is not None else _affinity()
        self._names = {f"cpu{c}".encode() for c in self.cpus}
        self._clock, self._process_time = clock, process_time
        self._last = None  # (wall, busy seconds of the watched CPUs, own CPU seconds)
        self._tick = 1.0 / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)
        #: cores other processes used over the last window (None before two readings or without /proc/stat)
        self.others: float | None = None
        self._readings = 0  # readings that produced a load figure
        self._seen = 0  # the reading the current decision was made on
        self._decided: int | None = None
        self._pending: int | None = None
        self.available = os.path.exists(stat_path)

    def _busy_seconds(self) -> float | None:
        """Non-idle seconds summed over the watched CPUs (steal counts as busy: the CPU was not ours)."""
        try:
            with open(self.stat_path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        busy = 0
        found = 0
        for line in data.split(b"\n"):
            if not line.startswith(b"cpu") or line.startswith(b"cpu "):
                continue
            fields = line.split()
            if fields[0] not in self._names or len(fields) < 5:
                continue
            try:
                ticks = [int(v) for v in fields[1:9]]
            except ValueError:
                return None
            # user nice system idle iowait irq softirq steal: idle and iowait are the CPU's free time
            busy += sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
            found += 1
        return busy * self._tick if found else None

    def _runnable_others(self) -> float | None:
        """Other runnable threads right now (``/proc/loadavg``'s running count less this one), capped at the
        watched CPUs: the first estimate, before a window of /proc/stat exists."""
        try:
            with open(os.path.join(os.path.dirname(self.stat_path), "loadavg"), "rb") as f:
                running = int(f.read().split()[3].split(b"/")[0])
        except (OSError, ValueError, IndexError):
            return None
        return float(min(max(running - 1, 0), len(self.cpus)))

    def sample(self) -> float | None:
        """Take a reading if the interval has passed; returns the cores others used (or None)."""
        now = self._clock()
        if self._last is not None and now - self._last[0] < self.interval:
            return self.others
        busy = self._busy_seconds()
        own = self._process_time()
        if busy is None:
            self.available = False
            return None
        if self._last is None:
            self.others = self._runnable_others()
            self._readings += self.others is not None
        else:
            wall = now - self._last[0]
            others = (busy - self._last[1] - (own - self._last[2])) / wall
            self.others = min(max(others, 0.0), float(len(self.cpus)))
            self._readings += 1
        self._last = (now, busy, own)
        return self.others

    def threads(self, want: int) -> int:
        """How many of ``want`` threads to run now: no more than the cores other work leaves free (rounded to
        the nearest core, at least one). A drop takes effect at once; a rise only once two readings agree,
        so a passing burst does not make the count swing."""
        if self.sample() is None:
            return want
        if self._readings != self._seen:
            self._seen = self._readings
            free = max(1, min(len(self.cpus), int(len(self.cpus) - self.others + 0.5)))
            if self._decided is None or free <= self._decided or self._pending == free:
                self._decided, self._pending = free, None
            else:
                self._pending = free
        return want if self._decided is None else min(self._decided, want)
