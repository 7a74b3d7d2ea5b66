"""Board state around a benchmark: clocks, governors, temperatures, throttling, power and CPU load.

Everything is read from files under a ``root`` folder (``"/"`` on a live machine; tests point it at a fake tree).
A missing, unreadable or garbage file reads as None (or is left out of a dict), never as an exception, and a
value that was not measured is None, never a guess.

Sources and units:

- CPU clocks: ``/sys/devices/system/cpu/cpuN/cpufreq/scaling_governor``, ``scaling_cur_freq`` and
  ``cpuinfo_max_freq`` (kHz in the files, MHz here).
- Temperatures: ``/sys/class/thermal/thermal_zoneN/temp`` (millidegrees in the files, °C here), named by the zone's
  ``type`` file (``cpu-thermal``, ``CPU-therm``, ...; a repeated type gets ``_2``, ``_3``). The CPU temperature is
  the first zone whose type names the CPU (``cpu-thermal`` on a Pi, ``CPU-therm`` on a Jetson Nano), else
  ``x86_pkg_temp``, else the first SoC zone, else the first zone. A reading outside -60..200 °C (a sensor not
  fitted) is None. Jetson's ``PMIC-Die`` zone reads a fixed 100 °C and is left out of the "hot" checks.
- Raspberry Pi throttling: the firmware's ``get_throttled`` bits (:func:`decode_throttled`), from sysfs
  ``/sys/devices/platform/soc/soc:firmware/get_throttled`` (hex text), else, on the live machine only,
  ``vcgencmd get_throttled``. Bits 0-3 are the state now, 16-19 the same conditions since boot.
- Jetson power: the INA3221 monitors under ``/sys/bus/i2c/devices`` (a device whose ``name`` contains
  ``ina3221``). JetPack >= 5: ``hwmon/hwmonK/inN_label``, ``inN_input`` (mV) and ``currN_input`` (mA);
  JetPack 4: ``iio:deviceK/rail_name_N`` and ``in_powerN_input`` (mW). Rails are in mW; the board's total is its
  input rail (``VDD_IN`` on Orin and Xavier NX, ``POM_5V_IN`` on Nano and TX2) or else the sum of the rails.
- CPU load: the ``cpu`` line of ``/proc/stat``: busy = user + nice + system + irq + softirq + steal ticks (guest
  time is already inside user and nice), divided by USER_HZ to give CPU seconds.
- Board model: ``/proc/device-tree/model`` (or ``/sys/firmware/devicetree/base/model``), NUL stripped.

:func:`read_state` takes a snapshot (before and after a benchmark); :class:`Sampler` samples the light readings in
a background thread of the parent process while a child runs an engine; :func:`environment` builds the report's
``"environment"`` section and its warnings.
"""
from __future__ import annotations

import collections
import math
import os
import re
import shutil
import subprocess
import threading
import time

from edgedl.targets.detect import _read, _text

#: a temperature at or above this (°C) on any sensor gets the "near the thermal limit" warning
HOT_C = 80.0
#: other processes using at least this many cores during the runs get the "busy machine" warning
BUSY_CORES = 0.25
#: with the performance governor, a clock below this fraction of its maximum gets a warning
LOW_FREQ_FRACTION = 0.9
#: seconds between two runs of vcgencmd (spawning it costs CPU on the board being measured)
VCGENCMD_INTERVAL = 1.0

_CPU_DIR = "sys/devices/system/cpu"
_THERMAL_DIR = "sys/class/thermal"
_I2C_DIR = "sys/bus/i2c/devices"
_THROTTLED_SYSFS = "sys/devices/platform/soc/soc:firmware/get_throttled"
_TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
_FIXED_ZONES = ("pmic",)  # Jetson Nano/TX's PMIC-Die zone always reads 100 °C
_THROTTLE_NAMES = {0: "under-voltage", 1: "ARM frequency capped", 2: "throttled", 3: "soft temperature limit"}
_UNDER_VOLTAGE = (1 << 0) | (1 << 16)
_NOW_BITS, _BOOT_BITS = 0xF, 0xF0000


# ---------------------------------------------------------------------------------------------------
# reading files
# ---------------------------------------------------------------------------------------------------
def _listdir(root, rel: str) -> list[str]:
    try:
        return sorted(os.listdir(os.path.join(root, rel)))
    except (OSError, ValueError):
        return []


def _numbered(names: list[str], pattern: str) -> list[tuple[int, str]]:
    """(number, name) of the names matching ``pattern`` (one ``(\\d+)`` group), by number."""
    regex = re.compile(pattern + "$")
    return sorted((int(m.group(1)), n) for n in names if (m := regex.match(n)))


def _number(root, rel: str) -> float | None:
    text = _text(root, rel)
    try:
        value = float(text.strip()) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _word(root, rel: str) -> str | None:
    """A short printable text file, stripped (None for junk)."""
    data = _read(root, rel)
    try:
        text = data.strip(b"\0 \t\r\n").decode("utf-8") if data else ""
    except UnicodeDecodeError:
        return None
    return text if text and len(text) <= 200 and text.isprintable() else None


def _temp(root, rel: str) -> float | None:
    value = _number(root, rel)
    return value / 1000.0 if value is not None and -60_000 < value < 200_000 else None


def _cpus(root) -> list[int]:
    return [n for n, _ in _numbered(_listdir(root, _CPU_DIR), r"cpu(\d+)")]


def _thermal_zones(root) -> list[tuple[str, str]]:
    """(name, temperature file) of every thermal zone in zone order; name = the zone's type, made unique."""
    zones: list[tuple[str, str]] = []
    seen: set[str] = set()
    for _, zone in _numbered(_listdir(root, _THERMAL_DIR), r"thermal_zone(\d+)"):
        base = f"{_THERMAL_DIR}/{zone}"
        name = _word(root, f"{base}/type") or zone
        key, n = name, 2
        while key in seen:
            key, n = f"{name}_{n}", n + 1
        seen.add(key)
        zones.append((key, f"{base}/temp"))
    return zones


def _cpu_zone(names: list[str]) -> str | None:
    """The zone that measures the CPU (see the module docstring for the order)."""
    for word in ("cpu", "x86_pkg_temp", "soc"):
        for name in names:
            if word in name.lower():
                return name
    return names[0] if names else None


def _fixed_zone(name: str) -> bool:
    return any(word in name.lower() for word in _FIXED_ZONES)


def _proc_stat_busy(root) -> float | None:
    """Busy CPU seconds of all CPUs since boot from ``/proc/stat``'s ``cpu`` line."""
    data = _read(root, "proc/stat")
    for line in (data or b"").split(b"\n"):
        fields = line.split()
        if fields[:1] != [b"cpu"] or len(fields) < 6:
            continue
        try:
            ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
        except ValueError:
            return None
        return (sum(ticks) - ticks[3] - ticks[4]) / _user_hz()
    return None


def _user_hz() -> float:
    try:
        return float(os.sysconf("SC_CLK_TCK")) or 100.0
    except (AttributeError, ValueError, OSError):
        return 100.0


def _board_model(root) -> str | None:
    for rel in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        data = _read(root, rel)
        if data is not None:
            try:
                model = data.split(b"\0")[0].decode("utf-8").strip()
            except UnicodeDecodeError:
                return None
            return model if model and len(model) <= 200 and model.isprintable() else None
    return None


# ---------------------------------------------------------------------------------------------------
# Raspberry Pi throttling
# ---------------------------------------------------------------------------------------------------
def decode_throttled(bits: int) -> list[str]:
    """Names of the set bits of a Raspberry Pi ``get_throttled`` value, in bit order (other bits are ignored)."""
    if not isinstance(bits, int) or bits < 0:
        return []
    names = [f"{name} now" for bit, name in _THROTTLE_NAMES.items() if bits >> bit & 1]
    return names + [f"{name} since boot" for bit, name in _THROTTLE_NAMES.items() if bits >> (bit + 16) & 1]


def _parse_hex(text: str | None) -> int | None:
    try:
        value = int(text.strip(), 16) if text else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


def _vcgencmd_throttled(path: str) -> int | None:
    try:
        out = subprocess.run([path, "get_throttled"], capture_output=True, text=True, timeout=2, check=False).stdout
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    m = re.search(r"throttled=0x([0-9a-fA-F]+)", out or "")
    return int(m.group(1), 16) if m else None


class ThrottleReader:
    """Reads the Pi's throttled bits: from sysfs when the firmware driver offers them (cheap, every call), else
    from ``vcgencmd get_throttled`` (only when ``use_vcgencmd``, default: ``root`` is ``"/"``), run at most once
    per ``min_interval`` seconds, reusing the last value in between. Boards without either read None."""

    def __init__(self, root="/", *, use_vcgencmd: bool | None = None, min_interval: float = VCGENCMD_INTERVAL,
                 clock=time.monotonic):
        self.root = root
        self.sysfs = os.path.isfile(os.path.join(root, _THROTTLED_SYSFS))
        if use_vcgencmd is None:
            use_vcgencmd = os.path.abspath(os.fspath(root)) == os.sep
        self.vcgencmd = shutil.which("vcgencmd") if use_vcgencmd and not self.sysfs else None
        self.min_interval = float(min_interval)
        self._clock = clock
        self._last: tuple[float, int | None] | None = None

    def read(self) -> int | None:
        """The throttled bits now (or as of the last vcgencmd run), or None."""
        if self.sysfs:
            return _parse_hex(_text(self.root, _THROTTLED_SYSFS))
        if self.vcgencmd is None:
            return None
        now = self._clock()
        if self._last is None or now - self._last[0] >= self.min_interval:
            self._last = (now, _vcgencmd_throttled(self.vcgencmd))
        return self._last[1]


# ---------------------------------------------------------------------------------------------------
# Jetson power rails
# ---------------------------------------------------------------------------------------------------
class PowerRails:
    """The INA3221 power rails of a Jetson, found once at construction; :meth:`read` reads them (cheap).

    ``rails`` lists (name, files): one mW file (JetPack 4) or a mV and a mA file (JetPack >= 5). ``total_rail``
    is ``"VDD_IN"`` / ``"POM_5V_IN"`` when the board has that input rail, ``"sum of rails"`` otherwise, None
    without rails.
    """

    def __init__(self, root="/"):
        self.root = root
        self.rails: list[tuple[str, tuple[str, ...]]] = []
        for dev in _listdir(root, _I2C_DIR):
            base = f"{_I2C_DIR}/{dev}"
            if "ina3221" not in (_word(root, f"{base}/name") or "").lower():
                continue
            for _, hwmon in _numbered(_listdir(root, f"{base}/hwmon"), r"hwmon(\d+)"):
                self._hwmon(f"{base}/hwmon/{hwmon}")
            for _, iio in _numbered(_listdir(root, base), r"iio:device(\d+)"):
                self._iio(f"{base}/{iio}")
        names = [name for name, _ in self.rails]
        self.total_rail = next((r for r in _TOTAL_RAILS if r in names), "sum of rails" if names else None)

    def _hwmon(self, folder: str) -> None:
        names = set(_listdir(self.root, folder))
        for n, label_file in _numbered(list(names), r"in(\d+)_label"):
            # in7 is the sum of the shunt voltages; in4-6 (shunt voltages) have no label
            if n != 7 and f"in{n}_input" in names and f"curr{n}_input" in names:
                files = (f"{folder}/in{n}_input", f"{folder}/curr{n}_input")
                self._add(_word(self.root, f"{folder}/{label_file}"), files)

    def _iio(self, folder: str) -> None:
        names = set(_listdir(self.root, folder))
        for n, label_file in _numbered(list(names), r"rail_name_(\d+)"):
            if f"in_power{n}_input" in names:
                self._add(_word(self.root, f"{folder}/{label_file}"), (f"{folder}/in_power{n}_input",))

    def _add(self, label: str | None, files: tuple[str, ...]) -> None:
        if not label or label.lower().startswith("sum of shunt") or "NC" in re.split(r"[^A-Za-z0-9]+", label):
            return  # unlabelled, the shunt-sum channel, or "NC" (not connected)
        taken = {name for name, _ in self.rails}
        name, k = label, 2
        while name in taken:
            name, k = f"{label}_{k}", k + 1
        self.rails.append((name, files))

    def read(self) -> dict[str, float]:
        """Power of each rail in mW (rails whose files do not read are left out)."""
        out = {}
        for name, files in self.rails:
            values = [_number(self.root, f) for f in files]
            if None not in values:
                out[name] = values[0] if len(values) == 1 else values[0] * values[1] / 1000.0
        return out

    def total(self, values: dict[str, float]) -> float | None:
        """The board's power in mW from a :meth:`read` result (None when a rail it needs did not read)."""
        if self.total_rail == "sum of rails":
            return float(sum(values.values())) if len(values) == len(self.rails) else None
        return values.get(self.total_rail) if self.total_rail else None


# ---------------------------------------------------------------------------------------------------
# snapshots and sampling
# ---------------------------------------------------------------------------------------------------
def read_state(root="/", *, rails: PowerRails | None = None, throttle: ThrottleReader | None = None) -> dict:
    """A snapshot of the board (see the module docstring for sources and units). CPU-keyed dicts use the CPU
    index; ``rails`` / ``throttle`` reuse readers found earlier (default: found now)."""
    governors, freq, freq_max = {}, {}, {}
    for cpu in _cpus(root):
        base = f"{_CPU_DIR}/cpu{cpu}/cpufreq"
        governor = _word(root, f"{base}/scaling_governor")
        cur, top = _number(root, f"{base}/scaling_cur_freq"), _number(root, f"{base}/cpuinfo_max_freq")
        if governor is not None:
            governors[cpu] = governor
        if cur is not None:
            freq[cpu] = cur / 1000.0
        if top is not None:
            freq_max[cpu] = top / 1000.0
    zones = _thermal_zones(root)
    temps = {name: t for name, path in zones if (t := _temp(root, path)) is not None}
    rails = rails if rails is not None else PowerRails(root)
    power = rails.read()
    throttle = throttle if throttle is not None else ThrottleReader(root)
    return {"time": time.monotonic(), "board_model": _board_model(root), "governors": governors,
            "freq_mhz": freq, "freq_max_mhz": freq_max, "temps_c": temps,
            "cpu_temp_c": temps.get(_cpu_zone([name for name, _ in zones])), "throttled": throttle.read(),
            "power_mw": power, "power_rail": rails.total_rail, "power_total_mw": rails.total(power),
            "cpu_busy_s": _proc_stat_busy(root)}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class Sampler:
    """Samples the light board readings every ``interval`` seconds in a background thread of this process.

    Each sample is ``(time.monotonic(), reading)`` in ``samples`` (a deque of at most ``max_samples``) with
    reading = {"power_mw" (board total), "temp_c" (CPU zone), "temp_c_hottest", "hottest_zone" (hottest zone
    but PMIC-Die), "freq_mhz_min", "freq_mhz_max", "freq_fraction_min" (lowest cur / max over the CPUs),
    "throttled" (Pi bits; vcgencmd at most once a second)}. Files are found once, at construction. The thread
    calls :meth:`sample_once`; an exception there is counted in ``errors`` and sampling goes on.
    Use ``with Sampler(): ...`` or :meth:`start` / :meth:`stop`; :meth:`window` summarizes a time span.
    """

    def __init__(self, root="/", interval: float = 0.05, *, clock=time.monotonic, max_samples: int = 100_000,
                 throttle: ThrottleReader | None = None):
        self.root, self.interval, self._clock = root, float(interval), clock
        self.rails = PowerRails(root)
        self.throttle = throttle if throttle is not None else ThrottleReader(root, clock=clock)
        self._zones = [(name, path, _fixed_zone(name)) for name, path in _thermal_zones(root)]
        self._cpu_zone = _cpu_zone([name for name, _, _ in self._zones])
        self._freqs = [(f"{_CPU_DIR}/cpu{c}/cpufreq/scaling_cur_freq",
                        _number(root, f"{_CPU_DIR}/cpu{c}/cpufreq/cpuinfo_max_freq")) for c in _cpus(root)]
        self.samples: collections.deque[tuple[float, dict]] = collections.deque(maxlen=max_samples)
        self.errors = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample_once(self, now: float | None = None) -> dict:
        """Take one reading, store it with time ``now`` (default: the clock) and return it."""
        t = self._clock() if now is None else now
        temps = {name: (_temp(self.root, path), fixed) for name, path, fixed in self._zones}
        hot = [(v, name) for name, (v, fixed) in temps.items() if v is not None and not fixed]
        hottest = max(hot) if hot else (None, None)
        cur = [(f / 1000.0, top) for path, top in self._freqs if (f := _number(self.root, path)) is not None]
        fractions = [mhz * 1000.0 / top for mhz, top in cur if top]
        reading = {"power_mw": self.rails.total(self.rails.read()),
                   "temp_c": temps.get(self._cpu_zone, (None,))[0],
                   "temp_c_hottest": hottest[0], "hottest_zone": hottest[1],
                   "freq_mhz_min": min(m for m, _ in cur) if cur else None,
                   "freq_mhz_max": max(m for m, _ in cur) if cur else None,
                   "freq_fraction_min": min(fractions) if fractions else None,
                   "throttled": self.throttle.read()}
        with self._lock:
            self.samples.append((t, reading))
        return reading

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception as e:  # a failed reading must not end the sampling
                self.errors += 1
                self.last_error = repr(e)
            self._stop.wait(self.interval)

    def start(self) -> Sampler:
        """Start the sampling thread (no-op when it runs)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="edgedl-board-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> Sampler:
        """Stop the sampling thread and wait for it (at most a few seconds: a vcgencmd run can take 2 s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        return self

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def window(self, t0: float, t1: float) -> dict:
        """Summary of the samples with ``t0 <= time <= t1``: {"power_w" (mean board power, W), "temp_c_min",
        "temp_c_max", "temp_c_first", "temp_c_last" (CPU zone), "temp_c_hottest", "hottest_zone" (any zone but
        PMIC-Die), "freq_mhz_min", "freq_mhz_max" (over CPUs and samples), "freq_fraction_min" (lowest cur / max),
        "throttled_bits" (OR), "samples" (count in the window)}. A window with no sample (a run shorter than the
        interval) is summarized from the nearest sample before and after it. Values no sample measured are None."""
        with self._lock:
            samples = list(self.samples)
        samples.sort(key=lambda s: s[0])
        used = [r for t, r in samples if t0 <= t <= t1]
        inside = len(used)
        if not used:
            before = max((s for s in samples if s[0] < t0), key=lambda s: s[0], default=None)
            after = min((s for s in samples if s[0] > t1), key=lambda s: s[0], default=None)
            used = [s[1] for s in (before, after) if s is not None]

        def values(key):
            return [r[key] for r in used if r.get(key) is not None]

        power, temps, hottest = _mean(values("power_mw")), values("temp_c"), values("temp_c_hottest")
        bits = values("throttled")
        hot = max(((r["temp_c_hottest"], r["hottest_zone"]) for r in used if r.get("temp_c_hottest") is not None),
                  default=(None, None))
        return {"power_w": power / 1000.0 if power is not None else None,
                "temp_c_max": max(temps, default=None), "temp_c_min": min(temps, default=None),
                "temp_c_first": temps[0] if temps else None, "temp_c_last": temps[-1] if temps else None,
                "temp_c_hottest": max(hottest, default=None), "hottest_zone": hot[1],
                "freq_mhz_min": min(values("freq_mhz_min"), default=None),
                "freq_mhz_max": max(values("freq_mhz_max"), default=None),
                "freq_fraction_min": min(values("freq_fraction_min"), default=None),
                "throttled_bits": _or(bits) if bits else None, "samples": inside}


def _or(bits: list[int]) -> int:
    out = 0
    for b in bits:
        out |= b
    return out


# ---------------------------------------------------------------------------------------------------
# the report's environment section
# ---------------------------------------------------------------------------------------------------
def other_load_cores(before_busy_s, after_busy_s, wall_s, own_cpu_s) -> float | None:
    """Cores other processes kept busy on average: (busy CPU seconds of the machine over the span less the
    benchmark's own CPU seconds) / wall seconds, at least 0. None when a figure is missing or wall_s <= 0."""
    if None in (before_busy_s, after_busy_s, wall_s, own_cpu_s) or wall_s <= 0:
        return None
    return max(0.0, (after_busy_s - before_busy_s) - own_cpu_s) / wall_s


def _first_cpu(values):
    if not isinstance(values, dict) or not values:
        return None
    try:
        return values[min(values, key=int)]
    except (TypeError, ValueError):
        return next(iter(values.values()))


def _governor(governors: dict) -> str | None:
    if not isinstance(governors, dict) or not governors:
        return None
    try:
        ordered = [governors[k] for k in sorted(governors, key=int)]
    except (TypeError, ValueError):
        ordered = list(governors.values())
    distinct = list(dict.fromkeys(ordered))
    return distinct[0] if len(distinct) == 1 else "mixed: " + ", ".join(map(str, distinct))


def _bits(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def environment(before: dict | None, after: dict | None, window: dict | None, runs_spread_warnings: list[str],
                *, own_cpu_s: float | None = None, other_load: float | None = None) -> dict:
    """The report's ``"environment"`` section from the :func:`read_state` snapshots taken before and after the
    runs, the :meth:`Sampler.window` over the runs (or None) and the runs' spread warnings.

    ``other_load_cores`` is ``other_load`` when given, else computed from the snapshots' ``cpu_busy_s`` with
    ``own_cpu_s`` (CPU seconds the benchmark itself used between the snapshots: the parent and its children),
    else None. ``versions`` is left empty for the caller to fill.
    """
    before, after, window = before or {}, after or {}, window or {}
    governors = before.get("governors") or after.get("governors") or {}
    governor = _governor(governors)
    t_before, t_after = _num(before.get("cpu_temp_c")), _num(after.get("cpu_temp_c"))
    temp_max = max((t for t in (_num(window.get("temp_c_max")), t_before, t_after) if t is not None), default=None)
    # the hottest sensor of any device (the Jetson PMIC's fixed reading left out)
    hot = [(_num(window.get("temp_c_hottest")), window.get("hottest_zone") or "hottest")]
    for state in (before, after):
        hot += [(_num(v), str(k)) for k, v in _dict(state.get("temps_c")).items() if not _fixed_zone(str(k))]
    hottest = max(((t, z) for t, z in hot if t is not None), default=(None, None))
    is_hot = hottest[0] is not None and hottest[0] >= HOT_C

    b, a, w = _bits(before.get("throttled")), _bits(after.get("throttled")), _bits(window.get("throttled_bits"))
    pi_known = any(v is not None for v in (b, a, w))
    seen = (w or 0) | (a or 0)
    during = (seen & _NOW_BITS) | (seen & _BOOT_BITS & ~(b or 0))  # since-boot bits count only when new
    throttled = True if during or is_hot else (False if pi_known else None)
    flags = None
    if pi_known:
        flags = {"before": f"{b:#x}" if b is not None else None, "after": f"{a:#x}" if a is not None else None,
                 "during": decode_throttled(during)}

    if other_load is None and own_cpu_s is not None:
        t0, t1 = _num(before.get("time")), _num(after.get("time"))
        other_load = other_load_cores(_num(before.get("cpu_busy_s")), _num(after.get("cpu_busy_s")),
                                      t1 - t0 if None not in (t0, t1) else None, own_cpu_s)
    idle_mw = _num(before.get("power_total_mw"))

    warnings = []
    if governor is not None and set(governors.values()) != {"performance"}:
        warnings.append(f"The CPU frequency governor is '{governor}', not 'performance': the clock follows the load, "
                        "so latencies vary and early runs are slower. Before benchmarking, run: echo performance | "
                        "sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor")
    if during:
        advice = ("Use a power supply that gives enough current (the board's official one)." if during & _UNDER_VOLTAGE
                  else "Add cooling (a heatsink or a fan) or let the board cool down between runs.")
        warnings.append(f"The board throttled during the benchmark ({', '.join(decode_throttled(during))}): the "
                        f"results are slower than the board can run. {advice}")
    if is_hot:
        warnings.append(f"The {hottest[1]} sensor reached {hottest[0]:.1f} °C during the benchmark, near the thermal "
                        "limit (boards throttle from 80-85 °C), so the clock may have been lowered. Add cooling (a "
                        "heatsink or a fan) or let the board cool down between runs.")
    if governor == "performance":
        fraction, low = _num(window.get("freq_fraction_min")), _num(window.get("freq_mhz_min"))
        if fraction is None:  # no samples: the snapshots
            pairs = [(f, _dict(state.get("freq_max_mhz")).get(c)) for state in (before, after)
                     for c, f in _dict(state.get("freq_mhz")).items()]
            pairs = [(f, m) for f, m in pairs if _num(f) is not None and _num(m)]
            if pairs:
                low, top = min(pairs, key=lambda p: p[0] / p[1])
                fraction = low / top
        if fraction is not None and fraction < LOW_FREQ_FRACTION:
            mhz = f" ({low:.0f} MHz)" if low is not None else ""
            warnings.append(f"With the performance governor the CPU clock fell to {100 * fraction:.0f}% of its "
                            f"maximum{mhz} during the runs: thermal throttling or a power limit (nvpmodel "
                            "on a Jetson) capped it, so the results are below the board's best.")
    if other_load is not None and other_load >= BUSY_CORES:
        warnings.append(f"Other processes used {other_load:.2f} cores on average during the runs, so the engines "
                        "shared the CPU: close other programs (see top) and run again for stable numbers.")
    warnings += [str(s) for s in runs_spread_warnings or []]

    return {"board_model": before.get("board_model") or after.get("board_model"), "governor": governor,
            "freq_mhz": _num(_first_cpu(before.get("freq_mhz"))),
            "freq_max_mhz": _num(_first_cpu(before.get("freq_max_mhz"))),
            "temp_c_before": t_before, "temp_c_after": t_after, "temp_c_max": temp_max,
            "throttled": throttled, "throttled_flags": flags,
            "power_rail": before.get("power_rail") or after.get("power_rail"),
            "idle_power_w": idle_mw / 1000.0 if idle_mw is not None else None,
            "other_load_cores": other_load, "versions": {}, "warnings": warnings}
