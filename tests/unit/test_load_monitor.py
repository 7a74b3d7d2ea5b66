"""The load monitor: cores other processes keep busy, from /proc/stat windows, and the thread count it picks."""
from __future__ import annotations

import os

import pytest

from edgedl.load_monitor import LoadMonitor

TICK = 1.0 / os.sysconf("SC_CLK_TCK")


class FakeProc:
    """A fake /proc/stat and /proc/loadavg whose counters advance as the test says."""

    def __init__(self, tmp_path, cpus=2, running=1):
        self.dir = tmp_path
        self.ticks = [[0] * 8 for _ in range(cpus)]  # user nice system idle iowait irq softirq steal
        self.now = 0.0
        self.own = 0.0
        (tmp_path / "loadavg").write_text(f"0.10 0.20 0.30 {running}/100 1234\n")
        self.write()

    @property
    def path(self):
        return str(self.dir / "stat")

    def write(self):
        total = [sum(col) for col in zip(*self.ticks)]
        lines = ["cpu  " + " ".join(map(str, total))]
        lines += [f"cpu{i} " + " ".join(map(str, t)) for i, t in enumerate(self.ticks)]
        lines += ["intr 1 2 3", "ctxt 100", "procs_running 2"]
        (self.dir / "stat").write_text("\n".join(lines) + "\n")

    def advance(self, seconds, busy_per_cpu, own=0.0):
        """``seconds`` pass; CPU i is busy for busy_per_cpu[i] of them; this process used ``own`` CPU-s."""
        n = round(seconds / TICK)
        for t, b in zip(self.ticks, busy_per_cpu):
            busy = round(n * b)
            t[0] += busy
            t[3] += n - busy
        self.now += seconds
        self.own += own
        self.write()

    def monitor(self, **kw):
        return LoadMonitor(stat_path=self.path, cpus=kw.pop("cpus", range(len(self.ticks))),
                           clock=lambda: self.now, process_time=lambda: self.own, **kw)


def test_idle_machine_keeps_every_thread(tmp_path):
    fake = FakeProc(tmp_path)
    mon = fake.monitor()
    assert mon.threads(2) == 2  # first reading: loadavg says only this thread runs
    fake.advance(0.2, [0.5, 0.5], own=0.2)  # all the busy time is ours
    assert mon.threads(2) == 2
    assert mon.others == pytest.approx(0.0, abs=0.06)


def test_one_busy_core_drops_to_one_thread_at_once(tmp_path):
    fake = FakeProc(tmp_path)
    mon = fake.monitor()
    assert mon.threads(2) == 2
    fake.advance(0.2, [1.0, 0.5], own=0.1)  # another process keeps one core busy
    assert mon.others == pytest.approx(1.0, abs=0.06) or mon.threads(2) == 1
    assert mon.threads(2) == 1
    assert mon.threads(4) == 1  # a higher ceiling does not help


def test_first_reading_uses_runnable_count(tmp_path):
    fake = FakeProc(tmp_path, running=3)  # this thread + two others runnable now
    assert fake.monitor().threads(2) == 1


def test_rise_needs_two_readings(tmp_path):
    fake = FakeProc(tmp_path)
    mon = fake.monitor()
    mon.threads(2)
    fake.advance(0.2, [1.0, 0.5], own=0.1)
    assert mon.threads(2) == 1
    fake.advance(0.2, [0.25, 0.25], own=0.1)  # the other process stopped
    assert mon.threads(2) == 1  # one reading is not enough
    assert mon.threads(2) == 1  # nor is calling again within the interval
    fake.advance(0.2, [0.25, 0.25], own=0.1)
    assert mon.threads(2) == 2


def test_readings_wait_for_the_interval(tmp_path):
    fake = FakeProc(tmp_path)
    mon = fake.monitor(interval=0.5)
    mon.threads(2)
    fake.advance(0.2, [1.0, 1.0], own=0.0)
    assert mon.threads(2) == 2  # too soon for a second reading
    fake.advance(0.4, [1.0, 1.0], own=0.0)
    assert mon.threads(2) == 1
    assert mon.others == pytest.approx(2.0 * 0.6 / 0.6 - 0.0, abs=0.2)


def test_only_watched_cpus_count(tmp_path):
    fake = FakeProc(tmp_path, cpus=4)
    mon = fake.monitor(cpus=[2, 3])
    mon.threads(2)
    fake.advance(0.2, [1.0, 1.0, 0.0, 0.0], own=0.0)  # others busy on CPUs this process may not use
    assert mon.threads(2) == 2


def test_steal_time_counts_as_busy(tmp_path):
    fake = FakeProc(tmp_path)
    mon = fake.monitor()
    mon.threads(2)
    n = round(0.2 / TICK)
    for t in fake.ticks:
        t[7] += n  # the hypervisor gave both CPUs to someone else
    fake.now += 0.2
    fake.write()
    assert mon.threads(2) == 1


@pytest.mark.parametrize("content", ["", "garbage\n", "cpu0 a b c d e f g h\n", "\x00\xff" * 10])
def test_odd_stat_files_leave_the_count_alone(tmp_path, content):
    (tmp_path / "stat").write_text(content)
    mon = LoadMonitor(stat_path=str(tmp_path / "stat"), cpus=[0, 1])
    assert mon.threads(2) == 2
    assert mon.threads(1) == 1


def test_missing_stat_file(tmp_path):
    mon = LoadMonitor(stat_path=str(tmp_path / "nope"), cpus=[0, 1])
    assert mon.threads(2) == 2
    assert not mon.available


def test_real_proc_stat_reads():
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat here")
    mon = LoadMonitor(interval=0.0)
    n = mon.threads(len(mon.cpus))
    assert 1 <= n <= len(mon.cpus)
    assert mon.sample() is not None


def test_configure_threads_follows_the_monitor(monkeypatch):
    import numba

    from edgedl import threads

    class Busy:
        def threads(self, want):
            return 1

    monkeypatch.setattr(threads, "_monitor", Busy())
    monkeypatch.setattr(threads, "_follow_load", True)
    before = numba.get_num_threads()
    try:
        assert threads.configure_threads(None) == 1
        assert numba.get_num_threads() == 1
        monkeypatch.setattr(threads, "_follow_load", False)
        assert threads.configure_threads(None) == numba.config.NUMBA_NUM_THREADS
    finally:
        numba.set_num_threads(before)


def test_set_num_threads_switches_following(monkeypatch):
    from edgedl import threads

    monkeypatch.setattr(threads, "_follow_load", True)
    try:
        threads.set_num_threads(None, follow_load=False)
        assert not threads.follows_load()
        with pytest.raises(Exception, match="positive integer"):
            threads.set_num_threads(True)
    finally:
        threads.set_num_threads(None)
