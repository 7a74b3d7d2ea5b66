"""Board state for edgedl bench (edgedl.benchmark.board_state) on fake /proc and /sys trees."""
from __future__ import annotations

import os
import threading

import pytest

from edgedl.benchmark import board_state as bs

ENV_KEYS = {"board_model", "governor", "freq_mhz", "freq_max_mhz", "temp_c_before", "temp_c_after", "temp_c_max",
            "throttled", "throttled_flags", "power_rail", "idle_power_w", "other_load_cores", "versions", "warnings"}
HZ = bs._user_hz()


def write(root, rel: str, content) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)


def cpus(root, n: int, governor="ondemand", cur=600000, top=1800000) -> None:
    for c in range(n):
        base = f"sys/devices/system/cpu/cpu{c}/cpufreq"
        write(root, f"{base}/scaling_governor", f"{governor}\n")
        write(root, f"{base}/scaling_cur_freq", f"{cur}\n")
        write(root, f"{base}/cpuinfo_max_freq", f"{top}\n")


def zone(root, n: int, kind: str, millideg) -> None:
    write(root, f"sys/class/thermal/thermal_zone{n}/type", f"{kind}\n")
    write(root, f"sys/class/thermal/thermal_zone{n}/temp", f"{millideg}\n")


def hwmon_channel(root, dev: str, hw: str, n: int, label: str | None, mv, ma) -> None:
    base = f"sys/bus/i2c/devices/{dev}/hwmon/{hw}"
    if label is not None:
        write(root, f"{base}/in{n}_label", label + "\n")
    write(root, f"{base}/in{n}_input", f"{mv}\n")
    write(root, f"{base}/curr{n}_input", f"{ma}\n")


@pytest.fixture
def pi4(tmp_path):
    write(tmp_path, "proc/device-tree/model", b"Raspberry Pi 4 Model B Rev 1.4\0")
    cpus(tmp_path, 4)
    zone(tmp_path, 0, "cpu-thermal", 61234)
    write(tmp_path, "sys/devices/platform/soc/soc:firmware/get_throttled", "50005\n")
    write(tmp_path, "proc/stat", "cpu  1000 20 300 5000 70 8 9 3 50 0\ncpu0 250 5 75 1250 17 2 2 1 0 0\nintr 1\n")
    return tmp_path


@pytest.fixture
def orin(tmp_path):
    write(tmp_path, "proc/device-tree/model", b"NVIDIA Jetson AGX Orin Developer Kit\0")
    cpus(tmp_path, 2, governor="schedutil", cur=729600, top=2201600)
    zone(tmp_path, 0, "gpu-thermal", 45000)
    zone(tmp_path, 1, "cpu-thermal", 47500)
    zone(tmp_path, 2, "soc0-thermal", 46000)
    zone(tmp_path, 3, "soc0-thermal", 44000)
    dev = "1-0040"
    write(tmp_path, f"sys/bus/i2c/devices/{dev}/name", "ina3221\n")
    hwmon_channel(tmp_path, dev, "hwmon3", 1, "VDD_IN", 5000, 1200)          # 6000 mW
    hwmon_channel(tmp_path, dev, "hwmon3", 2, "VDD_CPU_GPU_CV", 5000, 400)   # 2000 mW
    hwmon_channel(tmp_path, dev, "hwmon3", 3, "VDD_SOC", 5000, 500)          # 2500 mW
    hwmon_channel(tmp_path, dev, "hwmon3", 4, None, 12, 2100)                # shunt voltage / sum current: no label
    hwmon_channel(tmp_path, dev, "hwmon3", 7, "sum of shunt voltages", 40, 2100)
    write(tmp_path, "sys/bus/i2c/devices/1-0041/name", "ina3221\n")
    hwmon_channel(tmp_path, "1-0041", "hwmon4", 1, "NC", 5000, 9999)
    hwmon_channel(tmp_path, "1-0041", "hwmon4", 2, "VDD_5V0_SYS", 5000, 100)
    write(tmp_path, "sys/bus/i2c/devices/1-0050/name", "eeprom\n")                # not a power monitor
    hwmon_channel(tmp_path, "1-0050", "hwmon5", 1, "VDD_FAKE", 5000, 5000)
    return tmp_path


@pytest.fixture
def nano(tmp_path):
    cpus(tmp_path, 4, governor="schedutil", cur=1479000, top=1479000)
    for n, (kind, t) in enumerate([("AO-therm", 40500), ("CPU-therm", 38500), ("GPU-therm", 37000),
                                   ("PMIC-Die", 100000)]):
        zone(tmp_path, n, kind, t)
    base = "sys/bus/i2c/devices/6-0040/iio:device0"
    write(tmp_path, "sys/bus/i2c/devices/6-0040/name", "ina3221x\n")
    for n, (name, mw) in enumerate([("POM_5V_IN", 2400), ("POM_5V_GPU", 120), ("POM_5V_CPU", 800)]):
        write(tmp_path, f"{base}/rail_name_{n}", name + "\n")
        write(tmp_path, f"{base}/in_power{n}_input", f"{mw}\n")
    return tmp_path


# ---------------------------------------------------------------------------------------------------
# snapshots
# ---------------------------------------------------------------------------------------------------
def test_raspberry_pi_4(pi4):
    s = bs.read_state(str(pi4))
    assert s["board_model"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert s["governors"] == {0: "ondemand", 1: "ondemand", 2: "ondemand", 3: "ondemand"}
    assert s["freq_mhz"] == {c: 600.0 for c in range(4)}
    assert s["freq_max_mhz"] == {c: 1800.0 for c in range(4)}
    assert s["temps_c"] == {"cpu-thermal": pytest.approx(61.234)}
    assert s["cpu_temp_c"] == pytest.approx(61.234)
    assert s["throttled"] == 0x50005
    assert s["power_mw"] == {} and s["power_total_mw"] is None and s["power_rail"] is None
    # user nice system irq softirq steal; idle, iowait and guest (already in user) left out
    assert s["cpu_busy_s"] == pytest.approx((1000 + 20 + 300 + 8 + 9 + 3) / HZ)
    assert isinstance(s["time"], float)


def test_pi_get_throttled_with_0x_prefix(pi4):
    write(pi4, "sys/devices/platform/soc/soc:firmware/get_throttled", "0x50000\n")
    assert bs.read_state(str(pi4))["throttled"] == 0x50000


def test_jetson_orin_jetpack5_hwmon(orin):
    s = bs.read_state(str(orin))
    assert s["power_mw"] == {"VDD_IN": pytest.approx(6000.0), "VDD_CPU_GPU_CV": pytest.approx(2000.0),
                             "VDD_SOC": pytest.approx(2500.0), "VDD_5V0_SYS": pytest.approx(500.0)}
    assert s["power_rail"] == "VDD_IN"
    assert s["power_total_mw"] == pytest.approx(6000.0)
    assert s["cpu_temp_c"] == pytest.approx(47.5)  # the cpu zone, not thermal_zone0
    assert s["temps_c"] == {"gpu-thermal": 45.0, "cpu-thermal": 47.5, "soc0-thermal": 46.0, "soc0-thermal_2": 44.0}
    assert s["throttled"] is None  # not a Pi, and a fake root never runs vcgencmd
    assert s["board_model"] == "NVIDIA Jetson AGX Orin Developer Kit"


def test_jetson_without_input_rail_sums_the_rails(orin):
    (orin / "sys/bus/i2c/devices/1-0040/hwmon/hwmon3/in1_label").write_text("VDD_GPU\n")
    rails = bs.PowerRails(str(orin))
    assert rails.total_rail == "sum of rails"
    values = rails.read()
    assert rails.total(values) == pytest.approx(6000 + 2000 + 2500 + 500)
    (orin / "sys/bus/i2c/devices/1-0040/hwmon/hwmon3/curr2_input").write_text("n/a\n")
    values = rails.read()
    assert "VDD_CPU_GPU_CV" not in values and rails.total(values) is None  # a partial sum is not the board's power


def test_jetson_nano_jetpack4_iio(nano):
    s = bs.read_state(str(nano))
    assert s["power_mw"] == {"POM_5V_IN": 2400.0, "POM_5V_GPU": 120.0, "POM_5V_CPU": 800.0}
    assert s["power_rail"] == "POM_5V_IN" and s["power_total_mw"] == 2400.0
    assert s["cpu_temp_c"] == 38.5
    assert s["temps_c"]["PMIC-Die"] == 100.0  # reported as read ...
    env = bs.environment(s, s, None, [])
    assert env["temp_c_max"] == 38.5
    assert not any("thermal limit" in w for w in env["warnings"])  # ... but its fixed 100 °C is not "hot"
    assert env["throttled"] is None and env["idle_power_w"] == 2.4


def test_empty_root(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bs.subprocess, "run", lambda *a, **k: calls.append(a))
    s = bs.read_state(str(tmp_path))
    assert s["board_model"] is None and s["cpu_temp_c"] is None and s["throttled"] is None
    assert s["cpu_busy_s"] is None and s["power_total_mw"] is None and s["power_rail"] is None
    assert s["governors"] == s["freq_mhz"] == s["freq_max_mhz"] == s["temps_c"] == s["power_mw"] == {}
    assert calls == []
    assert bs.read_state(str(tmp_path / "missing"))["temps_c"] == {}
    sampler = bs.Sampler(str(tmp_path))
    sampler.sample_once(now=1.0)
    w = sampler.window(0.0, 2.0)
    assert w["samples"] == 1
    assert all(v is None for k, v in w.items() if k != "samples")
    env = bs.environment(s, s, w, [])
    assert set(env) == ENV_KEYS
    assert all(env[k] is None for k in ENV_KEYS - {"versions", "warnings"})
    assert env["warnings"] == [] and env["versions"] == {}


def test_garbage_files(tmp_path):
    write(tmp_path, "proc/device-tree/model", b"\xff\xfe\x00\x01junk")
    cpu = "sys/devices/system/cpu/cpu0/cpufreq"
    write(tmp_path, f"{cpu}/scaling_governor", b"\x00\x01\x02\xff")
    (tmp_path / cpu / "scaling_cur_freq").mkdir()  # a folder where a file belongs
    write(tmp_path, f"{cpu}/cpuinfo_max_freq", "fast\n")
    write(tmp_path, "sys/devices/system/cpu/cpu1/cpufreq/scaling_cur_freq", "nan\n")
    if hasattr(os, "mkfifo"):  # reading a FIFO would block: it must be skipped
        os.mkfifo(tmp_path / "sys/devices/system/cpu/cpu1/cpufreq/cpuinfo_max_freq")
    zone(tmp_path, 0, "cpu-thermal", "hot")
    write(tmp_path, "sys/class/thermal/thermal_zone1/temp", b"\x89PNG\r\n")
    zone(tmp_path, 2, "tboard", 255000)  # a sensor not fitted
    (tmp_path / "sys/class/thermal/thermal_zone3/temp").mkdir(parents=True)
    write(tmp_path, "sys/devices/platform/soc/soc:firmware/get_throttled", "zzz\n")
    write(tmp_path, "proc/stat", "cpu  a b c d e\n")
    (tmp_path / "sys/bus/i2c/devices/1-0040/name").mkdir(parents=True)
    write(tmp_path, "sys/bus/i2c/devices/1-0041/name", "ina3221\n")
    hwmon_channel(tmp_path, "1-0041", "hwmon1", 1, "VDD_IN", "abc", 100)
    s = bs.read_state(str(tmp_path))
    assert s["board_model"] is None and s["governors"] == {} and s["freq_mhz"] == {} and s["freq_max_mhz"] == {}
    assert s["temps_c"] == {} and s["cpu_temp_c"] is None
    assert s["throttled"] is None and s["cpu_busy_s"] is None
    assert s["power_rail"] == "VDD_IN" and s["power_mw"] == {} and s["power_total_mw"] is None
    sampler = bs.Sampler(str(tmp_path))
    sampler.sample_once(now=0.0)
    assert sampler.window(-1, 1)["power_w"] is None
    assert set(bs.environment(s, s, sampler.window(-1, 1), [])) == ENV_KEYS


def test_decode_throttled():
    assert bs.decode_throttled(0) == []
    assert bs.decode_throttled(0x50005) == ["under-voltage now", "throttled now", "under-voltage since boot",
                                            "throttled since boot"]
    assert bs.decode_throttled(0xF000F) == [
        "under-voltage now", "ARM frequency capped now", "throttled now", "soft temperature limit now",
        "under-voltage since boot", "ARM frequency capped since boot", "throttled since boot",
        "soft temperature limit since boot"]
    assert bs.decode_throttled(0x100) == [] and bs.decode_throttled(-1) == []


def test_vcgencmd_output_is_parsed_and_run_at_most_once_a_second(tmp_path, monkeypatch):
    calls = []

    class Done:
        stdout = "throttled=0x50000\n"

    monkeypatch.setattr(bs.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(bs.subprocess, "run", lambda *a, **k: calls.append(a) or Done())
    now = [100.0]
    reader = bs.ThrottleReader(str(tmp_path), use_vcgencmd=True, clock=lambda: now[0])
    assert reader.read() == 0x50000 and len(calls) == 1
    now[0] += 0.5
    assert reader.read() == 0x50000 and len(calls) == 1  # cached
    now[0] += 0.6
    Done.stdout = "error=1 error_msg=\"no vchiq\"\n"
    assert reader.read() is None and len(calls) == 2
    assert bs.ThrottleReader(str(tmp_path)).vcgencmd is None  # a fake root never runs it by default


# ---------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------
def test_sampler_window(orin):
    vdd_in = orin / "sys/bus/i2c/devices/1-0040/hwmon/hwmon3/curr1_input"
    cur0 = orin / "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"
    temp = orin / "sys/class/thermal/thermal_zone1/temp"
    (orin / "sys/devices/system/cpu/cpu1/cpufreq/scaling_cur_freq").write_text("2201600\n")
    sampler = bs.Sampler(str(orin), clock=lambda: pytest.fail("sample_once(now=...) must not read the clock"))
    for t, ma, khz, mdeg in [(1.0, 1000, 2201600, 50000), (2.0, 1200, 2201600, 60000), (3.0, 1400, 1100800, 70000),
                             (4.0, 1600, 2201600, 55000), (10.0, 2000, 2201600, 52000)]:
        vdd_in.write_text(f"{ma}\n")  # VDD_IN at 5000 mV
        cur0.write_text(f"{khz}\n")
        temp.write_text(f"{mdeg}\n")
        sampler.sample_once(now=t)
    w = sampler.window(2.0, 4.0)  # inclusive ends
    assert w["samples"] == 3
    assert w["power_w"] == pytest.approx(5.0 * (1.2 + 1.4 + 1.6) / 3)
    assert (w["temp_c_min"], w["temp_c_max"]) == (55.0, 70.0)
    assert (w["temp_c_first"], w["temp_c_last"]) == (60.0, 55.0)
    assert w["temp_c_hottest"] == 70.0 and w["hottest_zone"] == "cpu-thermal"
    assert (w["freq_mhz_min"], w["freq_mhz_max"]) == (1100.8, 2201.6)
    assert w["freq_fraction_min"] == pytest.approx(0.5)
    assert w["throttled_bits"] is None
    # a window between samples: the nearest one before and after
    w = sampler.window(5.0, 6.0)
    assert w["samples"] == 0 and w["power_w"] == pytest.approx(5.0 * (1.6 + 2.0) / 2)
    assert sampler.window(20.0, 30.0)["power_w"] == pytest.approx(10.0)  # only one before
    assert bs.Sampler(str(orin)).window(0, 1)["power_w"] is None  # no samples at all


def test_sampler_ors_throttled_bits(pi4):
    flag = pi4 / "sys/devices/platform/soc/soc:firmware/get_throttled"
    sampler = bs.Sampler(str(pi4))
    for t, bits in [(0.0, "0"), (1.0, "4"), (2.0, "50000"), (3.0, "1")]:
        flag.write_text(bits + "\n")
        sampler.sample_once(now=t)
    assert sampler.window(1.0, 2.0)["throttled_bits"] == 0x50004
    assert sampler.window(0.0, 0.0)["throttled_bits"] == 0


def test_sampler_thread_survives_a_failing_reading(orin):
    sampler = bs.Sampler(str(orin), interval=0.001)
    calls, enough = [0], threading.Event()
    real = sampler.rails.read

    def flaky():
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("i2c read failed")
        if calls[0] >= 3:
            enough.set()
        return real()

    sampler.rails.read = flaky
    with sampler:
        assert enough.wait(30.0)
    assert sampler.errors >= 1 and "i2c read failed" in sampler.last_error
    assert len(sampler.samples) >= 2
    assert not sampler._thread.is_alive()


# ---------------------------------------------------------------------------------------------------
# the environment section
# ---------------------------------------------------------------------------------------------------
def test_environment_pi_warnings(pi4):
    before = bs.read_state(str(pi4))
    before["throttled"] = 0x0
    after = dict(before, throttled=0x50005, cpu_temp_c=66.0)
    window = {"power_w": None, "temp_c_max": 71.0, "temp_c_min": 61.0, "temp_c_hottest": 71.0,
              "hottest_zone": "cpu-thermal", "freq_mhz_min": 600.0, "freq_mhz_max": 600.0,
              "freq_fraction_min": 1 / 3, "throttled_bits": 0x50004, "samples": 40}
    env = bs.environment(before, after, window, ["edgedl fp32 x1: high run-to-run spread"])
    assert set(env) == ENV_KEYS
    assert env["board_model"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert env["governor"] == "ondemand" and env["freq_mhz"] == 600.0 and env["freq_max_mhz"] == 1800.0
    assert (env["temp_c_before"], env["temp_c_after"], env["temp_c_max"]) == (pytest.approx(61.234), 66.0, 71.0)
    assert env["throttled"] is True
    assert env["throttled_flags"] == {"before": "0x0", "after": "0x50005", "during": [
        "under-voltage now", "throttled now", "under-voltage since boot", "throttled since boot"]}
    text = "\n".join(env["warnings"])
    assert "echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor" in text
    assert "throttled during the benchmark" in text and "power supply" in text
    assert "fell to" not in text  # low clocks are expected with ondemand: the governor warning covers them
    assert env["warnings"][-1] == "edgedl fp32 x1: high run-to-run spread"
    assert env["power_rail"] is None and env["idle_power_w"] is None and env["other_load_cores"] is None
    assert env["versions"] == {}


def test_environment_old_since_boot_bits_are_not_throttling():
    state = {"governors": {0: "performance"}, "throttled": 0x50000}
    env = bs.environment(state, state, {"throttled_bits": 0x50000}, [])
    assert env["throttled"] is False and env["throttled_flags"]["during"] == [] and env["warnings"] == []


def test_environment_hot_low_clock_and_mixed_governor():
    before = {"governors": {0: "performance", 1: "performance"}, "freq_mhz": {0: 2400.0, 1: 2400.0},
              "freq_max_mhz": {0: 2400.0, 1: 2400.0}, "temps_c": {"cpu-thermal": 70.0}, "cpu_temp_c": 70.0}
    after = dict(before, freq_mhz={0: 1500.0, 1: 2400.0}, temps_c={"cpu-thermal": 83.5}, cpu_temp_c=83.5)
    env = bs.environment(before, after, None, [])
    assert env["throttled"] is True and env["throttled_flags"] is None  # hot, no Pi flags
    assert env["temp_c_max"] == 83.5
    text = "\n".join(env["warnings"])
    assert "near the thermal limit" in text and "83.5" in text
    assert "fell to 62% of its maximum (1500 MHz)" in text
    assert "governor" not in text.split("performance governor")[0]
    env = bs.environment(dict(before, governors={0: "performance", 1: "powersave"}), before, None, [])
    assert env["governor"] == "mixed: performance, powersave"
    assert any("echo performance" in w for w in env["warnings"])


def test_environment_busy_machine():
    before = {"time": 100.0, "cpu_busy_s": 50.0, "governors": {0: "performance"}}
    after = {"time": 110.0, "cpu_busy_s": 70.0, "governors": {0: "performance"}}
    env = bs.environment(before, after, None, [], own_cpu_s=15.0)
    assert env["other_load_cores"] == pytest.approx(0.5)
    assert any("Other processes used 0.50 cores" in w for w in env["warnings"])
    env = bs.environment(before, after, None, [], own_cpu_s=19.0)
    assert env["other_load_cores"] == pytest.approx(0.1) and env["warnings"] == []
    assert bs.environment(before, after, None, [], other_load=1.25)["other_load_cores"] == 1.25
    assert bs.environment(before, after, None, [])["other_load_cores"] is None


def test_other_load_cores():
    assert bs.other_load_cores(10.0, 12.0, 2.0, 1.0) == pytest.approx(0.5)
    assert bs.other_load_cores(10.0, 10.5, 2.0, 1.0) == 0.0  # own time over-counted: never negative
    assert bs.other_load_cores(10.0, 12.0, 0.0, 1.0) is None
    assert bs.other_load_cores(None, 12.0, 2.0, 1.0) is None
    assert bs.other_load_cores(10.0, 12.0, 2.0, None) is None


def test_environment_jetson_power(orin):
    s = bs.read_state(str(orin))
    env = bs.environment(s, s, {"power_w": 9.5, "samples": 3}, [])
    assert env["power_rail"] == "VDD_IN" and env["idle_power_w"] == pytest.approx(6.0)
    assert env["governor"] == "schedutil" and env["throttled"] is None and env["throttled_flags"] is None
