"""Fake machine roots for target detection tests: ``make_tree(tmp_path, board, **overrides)`` writes the
``/proc``, ``/sys`` and ``/etc`` files one board shows, as the boards print them (cpuinfo layouts follow dumps
posted to hrw/arm-socs-table and the Raspberry Pi / Jetson forums; Orin's feature line is reconstructed).

Overrides replace one file (``None`` removes it): ``model`` (str, written NUL-terminated), ``compatible``
(list of str, NUL-separated), ``cpuinfo``, ``meminfo``, ``nv_tegra_release``, ``dtsfilename`` (str or raw
bytes), ``max_freq`` (kHz per CPU, None entries skipped; None removes every cpufreq file), ``caches``
({cpu: [(level, type, size)]} or None), ``files`` ({relative path: str | bytes | None}).
"""
from __future__ import annotations

import itertools
from pathlib import Path

GiB_KB = 1 << 20  # kB in a GiB


def dt(*strings: str) -> bytes:
    """A device-tree string list: each string NUL-terminated."""
    return b"".join(s.encode() + b"\0" for s in strings)


def arm_cpuinfo(cores, features, *, bogomips="108.00", model_name=None, arch="8", hardware=None, revision=None,
                serial=None, model=None) -> str:
    """cpuinfo of an ARM machine; ``cores``: one (implementer, variant, part, revision) per CPU."""
    blocks = []
    for i, (impl, variant, part, rev) in enumerate(cores):
        lines = [f"processor\t: {i}"]
        if model_name:
            lines.append(f"model name\t: {model_name}")
        lines += [f"BogoMIPS\t: {bogomips}", f"Features\t: {features}", f"CPU implementer\t: {impl}",
                  f"CPU architecture: {arch}", f"CPU variant\t: {variant}", f"CPU part\t: {part}",
                  f"CPU revision\t: {rev}"]
        if impl == "0x4e":
            lines.append("MTS version\t: 55637613")
        blocks.append("\n".join(lines))
    tail = []
    if hardware:
        tail.append(f"Hardware\t: {hardware}")
    if revision:
        tail.append(f"Revision\t: {revision}")
    if serial:
        tail.append(f"Serial\t\t: {serial}")
    if model:
        tail.append(f"Model\t\t: {model}")
    return "\n\n".join(blocks) + "\n\n" + ("\n".join(tail) + "\n" if tail else "")


def x86_cpuinfo(n, vendor, model_name, flags, family=25, model=116) -> str:
    blocks = []
    for i in range(n):
        blocks.append("\n".join([
            f"processor\t: {i}", f"vendor_id\t: {vendor}", f"cpu family\t: {family}", f"model\t\t: {model}",
            f"model name\t: {model_name}", "stepping\t: 1", "cpu MHz\t\t: 2400.000", "cache size\t: 1024 KB",
            "physical id\t: 0", f"siblings\t: {n}", f"core id\t\t: {i // 2}", f"cpu cores\t: {n // 2}",
            "fpu\t\t: yes", f"flags\t\t: {flags}", "bogomips\t: 6587.61", "clflush size\t: 64",
            "address sizes\t: 48 bits physical, 48 bits virtual", "power management:"]))
    return "\n\n".join(blocks) + "\n\n"


def meminfo(total_kb: int) -> str:
    return (f"MemTotal:       {total_kb} kB\nMemFree:        {total_kb // 2} kB\n"
            f"MemAvailable:   {total_kb * 3 // 4} kB\nBuffers:           32768 kB\nCached:          262144 kB\n")


def tegra_release(release: str, revision: str, board: str = "t186ref") -> str:
    return (f"# {release} (release), REVISION: {revision}, GCID: 29818004, BOARD: {board}, EABI: aarch64, "
            "DATE: Sat Feb 19 17:05:08 UTC 2022\n# KERNEL_VARIANT: oot\nINSTALL_TYPE=\n")


def _caches(l1d, l2, l3=None, l1i=None):
    out = [(1, "Data", l1d), (1, "Instruction", l1i or l1d), (2, "Unified", l2)]
    return out + ([(3, "Unified", l3)] if l3 else [])


# --- CPU descriptions -------------------------------------------------------------------------------
A53 = ("0x41", "0x0", "0xd03", "4")
A55 = ("0x41", "0x2", "0xd05", "0")
A57 = ("0x41", "0x1", "0xd07", "1")
A72 = ("0x41", "0x0", "0xd08", "3")
A76 = ("0x41", "0x4", "0xd0b", "1")
A78AE = ("0x41", "0x1", "0xd42", "1")
CARMEL = ("0x4e", "0x0", "0x004", "0")
DENVER = ("0x4e", "0x0", "0x003", "0")
PI3_FEATURES = "fp asimd evtstrm crc32 cpuid"
PI5_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
ARMV7_FEATURES = "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32"
NANO_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
TX2_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32"
XAVIER_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm dcpop"
ORIN_FEATURES = PI5_FEATURES + " uscat ilrcpc flagm"
ZEN4_FLAGS = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht "
              "syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid pni "
              "pclmulqdq monitor ssse3 fma cx16 sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand "
              "lahf_lm cmp_legacy svm extapic cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw ibs skinit wdt "
              "tce topoext perfctr_core bmi1 avx2 smep bmi2 erms invpcid cqm rdt_a avx512f avx512dq rdseed adx "
              "smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves "
              "avx512_bf16 clzero irperf xsaveerptr rdpru wbnoinvd avx512vbmi umip pku ospke avx512_vbmi2 gfni "
              "vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid overflow_recov succor smca fsrm")
ALDER_LAKE_FLAGS = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx "
                    "fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art arch_perfmon pebs bts "
                    "rep_good nopl xtopology nonstop_tsc cpuid aperfmperf tsc_known_freq pni pclmulqdq dtes64 "
                    "monitor ds_cpl vmx est tm2 ssse3 sdbg fma cx16 xtpr pdcm sse4_1 sse4_2 x2apic movbe popcnt "
                    "tsc_deadline_timer aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch cpuid_fault epb "
                    "ssbd ibrs ibpb stibp ibrs_enhanced tpr_shadow flexpriority ept vpid ept_ad fsgsbase "
                    "tsc_adjust bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb intel_pt sha_ni "
                    "xsaveopt xsavec xgetbv1 xsaves split_lock_detect avx_vnni dtherm ida arat pln pts hwp "
                    "hwp_notify hwp_act_window hwp_epp hwp_pkg_req hfi umip pku ospke waitpkg gfni vaes "
                    "vpclmulqdq rdpid movdiri movdir64b fsrm md_clear serialize arch_lbr ibt flush_l1d "
                    "arch_capabilities")


def _pi(compatible, model, revision, cores, features, kb, khz, *, caches=None, arch="8", model_name=None,
        bogomips="108.00"):
    spec = {
        "proc/device-tree/model": dt(model),
        "proc/device-tree/compatible": dt(*compatible),
        "proc/cpuinfo": arm_cpuinfo(cores, features, bogomips=bogomips, model_name=model_name, arch=arch,
                                    hardware="BCM2835", revision=revision, serial="10000000e3ae743b", model=model),
        "proc/meminfo": meminfo(kb),
        "max_freq": [khz] * len(cores),
    }
    if caches:
        spec["caches"] = caches
    return spec


def _jetson(compatible, model, dts, release, cores, features, kb, khz, *, caches=None):
    spec = {
        "proc/device-tree/model": dt(model),
        "proc/device-tree/compatible": dt(*compatible),
        "proc/device-tree/nvidia,dtsfilename": dt(dts),
        "etc/nv_tegra_release": release,
        "proc/cpuinfo": arm_cpuinfo(cores, features, bogomips="62.50", model_name="ARMv8 Processor rev 0 (v8l)"),
        "proc/meminfo": meminfo(kb),
        "max_freq": [khz] * len(cores),
    }
    if caches:
        spec["caches"] = caches
    return spec


_DTS = "/dvs/git/dirty/git-master_linux/kernel/kernel-5.10/arch/arm64/boot/dts/../../../../../../hardware/nvidia/"
R32 = tegra_release("R32", "7.1", "t210ref")
R32_T186 = tegra_release("R32", "7.1", "t186ref")
R35 = tegra_release("R35", "4.1")
R36 = tegra_release("R36", "3.0")


def _specs():
    pi4 = _pi(["raspberrypi,4-model-b", "brcm,bcm2711"], "Raspberry Pi 4 Model B Rev 1.4", "c03114", [A72] * 4,
              PI3_FEATURES, 3884376, 1800000)
    pi5 = _pi(["raspberrypi,5-model-b", "brcm,bcm2712"], "Raspberry Pi 5 Model B Rev 1.0", "d04170", [A76] * 4,
              PI5_FEATURES, 8245856, 2400000, caches={c: _caches("64K", "512K", "2048K") for c in range(4)})
    pi5_nocompat = dict(pi5)
    del pi5_nocompat["proc/device-tree/compatible"]
    orin_caches = {c: _caches("64K", "256K", "2048K") for c in range(12)}
    rk3588 = {
        "proc/device-tree/model": dt("Radxa ROCK 5B"),
        "proc/device-tree/compatible": dt("radxa,rock-5b", "rockchip,rk3588"),
        "proc/cpuinfo": arm_cpuinfo([A55] * 4 + [A76] * 4, PI5_FEATURES, bogomips="48.00", serial="8f05e6569c61bf21"),
        "proc/meminfo": meminfo(16102160),
        "max_freq": [1800000] * 4 + [2400000] * 4,
        "caches": {**{c: _caches("32K", "128K", "3072K") for c in range(4)},
                   **{c: _caches("64K", "512K", "3072K") for c in range(4, 8)}},
    }
    orangepi5 = dict(rk3588, **{"proc/device-tree/model": dt("Orange Pi 5"),
                                "proc/device-tree/compatible": dt("rockchip,rk3588s-orangepi-5", "rockchip,rk3588s")})
    del orangepi5["max_freq"]  # no cpufreq: big.LITTLE from the CPU parts
    return {
        "rpi3": _pi(["raspberrypi,3-model-b", "brcm,bcm2837"], "Raspberry Pi 3 Model B Rev 1.2", "a02082", [A53] * 4,
                    PI3_FEATURES, 948304, 1200000, model_name="ARMv8 Processor rev 4 (v8l)", bogomips="38.40"),
        "rpi3-plus": _pi(["raspberrypi,3-model-b-plus", "brcm,bcm2837"], "Raspberry Pi 3 Model B Plus Rev 1.3",
                         "a020d3", [A53] * 4, PI3_FEATURES, 948304, 1400000, bogomips="38.40"),
        "rpi-zero2w": _pi(["raspberrypi,model-zero-2-w", "brcm,bcm2837"], "Raspberry Pi Zero 2 W Rev 1.0", "902120",
                          [A53] * 4, PI3_FEATURES, 439592, 1000000, bogomips="38.40"),
        "rpi4": pi4,
        "rpi4-32bit": dict(pi4, **{"proc/cpuinfo": arm_cpuinfo(
            [A72] * 4, ARMV7_FEATURES, bogomips="108.00", model_name="ARMv7 Processor rev 3 (v7l)", arch="7",
            hardware="BCM2835", revision="c03114", serial="10000000e3ae743b", model="Raspberry Pi 4 Model B Rev 1.4")}),
        "rpi5": pi5,
        "rpi5-no-compatible": pi5_nocompat,
        "jetson-nano": _jetson(
            ["nvidia,p3449-0000-b00+p3448-0000-b00", "nvidia,jetson-nano", "nvidia,tegra210"],
            "NVIDIA Jetson Nano Developer Kit",
            _DTS + "platform/t210/porg/kernel-dts/tegra210-p3448-0000-p3449-0000-b00.dts", R32,
            [A57] * 4, NANO_FEATURES, 4051032, 1479000),
        "jetson-tx2": _jetson(
            ["nvidia,p2771-0000", "nvidia,tegra186"], "quill",
            _DTS + "platform/t18x/quill/kernel-dts/tegra186-quill-p3310-1000-c03-00-base.dts", R32_T186,
            [A57, DENVER, DENVER, A57, A57, A57], TX2_FEATURES, 8038960, 2035200),
        "jetson-xavier-nx": _jetson(
            ["nvidia,p3509-0000+p3668-0001", "nvidia,tegra194"], "NVIDIA Jetson Xavier NX Developer Kit",
            _DTS + "platform/t19x/jakku/kernel-dts/tegra194-p3668-0001-p3509-0000.dts", R35, [CARMEL] * 6,
            XAVIER_FEATURES, 7765116, 1907200),
        "jetson-agx-xavier": _jetson(
            ["nvidia,p2972-0000", "nvidia,tegra194"], "Jetson-AGX",
            _DTS + "platform/t19x/galen/kernel-dts/tegra194-p2888-0001-p2822-0000.dts", R32_T186, [CARMEL] * 8,
            XAVIER_FEATURES, 32546248, 2265600),
        "jetson-orin-nano": _jetson(
            ["nvidia,p3768-0000+p3767-0005", "nvidia,p3767-0005", "nvidia,tegra234"],
            "NVIDIA Jetson Orin Nano Developer Kit",
            _DTS + "platform/t23x/p3768/kernel-dts/tegra234-p3767-0003-p3768-0000-a0.dts", R35, [A78AE] * 6,
            ORIN_FEATURES, 7620304, 1510400, caches={c: orin_caches[c] for c in range(6)}),
        "jetson-orin-nx": _jetson(
            ["nvidia,p3768-0000+p3767-0000", "nvidia,p3767-0000", "nvidia,tegra234"],
            "NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
            _DTS + "platform/t23x/p3768/kernel-dts/tegra234-p3767-0000-p3768-0000-a0.dts", R35, [A78AE] * 8,
            ORIN_FEATURES, 15655852, 1984000),
        "jetson-agx-orin": _jetson(
            ["nvidia,p3737-0000+p3701-0005", "nvidia,p3701-0005", "nvidia,tegra234"], "Jetson AGX Orin Developer Kit",
            _DTS + "platform/t23x/concord/kernel-dts/tegra234-p3701-0005-p3737-0000.dts", R36, [A78AE] * 12,
            ORIN_FEATURES, 64335836, 2201600, caches=orin_caches),
        "x86-amd-laptop": {
            "proc/cpuinfo": x86_cpuinfo(16, "AuthenticAMD", "AMD Ryzen 7 7840U w/ Radeon  780M Graphics", ZEN4_FLAGS),
            "proc/meminfo": meminfo(31999908),
            "max_freq": [5132000] * 8 + [4950000] * 8,  # preferred cores boost higher: not big.LITTLE
            "caches": {c: _caches("32K", "1024K", "16384K") for c in range(16)},
        },
        "x86-intel-laptop": {
            "proc/cpuinfo": x86_cpuinfo(16, "GenuineIntel", "12th Gen Intel(R) Core(TM) i7-1260P", ALDER_LAKE_FLAGS,
                                        family=6, model=154),
            "proc/meminfo": meminfo(16069252),
            "max_freq": [4700000] * 8 + [3400000] * 8,  # 4 P-cores (2 threads each) + 8 E-cores
            "caches": {**{c: _caches("48K", "1280K", "18432K", l1i="32K") for c in range(8)},
                       **{c: _caches("32K", "2048K", "18432K", l1i="64K") for c in range(8, 16)}},
        },
        "rock5b": rk3588,
        "orangepi5": orangepi5,
        "garbage": {
            "proc/device-tree/model": "\u2603 not a model \x01\x02",
            "proc/device-tree/compatible": "garbage,garbage",
            "proc/cpuinfo": "processor: banana\nFeatures: : : :\nCPU part: 0xzz\n::::\n\x00\x00\nprocessor\t: -3\n",
            "proc/meminfo": "MemTotal: lots kB\n",
            "etc/nv_tegra_release": "# R?? nonsense",
            "max_freq": ["fast", "0", "-1"],
            "caches": {0: [("one", "Data", "big"), (2, "Unified", "-5K")]},
        },
        "binary": {p: bytes(range(256)) * 64 for p in (
            "proc/device-tree/model", "proc/device-tree/compatible", "proc/device-tree/nvidia,dtsfilename",
            "proc/cpuinfo", "proc/meminfo", "etc/nv_tegra_release",
            "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "sys/devices/system/cpu/online")},
        "empty": {p: b"" for p in (
            "proc/device-tree/model", "proc/device-tree/compatible", "proc/cpuinfo", "proc/meminfo",
            "etc/nv_tegra_release", "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")},
        "missing": {},
    }


#: board names make_tree knows
BOARDS = tuple(_specs())
#: override name -> file
OVERRIDE_FILES = {"model": "proc/device-tree/model", "compatible": "proc/device-tree/compatible",
                  "cpuinfo": "proc/cpuinfo", "meminfo": "proc/meminfo", "nv_tegra_release": "etc/nv_tegra_release",
                  "dtsfilename": "proc/device-tree/nvidia,dtsfilename"}
_counter = itertools.count()


def _write(root: Path, rel: str, content) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else str(content).encode())


def make_tree(tmp_path, board: str, **overrides) -> Path:
    """Lay out a fake root for ``board`` (one of :data:`BOARDS`) under ``tmp_path`` and return it."""
    specs = _specs()
    if board not in specs:
        raise KeyError(f"unknown fixture board {board!r}; known: {sorted(specs)}")
    spec = dict(specs[board])
    files = overrides.pop("files", {}) or {}
    for key, value in overrides.items():
        if key in ("max_freq", "caches"):
            spec[key] = value
            continue
        if key not in OVERRIDE_FILES:
            raise KeyError(f"unknown override {key!r}; known: {sorted(OVERRIDE_FILES)} + max_freq, caches, files")
        if key == "model" and isinstance(value, str):
            value = dt(value)
        elif key == "compatible" and isinstance(value, (list, tuple)):
            value = dt(*value)
        spec[OVERRIDE_FILES[key]] = value
    spec.update(files)

    root = Path(tmp_path) / f"root-{board}-{next(_counter)}"
    root.mkdir(parents=True)
    freqs = spec.pop("max_freq", None)
    caches = spec.pop("caches", None)
    n_cpus = 0
    for rel, content in spec.items():
        if content is not None:
            _write(root, rel, content)
    for cpu, khz in enumerate(freqs or []):
        n_cpus = max(n_cpus, cpu + 1)
        if khz is not None:
            _write(root, f"sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq", f"{khz}\n")
    for cpu, entries in (caches or {}).items():
        n_cpus = max(n_cpus, cpu + 1)
        for i, (level, kind, size) in enumerate(entries):
            base = f"sys/devices/system/cpu/cpu{cpu}/cache/index{i}"
            _write(root, f"{base}/level", f"{level}\n")
            _write(root, f"{base}/type", f"{kind}\n")
            _write(root, f"{base}/size", f"{size}\n")
    if n_cpus and not (root / "sys/devices/system/cpu/online").exists():
        _write(root, "sys/devices/system/cpu/online", f"0-{n_cpus - 1}\n" if n_cpus > 1 else "0\n")
    return root
