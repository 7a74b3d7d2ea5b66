"""Profile files: read a board profile (TOML), check every field, and turn it into a :class:`Target`.

A profile has four tables (``[tuned]`` only in tuned files)::

    name = "rpi4"                       # required, str
    description = "Raspberry Pi 4 Model B"  # required, str

    [facts]                             # nominal facts; on the board, detected ones replace them
    arch = "aarch64"                    # required
    cpu = "cortex-a72"                  # required, LLVM CPU name
    cores = 4                           # required, >= 1
    big_cores = [0, 1, 2, 3]            # optional CPU indices < cores (default: all cores)
    little_cores = []                   # optional
    features = ["neon", "crc"]          # optional lowercase names
    l1d_bytes = 32768                   # optional, as l2_bytes and l3_bytes
    memory_bytes = 4294967296           # required
    gpu = "sm_53"                       # optional CUDA arch

    [choices]                           # what edgedl does on this board
    threads = 4                         # required, 1 <= threads <= cores
    core_set = "all"                    # optional: all (default) | big | little: the cores kernels run on
    device = "cpu"                      # optional: "cpu" (default)
    preferred_device = "cuda"           # optional: "cpu" (default) or "cuda"
    codegen_cpu = "cortex-a72"          # optional LLVM CPU name for Numba
    codegen_features = "+neon,+crc"     # optional LLVM feature string: comma-separated +name / -name
    int8_kernel = "pairs"               # optional: pairs | sdot | vnni256 | vnni512
    parallel_min_work = 262144          # optional, >= 1 (unset: the runtime default)
    gemm_parallel_min_work = 262144     # optional, >= 1
    gemm_tile = [6, 8, 2, 4]            # optional (MR, VW, NV, UNROLL), each >= 1, VW in 4/8/16
    conv_flat = true                    # optional: convolutions read their padded image in place (default true)
    conv_pixels = true                  # optional: deep convolutions put pixels on the GEMM's rows (default true)
    precision = "fp32"                  # optional: fp32 (default) | fp16 | int8
    train_budget_fraction = 0.6         # optional, in (0, 1] (default 0.5)

    [choices.armv7l]                    # optional: choices that replace the above when the OS runs this arch
    codegen_features = "+neon,+vfp4"
    gemm_tile = [4, 4, 2, 2]

    [tuned]                             # tuned files only: what the tuning was measured for
    edgedl_version = "0.1.0"
    board = "rpi4"
    cpu = "cortex-a72"
    model_hash = "sha256:..."

Any other key, a wrong type or a value out of range raises :class:`~edgedl.errors.EdgeDLError` naming the
file and the field.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgedl.errors import EdgeDLError

from .target import CORE_SETS, DEVICES, INT8_KERNELS, PRECISIONS, PREFERRED_DEVICES, Target

#: the shipped profiles: ``profiles/NAME.toml``
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
#: architectures a ``[choices.ARCH]`` table may name
ARCHES = ("aarch64", "armv7l", "armv6l", "x86_64", "i686")
#: choices cleared when a board runs an arch its profile has no ``[choices.ARCH]`` table for
ARCH_BOUND_CHOICES = ("codegen_cpu", "codegen_features", "int8_kernel", "gemm_tile")


class _Bad(Exception):
    """A field's value is wrong (the message says why)."""


def _string(v):
    if not isinstance(v, str) or not v.strip():
        raise _Bad(f"must be a non-empty string, got {v!r}")
    return v


def _positive_int(v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise _Bad(f"must be an integer >= 1, got {v!r}")
    return v


def _indices(v):
    if not isinstance(v, list) or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in v):
        raise _Bad(f"must be a list of CPU indices (integers >= 0), got {v!r}")
    if len(set(v)) != len(v):
        raise _Bad(f"lists a CPU twice: {v!r}")
    return tuple(v)


def _names(v):
    if not isinstance(v, list) or any(not isinstance(s, str) or not s for s in v):
        raise _Bad(f"must be a list of non-empty strings, got {v!r}")
    return frozenset(s.lower() for s in v)


def _one_of(options):
    def check(v):
        if v not in options:
            raise _Bad(f"must be one of {list(options)}, got {v!r}")
        return v

    return check


def _llvm_features(v):
    _string(v)
    for item in v.split(","):
        item = item.strip()
        if len(item) < 2 or item[0] not in "+-" or not all(c.isalnum() or c in "-._" for c in item[1:]):
            raise _Bad(f"must be comma-separated LLVM features like '+neon,-dotprod', got {v!r} (bad item {item!r})")
    return v


def _tile(v):
    if (not isinstance(v, list) or len(v) != 4
            or any(not isinstance(i, int) or isinstance(i, bool) or i < 1 for i in v)):
        raise _Bad(f"must be 4 integers >= 1 [MR, VW, NV, UNROLL], got {v!r}")
    if v[1] not in (4, 8, 16):
        raise _Bad(f"VW (the second number) must be 4, 8 or 16 floats, got {v!r}")
    return tuple(v)


def _bool(v):
    if not isinstance(v, bool):
        raise _Bad(f"must be true or false, got {v!r}")
    return v


def _fraction(v):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 < float(v) <= 1.0:
        raise _Bad(f"must be a number in (0, 1], got {v!r}")
    return float(v)


# field -> (check, required)
FACT_FIELDS = {
    "arch": (_string, True), "cpu": (_string, True), "cores": (_positive_int, True),
    "big_cores": (_indices, False), "little_cores": (_indices, False), "features": (_names, False),
    "l1d_bytes": (_positive_int, False), "l2_bytes": (_positive_int, False), "l3_bytes": (_positive_int, False),
    "memory_bytes": (_positive_int, True), "gpu": (_string, False),
}
CHOICE_FIELDS = {
    "threads": (_positive_int, True), "core_set": (_one_of(CORE_SETS), False), "device": (_one_of(DEVICES), False),
    "preferred_device": (_one_of(PREFERRED_DEVICES), False), "codegen_cpu": (_string, False),
    "codegen_features": (_llvm_features, False), "int8_kernel": (_one_of(INT8_KERNELS), False),
    "parallel_min_work": (_positive_int, False), "gemm_parallel_min_work": (_positive_int, False),
    "gemm_tile": (_tile, False), "conv_flat": (_bool, False), "conv_pixels": (_bool, False),
    "precision": (_one_of(PRECISIONS), False),
    "train_budget_fraction": (_fraction, False),
}
TUNED_FIELDS = {"edgedl_version": (_string, True), "board": (_string, True), "cpu": (_string, True),
                "model_hash": (_string, True)}
TOP_FIELDS = {"name": (_string, True), "description": (_string, True)}
TABLES = {"facts": True, "choices": True, "tuned": False}


@dataclass(frozen=True)
class Profile:
    """A checked profile file: its nominal :class:`Target` and its per-arch choice overrides."""

    path: str
    target: Target
    #: arch -> {choice field: value} from ``[choices.ARCH]`` tables
    arch_choices: dict

    def choices_for(self, arch: str | None) -> dict:
        """The choices to change when the machine runs ``arch``: none for the profile's own arch, the
        ``[choices.ARCH]`` table when there is one, else the arch-bound choices cleared (Numba's host defaults)."""
        if not arch or arch == self.target.arch:
            return {}
        if arch in self.arch_choices:
            return dict(self.arch_choices[arch])
        return {k: None for k in ARCH_BOUND_CHOICES}


def _check_table(path, where, table, fields, extra_tables=()):
    """{field: checked value} of one table; unknown keys, missing required ones and bad values raise."""
    out = {}
    for key, value in table.items():
        if key in extra_tables:
            continue
        if key not in fields:
            known = sorted(fields) + [f"[{t}]" for t in extra_tables if where == ""]
            raise EdgeDLError(f"{path}: unknown field '{where}{key}' (known: {', '.join(known)})")
        check, _ = fields[key]
        try:
            out[key] = check(value)
        except _Bad as e:
            raise EdgeDLError(f"{path}: field '{where}{key}' {e}") from None
    for key, (_, required) in fields.items():
        if required and key not in table:
            raise EdgeDLError(f"{path}: missing required field '{where}{key}'")
    return out


def _parse_toml(path: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise EdgeDLError(f"{path}: reading profiles on Python < 3.11 needs the 'tomli' package") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise EdgeDLError(f"{path}: cannot read profile: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EdgeDLError(f"{path}: not valid TOML: {e}") from None


def read_profile(path) -> Profile:
    """Read and check a profile file (see the module docstring for the schema)."""
    path = os.fspath(path)
    doc = _parse_toml(path)
    for key, value in doc.items():
        if key in TABLES and not isinstance(value, dict):
            raise EdgeDLError(f"{path}: field '{key}' must be a table ([{key}]), got {value!r}")
    top = _check_table(path, "", doc, TOP_FIELDS, extra_tables=tuple(TABLES))
    for key, required in TABLES.items():
        if required and key not in doc:
            raise EdgeDLError(f"{path}: missing required table [{key}]")
    facts = _check_table(path, "facts.", doc["facts"], FACT_FIELDS)
    choices_doc = doc["choices"]
    arch_tables = {k: v for k, v in choices_doc.items() if isinstance(v, dict)}
    for arch in arch_tables:
        if arch not in ARCHES:
            raise EdgeDLError(f"{path}: unknown table '[choices.{arch}]' (arch tables: {list(ARCHES)})")
    choices = _check_table(path, "choices.", choices_doc, CHOICE_FIELDS, extra_tables=tuple(arch_tables))
    optional_choices = {k: (check, False) for k, (check, _) in CHOICE_FIELDS.items() if k != "threads"}
    arch_choices = {arch: _check_table(path, f"choices.{arch}.", table, optional_choices)
                    for arch, table in arch_tables.items()}
    tuned = _check_table(path, "tuned.", doc["tuned"], TUNED_FIELDS) if "tuned" in doc else None

    cores = facts["cores"]
    for key in ("big_cores", "little_cores"):
        bad = [i for i in facts.get(key, ()) if i >= cores]
        if bad:
            raise EdgeDLError(f"{path}: field 'facts.{key}' names CPUs {bad} but cores = {cores}")
    if set(facts.get("big_cores", ())) & set(facts.get("little_cores", ())):
        raise EdgeDLError(f"{path}: field 'facts.little_cores' repeats CPUs of 'facts.big_cores'")
    if choices["threads"] > cores:
        raise EdgeDLError(f"{path}: field 'choices.threads' = {choices['threads']} exceeds facts.cores = {cores}")
    facts.setdefault("big_cores", tuple(i for i in range(cores) if i not in facts.get("little_cores", ())))
    try:
        target = Target(name=top["name"], description=top["description"], **facts, **choices, source=path,
                        detected=False, tuned=tuned)
    except EdgeDLError as e:
        raise EdgeDLError(f"{path}: {e}") from None
    return Profile(path=path, target=target, arch_choices=arch_choices)


def load_profile_file(path) -> Target:
    """The :class:`Target` a profile file describes (nominal facts, ``detected=False``, ``source=path``).

    Used for the shipped profiles and for tuned files (a profile with a ``[tuned]`` table, exposed as
    ``Target.tuned``). Raises :class:`~edgedl.errors.EdgeDLError` naming the file and the field when the file
    is unreadable, not TOML, or breaks the schema."""
    return read_profile(path).target


def profile_names() -> list[str]:
    """Names of the shipped profiles (``profiles/*.toml``), sorted."""
    try:
        return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
    except OSError:
        return []


def profile_path(name: str) -> Path:
    """The file of shipped profile ``name`` (it may not exist)."""
    return PROFILE_DIR / f"{name}.toml"
