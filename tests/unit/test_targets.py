"""Targets: board detection on fake roots (tests/unit/boards.py), the shipped profiles, the profile schema,
and what LLVM makes of each profile's code generation choices."""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import platform
import sys

import pytest
from boards import make_tree

from edgedl import targets
from edgedl.errors import EdgeDLError

Target, detect, resolve_target = targets.Target, targets.detect, targets.resolve_target
load_profile, load_profile_file, profiles = targets.load_profile, targets.load_profile_file, targets.profiles
# NOTE: edgedl.targets.detect is the function; its module is reached through importlib
detect_module = importlib.import_module("edgedl.targets.detect")
profile_module = importlib.import_module("edgedl.targets.profile")

KB = 1024
PROFILED = ["rpi3", "rpi4", "rpi5", "rpi-zero2w", "jetson-nano", "jetson-tx2", "jetson-xavier-nx",
            "jetson-agx-xavier", "jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin"]

# fixture board -> (profile, cpu, cores, threads, dotprod, fp16, MemTotal kB, gpu)
EXPECTED = {
    "rpi3": ("rpi3", "cortex-a53", 4, 4, False, False, 948304, None),
    "rpi3-plus": ("rpi3", "cortex-a53", 4, 4, False, False, 948304, None),
    "rpi-zero2w": ("rpi-zero2w", "cortex-a53", 4, 4, False, False, 439592, None),
    "rpi4": ("rpi4", "cortex-a72", 4, 4, False, False, 3884376, None),
    "rpi5": ("rpi5", "cortex-a76", 4, 4, True, True, 8245856, None),
    "rpi5-no-compatible": ("rpi5", "cortex-a76", 4, 4, True, True, 8245856, None),
    "jetson-nano": ("jetson-nano", "cortex-a57", 4, 4, False, False, 4051032, "sm_53"),
    "jetson-tx2": ("jetson-tx2", "cortex-a57", 6, 6, False, False, 8038960, "sm_62"),
    "jetson-xavier-nx": ("jetson-xavier-nx", "carmel", 6, 6, False, True, 7765116, "sm_72"),
    "jetson-agx-xavier": ("jetson-agx-xavier", "carmel", 8, 8, False, True, 32546248, "sm_72"),
    "jetson-orin-nano": ("jetson-orin-nano", "cortex-a78ae", 6, 6, True, True, 7620304, "sm_87"),
    "jetson-orin-nx": ("jetson-orin-nx", "cortex-a78ae", 8, 8, True, True, 15655852, "sm_87"),
    "jetson-agx-orin": ("jetson-agx-orin", "cortex-a78ae", 12, 12, True, True, 64335836, "sm_87"),
}


# ---------------------------------------------------------------------------------------------------
# detection of the profiled boards
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("board", sorted(EXPECTED))
def test_detects_profiled_board(tmp_path, board):
    name, cpu, cores, threads, dotprod, fp16, mem_kb, gpu = EXPECTED[board]
    t = detect(make_tree(tmp_path, board))
    assert (t.name, t.cpu, t.cores, t.threads, t.gpu) == (name, cpu, cores, threads, gpu)
    assert t.arch == "aarch64" and t.detected and t.source.endswith(f"{name}.toml")
    assert t.big_cores == tuple(range(cores)) and t.little_cores == ()
    assert ("dotprod" in t.features) is dotprod and ("fp16" in t.features) is fp16
    assert "neon" in t.features and "i8mm" not in t.features and "sve" not in t.features
    assert t.memory_bytes == mem_kb * KB
    assert t.codegen_cpu == cpu
    assert ("+dotprod" in t.codegen_features.split(",")) is dotprod
    assert t.int8_kernel == ("sdot" if dotprod else "pairs")
    assert t.gemm_tile == (6, 8, 2, 4)
    assert t.device == "cpu"
    assert t.preferred_device == ("cuda" if name.startswith("jetson") else "cpu")
    model = (make_tree(tmp_path, board) / "proc/device-tree/model").read_bytes().rstrip(b"\0").decode()
    assert t.description == model


def test_pi_facts_and_caches(tmp_path):
    t = detect(make_tree(tmp_path, "rpi5"))
    assert t.description == "Raspberry Pi 5 Model B Rev 1.0"
    assert (t.l1d_bytes, t.l2_bytes, t.l3_bytes) == (64 * KB, 512 * KB, 2048 * KB)
    assert t.facts["board_memory_bytes"] == str(8 << 30)  # revision d04170: 8 GB
    t = detect(make_tree(tmp_path, "rpi4"))  # no cache info in sysfs: the profile's nominal sizes
    assert (t.l1d_bytes, t.l2_bytes, t.l3_bytes) == (32 * KB, 1024 * KB, None)


def test_pi4_on_a_32_bit_os_compiles_for_32_bit_arm(tmp_path):
    t = detect(make_tree(tmp_path, "rpi4-32bit"))
    assert t.name == "rpi4" and t.arch == "armv7l" and t.cpu == "cortex-a72"
    assert t.codegen_cpu == "cortex-a72" and t.codegen_features == "+neon,+vfp4"
    assert t.gemm_tile == (4, 4, 2, 2) and t.int8_kernel == "pairs"
    assert {"neon", "vfp4", "crc"} <= t.features and "dotprod" not in t.features


def test_pi5_on_a_32_bit_os_drops_sdot(tmp_path):
    from boards import A76, ARMV7_FEATURES, arm_cpuinfo

    cpuinfo = arm_cpuinfo([A76] * 4, ARMV7_FEATURES, model_name="ARMv7 Processor rev 1 (v7l)", arch="7")
    t = detect(make_tree(tmp_path, "rpi5", cpuinfo=cpuinfo))
    assert t.name == "rpi5" and t.arch == "armv7l"
    assert t.codegen_features == "+neon,+vfp4" and t.int8_kernel == "pairs" and t.gemm_tile == (4, 4, 2, 2)


def test_pi_from_model_string_alone_and_from_revision_code(tmp_path):
    t = detect(make_tree(tmp_path, "rpi5-no-compatible"))
    assert t.name == "rpi5" and t.facts["board"].startswith("model")
    # no device tree at all, cpuinfo without its Model line: the revision code (d04170: type 0x17, BCM2712)
    from boards import A76, PI5_FEATURES, arm_cpuinfo

    cpuinfo = arm_cpuinfo([A76] * 4, PI5_FEATURES, hardware="BCM2835", revision="d04170")
    t = detect(make_tree(tmp_path, "rpi5", compatible=None, model=None, cpuinfo=cpuinfo))
    assert t.name == "rpi5" and t.facts["board"] == "revision d04170"
    # the Zero 2 W and the Pi 3 share the BCM2837: the type field tells them apart
    from boards import A53, PI3_FEATURES

    for revision, name in (("902120", "rpi-zero2w"), ("a02082", "rpi3"), ("a020d3", "rpi3"), ("c03114", "rpi4")):
        core = A53 if name != "rpi4" else ("0x41", "0x0", "0xd08", "3")
        cpuinfo = arm_cpuinfo([core] * 4, PI3_FEATURES, hardware="BCM2835", revision=revision)
        assert detect(make_tree(tmp_path, "rpi3", compatible=None, model=None, cpuinfo=cpuinfo)).name == name


def test_revision_code_needs_pi_evidence(tmp_path):
    from boards import A55, PI5_FEATURES, arm_cpuinfo

    # a Pi 5 revision code on a board with other cores and no BCM hardware line is not a Pi 5
    cpuinfo = arm_cpuinfo([A55] * 4, PI5_FEATURES, revision="d04170")
    assert detect(make_tree(tmp_path, "rpi5", compatible=None, model=None, cpuinfo=cpuinfo)).name == "host"


@pytest.mark.parametrize("compatible,name", [
    (["raspberrypi,400", "brcm,bcm2711"], "rpi4"),
    (["raspberrypi,4-compute-module", "brcm,bcm2711"], "rpi4"),
    (["raspberrypi,5-compute-module", "brcm,bcm2712"], "rpi5"),
    (["raspberrypi,3-model-a-plus", "brcm,bcm2837"], "rpi3"),
    (["raspberrypi,3-compute-module-plus", "brcm,bcm2837"], "rpi3"),  # by SoC
    (["raspberrypi,2-model-b", "brcm,bcm2836"], "host"),  # Cortex-A7: no profile
])
def test_pi_variants_map_to_their_soc_profile(tmp_path, compatible, name):
    t = detect(make_tree(tmp_path, "rpi4", compatible=compatible, model="Some board", cpuinfo="processor : 0\n"))
    assert t.name == name


@pytest.mark.parametrize("sku,name", [("0000", "jetson-orin-nx"), ("0001", "jetson-orin-nx"),
                                      ("0003", "jetson-orin-nano"), ("0004", "jetson-orin-nano"),
                                      ("0005", "jetson-orin-nano")])
def test_orin_p3767_sku(tmp_path, sku, name):
    root = make_tree(tmp_path, "jetson-orin-nano", model="NVIDIA Jetson",
                     compatible=[f"nvidia,p3768-0000+p3767-{sku}", f"nvidia,p3767-{sku}", "nvidia,tegra234"])
    t = detect(root)
    assert t.name == name and t.gpu == "sm_87" and t.int8_kernel == "sdot"
    assert t.threads == 6  # the fixture has 6 cores: the profile's thread count is capped


def test_orin_without_compatible_uses_dtsfilename_then_model_then_size(tmp_path):
    t = detect(make_tree(tmp_path, "jetson-agx-orin", compatible=None))
    assert t.name == "jetson-agx-orin" and t.facts["board"].startswith("dtsfilename")
    t = detect(make_tree(tmp_path, "jetson-orin-nx", compatible=None, dtsfilename=None))
    assert t.name == "jetson-orin-nx" and t.facts["board"].startswith("model")
    # nothing but L4T and the cores: tegra234 by the A78AE cores, the board by size
    for board, name in (("jetson-orin-nano", "jetson-orin-nano"), ("jetson-orin-nx", "jetson-orin-nx"),
                        ("jetson-agx-orin", "jetson-agx-orin")):
        t = detect(make_tree(tmp_path, board, compatible=None, dtsfilename=None, model=None))
        assert t.name == name and "by cores and memory" in t.facts["board"]


def test_xavier_nx_versus_agx(tmp_path):
    assert detect(make_tree(tmp_path, "jetson-xavier-nx", compatible=None)).name == "jetson-xavier-nx"
    assert detect(make_tree(tmp_path, "jetson-agx-xavier", compatible=None, dtsfilename=None)).name \
        == "jetson-agx-xavier"  # model "Jetson-AGX"
    for board in ("jetson-xavier-nx", "jetson-agx-xavier"):
        t = detect(make_tree(tmp_path, board, compatible=None, dtsfilename=None, model=None))
        assert t.name == board and t.cpu == "carmel" and "dotprod" not in t.features


def test_jetson_from_l4t_release_and_cores_only(tmp_path):
    t = detect(make_tree(tmp_path, "jetson-tx2", compatible=None, dtsfilename=None, model=None))
    assert t.name == "jetson-tx2" and t.cpu == "cortex-a57" and t.cores == 6
    assert t.facts["l4t"].startswith("# R32 (release), REVISION: 7.1")
    t = detect(make_tree(tmp_path, "jetson-nano", compatible=None, dtsfilename=None, model=None))
    assert t.name == "jetson-nano"
    # A57 cores without any Jetson sign are just a host
    t = detect(make_tree(tmp_path, "jetson-nano", compatible=None, dtsfilename=None, model=None,
                         nv_tegra_release=None))
    assert t.name == "host" and t.cpu == "cortex-a57"


def test_unprofiled_tegra_is_host(tmp_path):
    # Jetson Thor (tegra264, Neoverse V3AE) has no profile: it must not be taken for an Orin
    from boards import arm_cpuinfo

    cpuinfo = arm_cpuinfo([("0x41", "0x0", "0xd83", "0")] * 14, "fp asimd asimddp sve sve2 i8mm bf16")
    t = detect(make_tree(tmp_path, "jetson-agx-orin", compatible=["nvidia,p3834-0008", "nvidia,tegra264"],
                         dtsfilename=None, model="NVIDIA Jetson AGX Thor Developer Kit", cpuinfo=cpuinfo))
    assert t.name == "host" and {"sve", "i8mm", "dotprod"} <= t.features


def test_denver_cores_of_tx2(tmp_path):
    t = detect(make_tree(tmp_path, "jetson-tx2"))
    assert t.big_cores == (0, 1, 2, 3, 4, 5)  # Denver and A57 run at the same top clock
    # with the Denver cores offline (nvpmodel), cpuinfo lists 4 cores
    from boards import A57, TX2_FEATURES, arm_cpuinfo

    t = detect(make_tree(tmp_path, "jetson-tx2", cpuinfo=arm_cpuinfo([A57] * 4, TX2_FEATURES), max_freq=None))
    assert t.name == "jetson-tx2" and t.cores == 4 and t.threads == 4


def test_detected_facts_replace_nominal_ones(tmp_path):
    from boards import A72, PI3_FEATURES, arm_cpuinfo, meminfo

    t = detect(make_tree(tmp_path, "rpi4", meminfo=meminfo(1893780), cpuinfo=arm_cpuinfo([A72] * 2, PI3_FEATURES)))
    assert t.memory_bytes == 1893780 * KB and t.cores == 2 and t.threads == 2 and t.big_cores == (0, 1)
    nominal = load_profile("rpi4")
    assert nominal.memory_bytes == 4 << 30 and nominal.cores == 4 and not nominal.detected
    # no meminfo: the revision code's memory, else the profile's
    t = detect(make_tree(tmp_path, "rpi4", meminfo=None))
    assert t.memory_bytes == 4 << 30 and t.facts["memory"] == "revision code"
    t = detect(make_tree(tmp_path, "jetson-nano", meminfo=None))
    assert t.memory_bytes == load_profile("jetson-nano").memory_bytes and t.facts["memory"] == "profile"


def test_codegen_never_asks_for_features_the_cpu_lacks(tmp_path):
    from boards import A76, PI3_FEATURES, arm_cpuinfo

    # a Pi 5 whose kernel reports no dot product / fp16: no +dotprod, no sdot (an illegal instruction otherwise)
    t = detect(make_tree(tmp_path, "rpi5", cpuinfo=arm_cpuinfo([A76] * 4, PI3_FEATURES)))
    assert t.name == "rpi5" and t.int8_kernel == "pairs"
    assert "+dotprod" not in t.codegen_features and "+fullfp16" not in t.codegen_features
    assert "+neon" in t.codegen_features


# ---------------------------------------------------------------------------------------------------
# machines without a profile
# ---------------------------------------------------------------------------------------------------
def test_amd_laptop(tmp_path):
    t = detect(make_tree(tmp_path, "x86-amd-laptop"))
    assert (t.name, t.arch, t.cpu, t.cores, t.threads) == ("host", "x86_64", "x86-64-v4", 16, 16)
    assert t.big_cores == tuple(range(16)) and t.little_cores == ()  # 5.13 vs 4.95 GHz is not big.LITTLE
    assert {"avx2", "fma", "avx512f", "avx512bw", "avx512vnni", "avx512vbmi", "avx512_vnni", "sse4.2"} <= t.features
    assert "avxvnni" not in t.features
    assert (t.codegen_cpu, t.codegen_features, t.int8_kernel, t.gemm_tile, t.gpu) == (None, None, None, None, None)
    assert (t.l1d_bytes, t.l2_bytes, t.l3_bytes) == (32 * KB, 1024 * KB, 16384 * KB)
    assert t.description.startswith("AMD Ryzen 7 7840U") and t.source == "detected" and t.detected


def test_intel_hybrid_laptop(tmp_path):
    t = detect(make_tree(tmp_path, "x86-intel-laptop"))
    assert t.name == "host" and t.cpu == "x86-64-v3" and t.cores == 16
    assert t.big_cores == tuple(range(8)) and t.little_cores == tuple(range(8, 16)) and t.threads == 8
    assert {"avx2", "fma", "avxvnni"} <= t.features and "avx512f" not in t.features
    assert t.l1d_bytes == 48 * KB and t.l2_bytes == 1280 * KB  # a P-core's caches


@pytest.mark.parametrize("board", ["rock5b", "orangepi5"])
def test_rk3588_big_little(tmp_path, board):
    t = detect(make_tree(tmp_path, board))
    assert t.name == "host" and t.arch == "aarch64" and t.cpu == "cortex-a76"
    assert t.big_cores == (4, 5, 6, 7) and t.little_cores == (0, 1, 2, 3) and t.threads == 4 and t.cores == 8
    assert {"neon", "dotprod", "fp16"} <= t.features and "i8mm" not in t.features
    assert t.l2_bytes == 512 * KB  # the A76's, not the A55's
    assert t.codegen_cpu is None and t.int8_kernel is None
    assert t.facts["big_little"] == ("cpufreq" if board == "rock5b" else "cpu part")


def test_x86_flags_set_the_cpu_level(tmp_path):
    from boards import x86_cpuinfo

    t = detect(make_tree(tmp_path, "x86-amd-laptop", cpuinfo=x86_cpuinfo(2, "GenuineIntel", "Old", "fpu lm sse sse2")))
    assert t.cpu == "x86-64" and t.arch == "x86_64"
    t = detect(make_tree(tmp_path, "x86-amd-laptop", cpuinfo=x86_cpuinfo(2, "GenuineIntel", "Atom", "fpu sse sse2")))
    assert t.arch == "i686" and t.cpu == "generic"


# ---------------------------------------------------------------------------------------------------
# broken files never crash detection
# ---------------------------------------------------------------------------------------------------
CORRUPTIBLE = ["proc/cpuinfo", "proc/meminfo", "proc/device-tree/model", "proc/device-tree/compatible",
               "proc/device-tree/nvidia,dtsfilename", "etc/nv_tegra_release",
               "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "sys/devices/system/cpu/online",
               "sys/devices/system/cpu/cpu0/cache/index0/size", "sys/devices/system/cpu/cpu0/cache/index0/level"]


def _corrupt(root, rel, kind):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink():
        return
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "missing":
        return
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink-loop":
        os.symlink(path.name, path)
    elif kind == "device":
        os.symlink("/dev/zero", path)
    elif kind == "unreadable":
        path.write_text("processor : 0\n")
        path.chmod(0)
    else:
        path.write_bytes({
            "empty": b"", "nul": b"\0" * 64, "binary": bytes(range(256)) * 16, "latin1": "Ünïcödé ÿ".encode("latin-1"),
            "huge": b"processor\t: 0\nFeatures\t: " + b"asimd " * 400000 + b"\n", "negative": b"-12\n",
            "text": b"lorem ipsum: dolor: sit\nprocessor : x\n\n\nMemTotal: kB\n0-\n,,\n9-3\n",
            "overflow": b"processor : 99999999999999999999\nMemTotal: 99999999999999999999999 kB\n" + b"9" * 50,
        }[kind])


@pytest.mark.parametrize("kind", ["missing", "empty", "nul", "binary", "latin1", "huge", "negative", "text",
                                  "overflow", "directory", "fifo", "symlink-loop", "device", "unreadable"])
@pytest.mark.parametrize("board", ["rpi5", "jetson-orin-nano", "rock5b"])
def test_corrupt_files_never_crash(tmp_path, board, kind):
    root = make_tree(tmp_path, board)
    for rel in CORRUPTIBLE:
        _corrupt(root, rel, kind)
    t = detect(root)
    assert isinstance(t, Target) and t.cores >= 1 and 1 <= t.threads <= t.cores
    assert len(set(t.big_cores) | set(t.little_cores)) == len(t.big_cores) + len(t.little_cores) == t.cores
    json.dumps(t.to_dict())


@pytest.mark.parametrize("board", ["garbage", "binary", "empty", "missing"])
def test_broken_machines_are_host(tmp_path, board):
    t = detect(make_tree(tmp_path, board))
    assert t.name == "host" and t.cores >= 1 and t.threads >= 1 and t.codegen_features is None
    assert t.memory_bytes is None and t.train_budget_bytes is None


def test_root_that_does_not_exist(tmp_path):
    t = detect(tmp_path / "nowhere")
    assert t.name == "host" and t.cores == 1 and t.arch == "unknown"


@pytest.mark.parametrize("board", sorted(EXPECTED))
def test_one_file_at_a_time_may_be_garbage(tmp_path, board):
    root = make_tree(tmp_path, board)
    for rel in CORRUPTIBLE[:6]:
        _corrupt(root, rel, "binary")
        detect(root)


# ---------------------------------------------------------------------------------------------------
# this machine
# ---------------------------------------------------------------------------------------------------
def test_this_machine():
    t = detect()
    assert t.detected and t.cores == os.cpu_count()
    assert 1 <= t.threads <= t.cores
    assert t.memory_bytes and t.memory_bytes > 0
    if t.name == "host":
        assert t.codegen_cpu is None and t.source == "detected"
        if platform.machine().lower() in ("x86_64", "amd64"):
            assert t.arch == "x86_64" and t.cpu not in ("generic", "") and {"sse2", "neon"} & t.features
    assert resolve_target("host").name == "host" and resolve_target(None).name == t.name


def test_live_arch_follows_the_interpreter(monkeypatch):
    monkeypatch.setattr(detect_module.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(detect_module.struct, "calcsize", lambda fmt: 4)
    assert detect_module._live_arch() == "armv7l"  # 32-bit Raspberry Pi OS on an arm64 kernel
    monkeypatch.setattr(detect_module.struct, "calcsize", lambda fmt: 8)
    assert detect_module._live_arch() == "aarch64"
    monkeypatch.setattr(detect_module.platform, "machine", lambda: "AMD64")
    assert detect_module._live_arch() == "x86_64"


# ---------------------------------------------------------------------------------------------------
# shipped profiles
# ---------------------------------------------------------------------------------------------------
def test_profile_list():
    assert profiles() == sorted(PROFILED)
    assert "host" not in profiles()


@pytest.mark.parametrize("name", PROFILED)
def test_shipped_profile(name):
    t = load_profile(name)
    assert t.name == name and t.source.endswith(f"{name}.toml") and not t.detected and t.tuned is None
    assert t.arch == "aarch64" and t.codegen_cpu == t.cpu and 1 <= t.threads <= t.cores
    assert t.big_cores == tuple(range(t.cores)) and t.little_cores == ()
    assert t.memory_bytes > 0 and t.train_budget_bytes == int(t.memory_bytes * t.train_budget_fraction)
    assert (t.int8_kernel == "sdot") == ("dotprod" in t.features) == ("+dotprod" in t.codegen_features.split(","))
    assert ("fp16" in t.features) == ("+fullfp16" in t.codegen_features.split(","))
    assert t.device == "cpu" and t.precision == "fp32"
    if name.startswith("jetson"):
        assert t.gpu.startswith("sm_") and t.preferred_device == "cuda" and t.threads == t.cores
    else:
        assert t.gpu is None and t.preferred_device == "cpu"
    json.dumps(t.to_dict())
    assert resolve_target(name) == t  # not this machine: the nominal profile


def test_profile_names_are_their_files():
    for name in profiles():
        assert load_profile_file(profile_module.profile_path(name)).name == name


def test_unknown_target_lists_the_valid_ones():
    with pytest.raises(EdgeDLError) as e:
        resolve_target("rpi9")
    for name in ["host", *PROFILED]:
        assert name in str(e.value)
    with pytest.raises(EdgeDLError, match="rpi5"):
        load_profile("raspberry")
    with pytest.raises(EdgeDLError):
        resolve_target(42)


def test_resolve_target_forms(tmp_path):
    t = load_profile("rpi4")
    assert resolve_target(t) is t
    path = tmp_path / "mine.toml"
    path.write_text(open(profile_module.profile_path("rpi4")).read().replace("threads = 4", "threads = 2", 1))
    assert resolve_target(str(path)).threads == 2 and resolve_target(path).source == str(path)


# ---------------------------------------------------------------------------------------------------
# the profile schema
# ---------------------------------------------------------------------------------------------------
VALID = """
name = "test"
description = "A test board"

[facts]
arch = "aarch64"
cpu = "cortex-a72"
cores = 4
memory_bytes = 1073741824

[choices]
threads = 4
int8_kernel = "pairs"
gemm_tile = [6, 8, 2, 4]
"""


def _write_profile(tmp_path, text):
    path = tmp_path / "board.toml"
    path.write_text(text)
    return path


def test_minimal_profile_and_defaults(tmp_path):
    t = load_profile_file(_write_profile(tmp_path, VALID))
    assert t.big_cores == (0, 1, 2, 3) and t.features == frozenset() and t.precision == "fp32"
    assert t.codegen_cpu is None and t.parallel_min_work is None and t.train_budget_fraction == 0.5


def test_tuned_profile(tmp_path):
    text = VALID.replace("threads = 4", "threads = 4\nparallel_min_work = 65536")
    text += '\n[tuned]\nedgedl_version = "0.1.0"\nboard = "rpi4"\ncpu = "cortex-a72"\nmodel_hash = "sha256:ab"\n'
    t = load_profile_file(_write_profile(tmp_path, text))
    assert t.tuned == {"edgedl_version": "0.1.0", "board": "rpi4", "cpu": "cortex-a72", "model_hash": "sha256:ab"}
    assert t.parallel_min_work == 65536


@pytest.mark.parametrize("change,field", [
    (lambda s: s + "\n[[oops", "TOML"),
    (lambda s: s.replace("threads = 4", 'threads = "4"'), "choices.threads"),
    (lambda s: s.replace("threads = 4", "threads = 0"), "choices.threads"),
    (lambda s: s.replace("threads = 4", "threads = 8"), "choices.threads"),
    (lambda s: s.replace("threads = 4", "threads = true"), "choices.threads"),
    (lambda s: s.replace("threads = 4", "threads = 4\nthreadz = 2"), "choices.threadz"),
    (lambda s: s.replace("cores = 4\n", ""), "facts.cores"),
    (lambda s: s.replace("cores = 4", "cores = 4.5"), "facts.cores"),
    (lambda s: s.replace('name = "test"\n', ""), "name"),
    (lambda s: s.replace('arch = "aarch64"', "arch = 64"), "facts.arch"),
    (lambda s: s.replace('"pairs"', '"neon"'), "choices.int8_kernel"),
    (lambda s: s.replace("[6, 8, 2, 4]", "[6, 8, 2]"), "choices.gemm_tile"),
    (lambda s: s.replace("[6, 8, 2, 4]", "[6, 5, 2, 4]"), "choices.gemm_tile"),
    (lambda s: s.replace("[6, 8, 2, 4]", "[6, 8, 0, 4]"), "choices.gemm_tile"),
    (lambda s: s.replace("[6, 8, 2, 4]", '"6,8,2,4"'), "choices.gemm_tile"),
    (lambda s: s + 'precision = "fp64"\n', "choices.precision"),
    (lambda s: s + 'device = "cuda"\n', "choices.device"),
    (lambda s: s + 'preferred_device = "tpu"\n', "choices.preferred_device"),
    (lambda s: s + "train_budget_fraction = 1.5\n", "choices.train_budget_fraction"),
    (lambda s: s + "parallel_min_work = -1\n", "choices.parallel_min_work"),
    (lambda s: s + 'codegen_features = "neon,dotprod"\n', "choices.codegen_features"),
    (lambda s: s + "\n[choices.sparc]\nthreads = 1\n", "choices.sparc"),
    (lambda s: s + "\n[choices.armv7l]\nthreads = 1\n", "choices.armv7l.threads"),
    (lambda s: s + '\n[choices.armv7l]\nint8_kernel = "sdot4"\n', "choices.armv7l.int8_kernel"),
    (lambda s: s.replace("cores = 4", "cores = 4\nbig_cores = [0, 7]"), "facts.big_cores"),
    (lambda s: s.replace("cores = 4", "cores = 4\nbig_cores = [0, 1]\nlittle_cores = [1]"), "facts.little_cores"),
    (lambda s: s.replace("cores = 4", 'cores = 4\nfeatures = "neon"'), "facts.features"),
    (lambda s: s.replace("cores = 4", "cores = 4\nl2_bytes = 0"), "facts.l2_bytes"),
    (lambda s: s.replace("[facts]", "[fakts]"), "fakts"),
    (lambda s: s.replace("[choices]\n", "").replace("threads = 4", ""), "choices"),
    (lambda s: 'facts = 3\n' + s.replace("[facts]", "[other]"), "facts"),
    (lambda s: s + '\n[tuned]\nedgedl_version = "0.1.0"\nboard = "x"\ncpu = "y"\n', "tuned.model_hash"),
    (lambda s: s + '\n[tuned]\nedgedl_version = "0.1.0"\nboard = "x"\ncpu = "y"\nmodel_hash = "z"\nwhen = 1\n',
     "tuned.when"),
])
def test_malformed_profile_names_file_and_field(tmp_path, change, field):
    path = _write_profile(tmp_path, change(VALID))
    with pytest.raises(EdgeDLError) as e:
        load_profile_file(path)
    assert str(path) in str(e.value) and field in str(e.value)


def test_unreadable_profile(tmp_path):
    with pytest.raises(EdgeDLError, match="cannot read profile"):
        load_profile_file(tmp_path / "absent.toml")
    path = tmp_path / "latin.toml"
    path.write_bytes(b'name = "\xff"\n')
    with pytest.raises(EdgeDLError, match=str(path)):
        load_profile_file(path)


# ---------------------------------------------------------------------------------------------------
# the Target
# ---------------------------------------------------------------------------------------------------
def test_target_value_semantics():
    t = load_profile("rpi5")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.threads = 2
    u = t.replace(threads=2)
    assert u.threads == 2 and u.num_threads == 2 and t.threads == 4 and u != t
    assert hash(t) == hash(load_profile("rpi5")) and t == load_profile("rpi5")
    assert dataclasses.replace(t, threads=3).threads == 3
    d = t.to_dict()
    assert d["features"] == sorted(t.features) and d["gemm_tile"] == [6, 8, 2, 4]
    assert d["train_budget_bytes"] == t.train_budget_bytes
    json.dumps(d)
    for bad in ({"threads": 0}, {"int8_kernel": "neon"}, {"gemm_tile": (1, 2)}, {"precision": "fp8"},
                {"train_budget_fraction": 0.0}, {"device": "cuda"}, {"cores": 0}):
        with pytest.raises(EdgeDLError):
            t.replace(**bad)


# ---------------------------------------------------------------------------------------------------
# what LLVM makes of the profiles' code generation choices
# ---------------------------------------------------------------------------------------------------
TRIPLES = {"aarch64": "aarch64-unknown-linux-gnu", "armv7l": "armv7-unknown-linux-gnueabihf"}


def _llvm_complaints(capfd, triple, cpu, features):
    """What LLVM prints while building a target machine for (cpu, features) and compiling a small function."""
    ll = pytest.importorskip("llvmlite.binding")
    ll.initialize_all_targets()
    ll.initialize_all_asmprinters()
    try:
        target = ll.Target.from_triple(triple)
    except RuntimeError:
        pytest.skip(f"this llvmlite has no {triple} target")
    capfd.readouterr()
    tm = target.create_target_machine(cpu=cpu, features=features, opt=2)
    mod = ll.parse_assembly("define float @f(float %a, float %b) {\n  %c = fmul float %a, %b\n  ret float %c\n}")
    tm.emit_assembly(mod)
    return capfd.readouterr().err


def _codegen_cases():
    cases = []
    for name in PROFILED:
        profile = profile_module.read_profile(profile_module.profile_path(name))
        cases.append((name, "aarch64", profile.target.codegen_cpu, profile.target.codegen_features))
        for arch, choices in profile.arch_choices.items():
            cases.append((name, arch, choices.get("codegen_cpu", profile.target.codegen_cpu),
                          choices.get("codegen_features")))
    return cases


@pytest.mark.parametrize("name,arch,cpu,features", _codegen_cases())
def test_llvm_accepts_profile_codegen(capfd, name, arch, cpu, features):
    err = _llvm_complaints(capfd, TRIPLES[arch], cpu, features)
    assert "not a recognized" not in err, err


def test_llvm_complaint_check_works(capfd):
    assert "not a recognized feature" in _llvm_complaints(capfd, TRIPLES["aarch64"], "cortex-a72", "+neon,+bogus")
    assert "not a recognized processor" in _llvm_complaints(capfd, TRIPLES["aarch64"], "cortex-a999", "+neon")


def test_llvm_cpu_names_of_the_part_table(capfd):
    names = sorted(set(detect_module.ARM_CPUS.values()))
    for cpu in names:
        arm32 = cpu in ("cortex-a7", "cortex-a8", "cortex-a9", "cortex-a15", "cortex-a32")
        triple = TRIPLES["armv7l" if arm32 else "aarch64"]
        err = _llvm_complaints(capfd, triple, cpu, "")
        assert "not a recognized" not in err, (cpu, err)


@pytest.mark.parametrize("name", PROFILED)
def test_int8_kernel_matches_what_the_kernels_would_pick(name):
    """The kernel module picks sdot from the (CPU, features) code is compiled for: it must agree."""
    vec_i8dot = pytest.importorskip("edgedl.kernels.cpu.vec_i8dot")
    t = load_profile(name)
    available = vec_i8dot.dot_kernels_for("aarch64", t.codegen_cpu, t.codegen_features)
    assert (vec_i8dot.K_SDOT in available) == (t.int8_kernel == "sdot")


def test_python_310_reads_profiles_with_tomli(monkeypatch):
    tomllib = pytest.importorskip("tomllib")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # as on Python 3.10
    monkeypatch.setitem(sys.modules, "tomli", tomllib)  # tomli has tomllib's API
    assert load_profile("rpi4").cpu == "cortex-a72"
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(EdgeDLError, match="tomli"):
        load_profile("rpi4")
