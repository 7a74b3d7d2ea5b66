"""Detect the machine edgedl runs on: read ``/proc`` and ``/sys`` under a root, name the board, merge.

Everything is read from files under ``root`` (a fake root makes tests deterministic); only when ``root`` is
``"/"`` may the running process add what it knows (``os.cpu_count()``, ``platform.machine()``, its own pointer
size, LLVM's host CPU name, its CPU affinity). A missing, empty, unreadable or garbage file is never an error:
its facts are taken from elsewhere or left unknown.

Boards are named from, in order: ``/proc/device-tree/compatible``; ``/proc/device-tree/nvidia,dtsfilename``;
the model string (``/proc/device-tree/model`` or cpuinfo's ``Model``); for a Raspberry Pi the cpuinfo
``Revision`` code; for a Jetson the SoC that ``/etc/nv_tegra_release`` and the CPU cores imply. See
:func:`identify` for the ambiguous cases.
"""
from __future__ import annotations

import os
import platform
import re
import stat
import struct
from collections import Counter
from dataclasses import dataclass, field

from .profile import Profile, read_profile
from .profile import profile_path as _profile_path
from .target import Target

_MAX_READ = 1 << 20  # a cpuinfo of 256 cores is ~300 KB
_MAX_CPUS = 4096


# ---------------------------------------------------------------------------------------------------
# reading files
# ---------------------------------------------------------------------------------------------------
def _read(root: str, rel: str) -> bytes | None:
    """The bytes of a regular file under root (first MiB), or None. FIFOs, devices, directories, unreadable
    and missing files are None (opening a FIFO or a device could block or never end)."""
    path = os.path.join(root, rel)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as f:
            return f.read(_MAX_READ)
    except (OSError, ValueError):
        return None


def _text(root: str, rel: str) -> str | None:
    data = _read(root, rel)
    return None if data is None else data.decode("utf-8", errors="replace")


def _int_file(root: str, rel: str) -> int | None:
    text = _text(root, rel)
    try:
        return int(text.strip()) if text else None
    except ValueError:
        return None


def _dt_strings(root: str, prop: str) -> list[str]:
    """A device-tree property as its NUL-separated strings (printable ones only)."""
    for base in ("proc/device-tree", "sys/firmware/devicetree/base"):
        data = _read(root, f"{base}/{prop}")
        if data is not None:
            parts = (p.decode("utf-8", errors="replace").strip() for p in data.split(b"\0"))
            return [p for p in parts if p and p.isprintable()]
    return []


# ---------------------------------------------------------------------------------------------------
# /proc/cpuinfo
# ---------------------------------------------------------------------------------------------------
@dataclass
class CpuInfo:
    """/proc/cpuinfo: ``processors`` maps each CPU index to its ``key: value`` lines; ``common`` holds the
    lines outside processor blocks (``Hardware``, ``Revision``, ``Model``; old 32-bit ARM kernels put
    ``Features`` and ``CPU part`` there too)."""

    processors: dict = field(default_factory=dict)
    common: dict = field(default_factory=dict)

    def get(self, cpu: int, key: str) -> str | None:
        return self.processors.get(cpu, {}).get(key, self.common.get(key))

    def values(self, key: str) -> list[str]:
        """``key`` of every processor (the common value for processors without one)."""
        found = [self.get(c, key) for c in self.processors]
        return [v for v in found if v is not None] or ([self.common[key]] if key in self.common else [])


def parse_cpuinfo(text: str | None) -> CpuInfo:
    """Parse /proc/cpuinfo text; lines that are not ``key : value`` are skipped."""
    info = CpuInfo()
    current = None
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if not line.strip():
                current = None
            continue
        key, value = key.strip(), value.strip()
        if key == "processor":
            try:
                current = int(value, 10)
            except ValueError:
                current = None
                continue
            if not 0 <= current < _MAX_CPUS:
                current = None
                continue
            info.processors.setdefault(current, {})
        elif current is not None:
            info.processors[current][key] = value
        elif key:
            info.common.setdefault(key, value)
    return info


def _hex(value: str | None) -> int | None:
    try:
        return int(value, 16) if value else None
    except ValueError:
        return None


def _parts(info: CpuInfo) -> dict:
    """CPU index -> (implementer, part) where cpuinfo says both."""
    out = {}
    for cpu in info.processors:
        impl, part = _hex(info.get(cpu, "CPU implementer")), _hex(info.get(cpu, "CPU part"))
        if impl is not None and part is not None:
            out[cpu] = (impl, part)
    return out


# ---------------------------------------------------------------------------------------------------
# CPU facts
# ---------------------------------------------------------------------------------------------------
#: (implementer, part) -> LLVM CPU name (parts from Linux arch/arm64/include/asm/cputype.h)
ARM_CPUS = {
    (0x41, 0xc07): "cortex-a7", (0x41, 0xc08): "cortex-a8", (0x41, 0xc09): "cortex-a9", (0x41, 0xc0f): "cortex-a15",
    (0x41, 0xd01): "cortex-a32", (0x41, 0xd03): "cortex-a53", (0x41, 0xd04): "cortex-a35",
    (0x41, 0xd05): "cortex-a55", (0x41, 0xd07): "cortex-a57", (0x41, 0xd08): "cortex-a72",
    (0x41, 0xd09): "cortex-a73", (0x41, 0xd0a): "cortex-a75", (0x41, 0xd0b): "cortex-a76",
    (0x41, 0xd0c): "neoverse-n1", (0x41, 0xd0d): "cortex-a77", (0x41, 0xd0e): "cortex-a76ae",
    (0x41, 0xd40): "neoverse-v1", (0x41, 0xd41): "cortex-a78", (0x41, 0xd42): "cortex-a78ae",
    (0x41, 0xd44): "cortex-x1", (0x41, 0xd46): "cortex-a510", (0x41, 0xd47): "cortex-a710",
    (0x41, 0xd48): "cortex-x2", (0x41, 0xd49): "neoverse-n2", (0x41, 0xd4b): "cortex-a78c",
    (0x41, 0xd4f): "neoverse-v2", (0x41, 0xd80): "cortex-a520", (0x41, 0xd81): "cortex-a720",
    (0x4e, 0x004): "carmel",
    # NOTE: NVIDIA Denver (0x4e, 0x003: Jetson TX2) has no LLVM model; it counts as "generic"
}
#: in-order efficiency cores: the LITTLE side of big.LITTLE when cpufreq does not tell
LITTLE_PARTS = {(0x41, 0xc07), (0x41, 0xd01), (0x41, 0xd03), (0x41, 0xd04), (0x41, 0xd05), (0x41, 0xd46),
                (0x41, 0xd80)}

#: raw Linux hwcap names -> the normalized names edgedl uses (both are kept in Target.features)
_ARM_FEATURES = {"asimd": "neon", "neon": "neon", "asimddp": "dotprod", "fphp": "fp16", "asimdhp": "fp16",
                 "i8mm": "i8mm", "sve": "sve", "sve2": "sve2", "bf16": "bf16", "crc32": "crc", "atomics": "lse",
                 "lrcpc": "rcpc", "asimdfhm": "fp16fml", "asimdrdm": "rdm", "vfpv4": "vfp4", "vfpv3": "vfp3",
                 "sme": "sme", "svei8mm": "sve-i8mm"}
_X86_FEATURES = {"pni": "sse3", "sse4_1": "sse4.1", "sse4_2": "sse4.2", "abm": "lzcnt"}
#: x86-64 micro-architecture levels (psABI), as cpuinfo flags
_X86_LEVELS = (
    ("x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
    ("x86-64-v3", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave"}),
    ("x86-64-v2", {"cx16", "popcnt", "sse4_1", "sse4_2", "ssse3"}),
)


def _raw_features(info: CpuInfo) -> set[str]:
    """Flags every processor reports (ARM ``Features``, x86 ``flags``), lowercase."""
    sets = [set(v.lower().split()) for v in info.values("Features") + info.values("flags")]
    return set.intersection(*sets) if sets else set()


def normalize_features(raw: set[str]) -> frozenset[str]:
    """The raw flags plus edgedl's names: ``neon``, ``dotprod`` (asimddp), ``fp16`` (fphp/asimdhp), ``i8mm``,
    ``sve``...; x86 ``avx512_vnni`` -> ``avx512vnni``, ``avx_vnni`` -> ``avxvnni``, ``sse4_2`` -> ``sse4.2``."""
    out = set(raw)
    for flag in raw:
        if flag in _ARM_FEATURES:
            out.add(_ARM_FEATURES[flag])
        elif flag in _X86_FEATURES:
            out.add(_X86_FEATURES[flag])
        elif flag.startswith("avx"):
            out.add(flag.replace("_", ""))
    return frozenset(out)


def _arch_from_cpuinfo(info: CpuInfo, raw: set[str]) -> str | None:
    """"x86_64", "i686", "aarch64", "armv7l", "armv6l", or None when cpuinfo does not say."""
    if info.values("flags") or info.values("vendor_id"):
        return "x86_64" if "lm" in raw else "i686"
    names = " ".join(info.values("model name") + info.values("Processor")).lower()
    arch_field = set(info.values("CPU architecture"))
    if "asimd" in raw or "aarch64" in names:
        return "aarch64"
    if "armv6" in names:  # an ARM1176 says "CPU architecture: 7" too
        return "armv6l"
    if "armv7" in names or "7" in arch_field or raw & {"neon", "vfpv3", "vfpv4"}:
        return "armv7l"
    if "armv8" in names or "8" in arch_field:
        return "aarch64"
    return None


def _host_cpu_name() -> str | None:
    try:
        import llvmlite.binding as ll

        name = ll.get_host_cpu_name()
        return name if name and name != "generic" else None
    except Exception:  # no llvmlite, or it cannot tell
        return None


def _cpu_name(arch: str | None, big: tuple, parts: dict, raw: set[str], live: bool) -> str:
    """The LLVM CPU name: the commonest known core type among the big cores (ARM), LLVM's host CPU name
    (x86, root "/" only), else the x86-64 level the flags reach, else "generic"."""
    if arch and not arch.startswith(("x86", "i686")):
        names = Counter(ARM_CPUS[parts[c]] for c in big if parts.get(c) in ARM_CPUS)
        if names:
            return names.most_common(1)[0][0]
    if live and (arch is None or arch == _live_arch()):
        name = _host_cpu_name()
        if name:
            return name
    if arch in ("x86_64", "i686"):
        for level, flags in _X86_LEVELS:
            if flags <= raw:
                return level if arch == "x86_64" else "generic"
        return "x86-64" if arch == "x86_64" else "generic"
    return "generic"


def _live_arch() -> str:
    """The running process's arch: a 32-bit interpreter on a 64-bit kernel (Raspberry Pi OS 32-bit on a Pi
    4/5 boots an arm64 kernel) runs 32-bit code, whatever ``uname`` says."""
    machine = platform.machine().lower() or "unknown"
    if struct.calcsize("P") == 4:
        if machine in ("aarch64", "arm64", "armv8l"):
            return "armv7l"
        if machine in ("x86_64", "amd64"):
            return "i686"
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(machine, machine)


def _online(root: str) -> list[int]:
    """CPU indices from /sys/devices/system/cpu/online ("0-3,6"), else its cpuN folders."""
    text = _text(root, "sys/devices/system/cpu/online")
    cpus = set()
    try:
        for item in (text or "").strip().split(","):
            if item:
                lo, _, hi = item.partition("-")
                lo, hi = int(lo), int(hi or lo)
                if 0 <= lo <= hi < _MAX_CPUS:
                    cpus.update(range(lo, hi + 1))
    except ValueError:
        cpus = set()
    if not cpus:
        try:
            names = os.listdir(os.path.join(root, "sys/devices/system/cpu"))
        except OSError:
            names = []
        cpus = {int(n[3:]) for n in names if re.fullmatch(r"cpu\d{1,4}", n)}
    return sorted(cpus)


def split_big_little(cpus: list[int], freqs: dict, parts: dict) -> tuple[tuple, tuple, str]:
    """(big, little, how): cores whose cpuinfo_max_freq reaches the midpoint of the slowest and fastest are
    big (when the slowest runs below 85 % of the fastest: favoured-core boost differences are not
    big.LITTLE); without cpufreq, in-order efficiency cores (A53/A55/A510/A520...) are little. Else all big."""
    if cpus and all(freqs.get(c) for c in cpus):
        lo, hi = min(freqs[c] for c in cpus), max(freqs[c] for c in cpus)
        if lo < 0.85 * hi:
            mid = (lo + hi) / 2
            return (tuple(c for c in cpus if freqs[c] >= mid), tuple(c for c in cpus if freqs[c] < mid),
                    "cpufreq")
    if cpus and all(c in parts for c in cpus):
        little = tuple(c for c in cpus if parts[c] in LITTLE_PARTS)
        if little and len(little) < len(cpus):
            return tuple(c for c in cpus if c not in little), little, "cpu part"
    return tuple(cpus), (), "uniform"


_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)", re.IGNORECASE)


def _cache_sizes(root: str, cpu: int) -> dict:
    """{"l1d_bytes", "l2_bytes", "l3_bytes"} found under cpu{cpu}/cache/index*/."""
    base = f"sys/devices/system/cpu/cpu{cpu}/cache"
    try:
        entries = sorted(n for n in os.listdir(os.path.join(root, base)) if re.fullmatch(r"index\d{1,3}", n))
    except OSError:
        return {}
    out = {}
    for entry in entries:
        level = _int_file(root, f"{base}/{entry}/level")
        kind = (_text(root, f"{base}/{entry}/type") or "").strip().lower()
        m = _SIZE.match(_text(root, f"{base}/{entry}/size") or "")
        if level is None or not m or kind == "instruction":
            continue
        size = int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]
        if not 0 < size <= 1 << 32:  # garbage
            continue
        if level == 1 and kind == "data":
            out["l1d_bytes"] = size
        elif level in (2, 3) and kind in ("unified", "data"):
            out[f"l{level}_bytes"] = max(size, out.get(f"l{level}_bytes", 0))
    return out


def _memory(root: str) -> int | None:
    for line in (_text(root, "proc/meminfo") or "").splitlines():
        m = re.match(r"^MemTotal:\s*(\d+)\s*kB", line)
        if m and 0 < int(m.group(1)) < 1 << 40:  # kB: up to 1 PiB, else garbage
            return int(m.group(1)) * 1024
    return None


# ---------------------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------------------
@dataclass
class Machine:
    """Everything read from one root (unknown facts are None / empty)."""

    root: str
    live: bool
    model: str | None
    compatible: list
    dtsfilename: str | None
    tegra_release: str | None
    cpuinfo: CpuInfo
    arch: str | None
    cpus: list
    parts: dict
    raw_features: set
    big: tuple
    little: tuple
    big_little_by: str
    cpu: str
    caches: dict
    memory: int | None
    facts: dict


def probe(root: str = "/") -> Machine:
    """Read every fact under ``root`` (never raises for bad files)."""
    root = os.fspath(root)
    live = os.path.realpath(root) == "/"
    facts = {}
    info = parse_cpuinfo(_text(root, "proc/cpuinfo"))
    raw = _raw_features(info)
    arch = _arch_from_cpuinfo(info, raw)
    if live:
        live_arch = _live_arch()
        if arch is None or (arch == "aarch64" and live_arch == "armv7l") or (arch == "x86_64" and live_arch == "i686"):
            arch = live_arch
            facts["arch"] = "the running interpreter"
    cpus, how = sorted(info.processors), "cpuinfo"
    if not cpus:
        cpus, how = _online(root), "sysfs"
    if not cpus and live:
        cpus, how = list(range(os.cpu_count() or 1)), "os.cpu_count()"
    if cpus:
        facts["cores"] = how
    parts = _parts(info)
    freqs = {c: _int_file(root, f"sys/devices/system/cpu/cpu{c}/cpufreq/cpuinfo_max_freq") for c in cpus}
    freqs = {c: f for c, f in freqs.items() if f and f > 0}
    big, little, how = split_big_little(cpus, freqs, parts)
    facts["big_little"] = how
    caches = {}
    for c in dict.fromkeys((*big[:1], 0)):
        caches = _cache_sizes(root, c)
        if caches:
            facts["caches"] = f"sysfs cpu{c}"
            break
    memory = _memory(root)
    if memory:
        facts["memory"] = "meminfo"
    elif live:
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            facts["memory"] = "sysconf"
        except (ValueError, OSError, AttributeError):
            memory = None
    model = (_dt_strings(root, "model") or [None])[0]
    if model:
        facts["model"] = "device tree"
    elif info.common.get("Model"):
        model, facts["model"] = info.common["Model"], "cpuinfo"
    dts = (_dt_strings(root, "nvidia,dtsfilename") or [None])[0]
    release = (_text(root, "etc/nv_tegra_release") or "").strip() or None
    return Machine(root=root, live=live, model=model, compatible=[c.lower() for c in _dt_strings(root, "compatible")],
                   dtsfilename=dts, tegra_release=release, cpuinfo=info, arch=arch, cpus=cpus, parts=parts,
                   raw_features=raw, big=big, little=little, big_little_by=how,
                   cpu=_cpu_name(arch, big, parts, raw, live), caches=caches, memory=memory, facts=facts)


# ---------------------------------------------------------------------------------------------------
# naming the board
# ---------------------------------------------------------------------------------------------------
_PI_BOARDS = {
    "raspberrypi,5-model-b": "rpi5", "raspberrypi,500": "rpi5", "raspberrypi,5-compute-module": "rpi5",
    "raspberrypi,4-model-b": "rpi4", "raspberrypi,400": "rpi4", "raspberrypi,4-compute-module": "rpi4",
    "raspberrypi,3-model-b": "rpi3", "raspberrypi,3-model-b-plus": "rpi3", "raspberrypi,3-model-a-plus": "rpi3",
    "raspberrypi,3-compute-module": "rpi3", "raspberrypi,model-zero-2-w": "rpi-zero2w",
}
#: a Pi's SoC when the board entry is not one of the above (Compute Modules, Pi 2 v1.2...): same CPU
_PI_SOCS = {"brcm,bcm2712": "rpi5", "brcm,bcm2711": "rpi4", "brcm,bcm2837": "rpi3"}
#: revision code processor field (bits 12-15) -> profile; type 0x12 (bits 4-11) is the Zero 2 W
_PI_REVISION_SOCS = {2: "rpi3", 3: "rpi4", 4: "rpi5"}
_PI_CORES = {"rpi3": (0x41, 0xd03), "rpi-zero2w": (0x41, 0xd03), "rpi4": (0x41, 0xd08), "rpi5": (0x41, 0xd0b)}
_TEGRA_SOCS = {"tegra210": "jetson-nano", "tegra186": "jetson-tx2", "tegra194": "xavier", "tegra234": "orin"}
#: module / carrier numbers that name one board (carriers shared by several modules, p3449 / p3509 /
#: p3768, are left out)
_JETSON_MODULES = {"p3448": "jetson-nano", "p3450": "jetson-nano", "p3541": "jetson-nano",
                   "p3310": "jetson-tx2", "p3489": "jetson-tx2", "p3636": "jetson-tx2", "p2771": "jetson-tx2",
                   "p3668": "jetson-xavier-nx", "p2888": "jetson-agx-xavier", "p2972": "jetson-agx-xavier",
                   "p2822": "jetson-agx-xavier", "p3701": "jetson-agx-orin", "p3737": "jetson-agx-orin"}
#: p3767 SKUs: Orin NX 16 GB / 8 GB, Orin Nano 8 GB / 4 GB / 8 GB developer kit
_P3767_SKUS = {"0000": "jetson-orin-nx", "0001": "jetson-orin-nx", "0003": "jetson-orin-nano",
               "0004": "jetson-orin-nano", "0005": "jetson-orin-nano"}
_JETSON_SOC_OF = {"jetson-nano": "tegra210", "jetson-tx2": "tegra186", "jetson-xavier-nx": "tegra194",
                  "jetson-agx-xavier": "tegra194", "jetson-orin-nano": "tegra234", "jetson-orin-nx": "tegra234",
                  "jetson-agx-orin": "tegra234"}


def _pi_from_model(model: str) -> str | None:
    m = model.lower()
    if "raspberry pi" not in m:
        return None
    if "zero 2" in m:
        return "rpi-zero2w"
    digit = re.search(r"raspberry pi (?:compute module )?(\d)", m)
    return {"5": "rpi5", "4": "rpi4", "3": "rpi3"}.get(digit.group(1)) if digit else None


def _pi_from_revision(machine: Machine) -> tuple[str | None, int | None]:
    """(profile, installed memory) from a new-style revision code (bit 23 set), when the machine looks like a
    Pi: cpuinfo Hardware says BCM2xxx, or the cores are the ones that Pi has."""
    code = _hex(machine.cpuinfo.common.get("Revision"))
    if code is None or not code >> 23 & 1:
        return None, None
    name = "rpi-zero2w" if (code >> 4) & 0xFF == 0x12 else _PI_REVISION_SOCS.get((code >> 12) & 0xF)
    if name is None:
        return None, None
    hardware = machine.cpuinfo.common.get("Hardware", "").upper()
    parts = set(machine.parts.values())
    if not hardware.startswith("BCM2") and parts != {_PI_CORES[name]}:
        return None, None
    return name, 256 << 20 << ((code >> 20) & 7)


def _tegra_soc(machine: Machine) -> str | None:
    """The Jetson SoC (``tegra210``...) from compatible, dtsfilename, L4T release and the CPU cores."""
    for c in machine.compatible:
        m = re.fullmatch(r"nvidia,(tegra\d{3})", c)
        if m:
            return m.group(1)
    m = re.search(r"\b(tegra\d{3})-", machine.dtsfilename or "")
    if m:
        return m.group(1)
    jetson = (machine.tegra_release is not None or "jetson" in (machine.model or "").lower()
              or any(c.startswith("nvidia,") for c in machine.compatible))
    if not jetson:
        return None
    parts = set(machine.parts.values())
    if (0x4e, 0x004) in parts:
        return "tegra194"
    if (0x4e, 0x003) in parts:
        return "tegra186"
    if parts == {(0x41, 0xd42)}:
        return "tegra234"
    if parts == {(0x41, 0xd07)}:
        return "tegra210"
    board = re.search(r"BOARD:\s*(\w+)", machine.tegra_release or "")
    if board and board.group(1) == "t210ref":
        return "tegra210"
    if re.match(r"#\s*R3[6-9]\b", machine.tegra_release or ""):
        return "tegra234"
    return None


def _jetson_from_numbers(text: str) -> str | None:
    m = re.search(r"p3767-(\d{4})", text)
    if m and m.group(1) in _P3767_SKUS:
        return _P3767_SKUS[m.group(1)]
    for number, name in _JETSON_MODULES.items():
        if re.search(rf"\b{number}\b", text):
            return name
    return None


def _jetson_from_model(model: str) -> str | None:
    m = model.lower()
    for words, name in ((("orin nano",), "jetson-orin-nano"), (("orin nx",), "jetson-orin-nx"),
                        (("agx orin",), "jetson-agx-orin"), (("xavier nx",), "jetson-xavier-nx"),
                        (("agx xavier", "jetson-agx"), "jetson-agx-xavier"), (("tx2", "quill", "lanai"), "jetson-tx2"),
                        (("jetson nano", "jetson-nano"), "jetson-nano")):
        if any(w in m for w in words):
            return name
    return None


def _jetson_from_size(soc: str, cores: int, memory: int | None) -> str:
    """A Xavier or Orin module by its size: Xavier NX has 6 cores, AGX Xavier 8; Orin Nano 6, Orin NX 6 (8 GB)
    or 8 (16 GB), AGX Orin 8 (32 GB) or 12 (64 GB). Ambiguous sizes take the smaller board."""
    gib = (memory or 0) / (1 << 30)
    if soc == "tegra194":
        return "jetson-agx-xavier" if cores >= 8 else "jetson-xavier-nx"
    if cores >= 12 or (cores >= 8 and gib > 17):
        return "jetson-agx-orin"
    return "jetson-orin-nx" if cores >= 8 else "jetson-orin-nano"


def identify(machine: Machine) -> tuple[str | None, str]:
    """(profile name or None, how it was found).

    Raspberry Pi: a ``raspberrypi,*`` compatible entry, else the ``brcm,bcm27xx`` SoC entry, else the model
    string, else the revision code. Jetson: the module number (``p3767-SKU``, ``p3701``, ``p3668``, ``p2888``...)
    in compatible or dtsfilename, else the model string, else the SoC (compatible ``nvidia,tegraNNN``,
    dtsfilename, the CPU cores, nv_tegra_release) with the board picked by core count and memory where the
    SoC has several (see :func:`_jetson_from_size`). ``tegra210`` is taken as a Nano (a TX1 has the same CPU
    and GPU). A result that contradicts the SoC is dropped."""
    for c in machine.compatible:
        if c in _PI_BOARDS:
            return _PI_BOARDS[c], f"compatible {c}"
    for c in machine.compatible:
        if c in _PI_SOCS:
            return _PI_SOCS[c], f"compatible {c}"
    if machine.model and _pi_from_model(machine.model):
        return _pi_from_model(machine.model), f"model {machine.model!r}"
    name, _ = _pi_from_revision(machine)
    if name:
        return name, f"revision {machine.cpuinfo.common.get('Revision')}"

    soc = _tegra_soc(machine)
    if soc is None or soc not in _TEGRA_SOCS:
        return None, "unknown board"
    sources = [("compatible", c) for c in machine.compatible]
    sources += [("dtsfilename", machine.dtsfilename or ""), ("model", machine.model or "")]
    for how, text in sources:
        name = _jetson_from_numbers(text) or (_jetson_from_model(text) if how == "model" else None)
        if name and _JETSON_SOC_OF[name] == soc:
            return name, f"{how} {text}"
    name = _TEGRA_SOCS[soc]
    if name in ("xavier", "orin"):
        return _jetson_from_size(soc, len(machine.cpus), machine.memory), f"{soc} by cores and memory"
    return name, f"soc {soc}"


# ---------------------------------------------------------------------------------------------------
# the target
# ---------------------------------------------------------------------------------------------------
#: LLVM feature -> the cpuinfo feature (normalized) the CPU must show for code that uses it
_NEEDS = {"dotprod": "dotprod", "fullfp16": "fp16", "i8mm": "i8mm", "sve": "sve", "sve2": "sve2", "bf16": "bf16"}


def _affinity_cap(n: int, live: bool) -> int:
    if live and hasattr(os, "sched_getaffinity"):
        try:
            return max(1, min(n, len(os.sched_getaffinity(0))))
        except OSError:
            pass
    return n


def _checked_codegen(target: Target, features: frozenset) -> dict:
    """Drop ``+feature`` entries (and the ``sdot`` kernel) the detected CPU does not report: code for a
    feature the CPU lacks dies of SIGILL."""
    if not features:
        return {}
    changes = {}
    if target.codegen_features:
        kept = [f for f in target.codegen_features.split(",")
                if not (f.strip().startswith("+") and _NEEDS.get(f.strip()[1:], "") not in ("", *features))]
        if len(kept) != len(target.codegen_features.split(",")):
            changes["codegen_features"] = ",".join(kept) or None
    if target.int8_kernel == "sdot" and "dotprod" not in features:
        changes["int8_kernel"] = "pairs"
    return changes


def on_machine(profile: Profile, machine: Machine, how: str) -> Target:
    """The profile's target with the machine's facts in place of the nominal ones; its choices stay (threads
    capped at the detected big cores, arch-bound choices switched for the arch the OS runs)."""
    nominal = profile.target
    cores = len(machine.cpus) or nominal.cores
    features = normalize_features(machine.raw_features) if machine.raw_features else nominal.features
    big, little = (machine.big, machine.little) if machine.cpus else (nominal.big_cores, nominal.little_cores)
    facts = dict(machine.facts, board=how)
    _, pi_memory = _pi_from_revision(machine)
    if pi_memory:
        facts["board_memory_bytes"] = str(pi_memory)
    memory = machine.memory or pi_memory or nominal.memory_bytes
    if not machine.memory:
        facts["memory"] = "revision code" if pi_memory else "profile"
    if machine.dtsfilename:
        facts["dtsfilename"] = machine.dtsfilename
    if machine.tegra_release:
        facts["l4t"] = machine.tegra_release.splitlines()[0]
    target = nominal.replace(
        description=machine.model or nominal.description, arch=machine.arch or nominal.arch,
        cpu=machine.cpu if machine.cpu != "generic" else nominal.cpu, cores=cores, big_cores=big,
        little_cores=little, features=features, memory_bytes=memory,
        l1d_bytes=machine.caches.get("l1d_bytes", nominal.l1d_bytes),
        l2_bytes=machine.caches.get("l2_bytes", nominal.l2_bytes),
        l3_bytes=machine.caches.get("l3_bytes", nominal.l3_bytes),
        threads=_affinity_cap(max(1, min(nominal.threads, cores)), machine.live), detected=True, facts=facts)
    target = target.replace(**profile.choices_for(machine.arch))
    return target.replace(**_checked_codegen(target, features if machine.raw_features else frozenset()))


def host_target(machine: Machine) -> Target:
    """A target for a machine without a profile: every fact detected, Numba's defaults for code generation."""
    info = machine.cpuinfo
    description = (machine.model or (info.values("model name") or [None])[0] or info.common.get("Hardware")
                   or "unknown machine")
    cores = len(machine.cpus) or 1
    big = machine.big or tuple(range(cores))
    return Target(
        name="host", description=description, arch=machine.arch or "unknown", cpu=machine.cpu, cores=cores,
        big_cores=big, little_cores=machine.little, features=normalize_features(machine.raw_features),
        l1d_bytes=machine.caches.get("l1d_bytes"), l2_bytes=machine.caches.get("l2_bytes"),
        l3_bytes=machine.caches.get("l3_bytes"), memory_bytes=machine.memory,
        threads=_affinity_cap(max(1, min(len(big), cores)), machine.live), source="detected", detected=True,
        facts=dict(machine.facts, board="unknown board"))


def detect(root="/") -> Target:
    """The :class:`Target` of the machine whose files lie under ``root`` (``"/"``: this one).

    A recognised board (Raspberry Pi 3/3+/Zero 2 W/4/5, Jetson Nano/TX2/Xavier NX/AGX Xavier/Orin Nano/Orin NX/
    AGX Orin) gets its profile's choices with the detected facts (cores, big cores, features, caches, memory)
    in place of the nominal ones; anything else is ``"host"``, every fact detected and code generation left
    to Numba. Never raises for missing, unreadable or garbage files."""
    machine = probe(root)
    name, how = identify(machine)
    if name is not None:
        path = _profile_path(name)
        if path.is_file():
            return on_machine(read_profile(path), machine, how)
    return host_target(machine)
