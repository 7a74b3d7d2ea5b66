"""The :class:`Target`: the facts of one machine and the execution choices made for it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from edgedl.errors import EdgeDLError

#: int8 GEMM kernels a target may name (the names of ``edgedl.kernels.cpu.vec_i8dot.KERNEL_NAMES``)
INT8_KERNELS = ("pairs", "sdot", "vnni256", "vnni512")
#: precisions a target may prefer
PRECISIONS = ("fp32", "fp16", "int8")
#: devices a target may run on today, and the ones it may prefer for later backends
DEVICES = ("cpu",)
PREFERRED_DEVICES = ("cpu", "cuda")
#: the core sets a target may run its kernels on: every core, the big ones, the little ones
CORE_SETS = ("all", "big", "little")


@dataclass(frozen=True)
class Target:
    """Facts about one machine (detected, or a board profile's nominal ones) and the choices edgedl makes for it.

    Facts: ``arch`` (``"aarch64"``, ``"armv7l"``, ``"x86_64"``...), ``cpu`` (LLVM CPU name), ``cores``,
    ``big_cores`` / ``little_cores`` (CPU indices; all cores are big when the CPU is not big.LITTLE),
    ``features`` (lowercase; normalized names such as ``neon``, ``dotprod``, ``fp16``, ``i8mm``, ``sve``,
    ``avx2``, ``avx512f``, ``avx512vnni``, ``avxvnni`` plus the raw cpuinfo flags), cache sizes, ``memory_bytes``
    and ``gpu`` (a CUDA arch such as ``"sm_87"``, else None).

    Choices: ``threads`` (default thread count), ``core_set`` (``"all"``, ``"big"`` or ``"little"``: the cores
    edgedl's kernel threads run on, which matters on big.LITTLE CPUs), ``device`` (the device in force,
    ``"cpu"`` today), ``preferred_device`` (``"cuda"`` on Jetsons, for when a CUDA backend exists), ``codegen_cpu`` /
    ``codegen_features`` (what Numba should compile for; None = Numba's host default), ``int8_kernel``
    (``"sdot"``, ``"pairs"``... None = let the kernel module decide), ``parallel_min_work`` /
    ``gemm_parallel_min_work`` / ``gemm_tile`` / ``conv_flat`` (whether spatial convolutions read their padded
    image in place rather than packing it) / ``conv_pixels`` (whether deep ones put pixels on the GEMM's rows)
    (None = the runtime's defaults), ``precision`` and
    ``train_budget_fraction`` (fraction of RAM the default training memory budget may use).

    Provenance: ``source`` (the profile file, or ``"detected"``), ``detected`` (facts read from this machine),
    ``facts`` (how each fact was found, e.g. the board revision code) and ``tuned`` (the ``[tuned]`` table of
    a tuned profile file, else None).
    """

    name: str
    description: str = ""
    arch: str = "unknown"
    cpu: str = "generic"
    cores: int = 1
    big_cores: tuple[int, ...] = ()
    little_cores: tuple[int, ...] = ()
    features: frozenset[str] = frozenset()
    l1d_bytes: int | None = None
    l2_bytes: int | None = None
    l3_bytes: int | None = None
    memory_bytes: int | None = None
    gpu: str | None = None
    threads: int = 1
    core_set: str = "all"
    device: str = "cpu"
    preferred_device: str = "cpu"
    codegen_cpu: str | None = None
    codegen_features: str | None = None
    int8_kernel: str | None = None
    parallel_min_work: int | None = None
    gemm_parallel_min_work: int | None = None
    gemm_tile: tuple[int, int, int, int] | None = None
    conv_flat: bool | None = None
    conv_pixels: bool | None = None
    precision: str = "fp32"
    train_budget_fraction: float = 0.5
    source: str = "detected"
    detected: bool = False
    facts: dict = field(default_factory=dict, hash=False)
    tuned: dict | None = field(default=None, hash=False)

    def __post_init__(self):
        fix = object.__setattr__
        fix(self, "big_cores", tuple(int(i) for i in self.big_cores))
        fix(self, "little_cores", tuple(int(i) for i in self.little_cores))
        fix(self, "features", frozenset(str(f).lower() for f in self.features))
        if self.gemm_tile is not None:
            fix(self, "gemm_tile", tuple(int(v) for v in self.gemm_tile))
        fix(self, "facts", dict(self.facts))
        if self.tuned is not None:
            fix(self, "tuned", dict(self.tuned))
        problems = []
        if not isinstance(self.cores, int) or isinstance(self.cores, bool) or self.cores < 1:
            problems.append(f"cores must be a positive integer, got {self.cores!r}")
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1:
            problems.append(f"threads must be a positive integer, got {self.threads!r}")
        if self.int8_kernel is not None and self.int8_kernel not in INT8_KERNELS:
            problems.append(f"int8_kernel must be one of {list(INT8_KERNELS)} or None, got {self.int8_kernel!r}")
        if self.core_set not in CORE_SETS:
            problems.append(f"core_set must be one of {list(CORE_SETS)}, got {self.core_set!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.device not in DEVICES:
            problems.append(f"device must be one of {list(DEVICES)}, got {self.device!r}")
        if self.preferred_device not in PREFERRED_DEVICES:
            problems.append(f"preferred_device must be one of {list(PREFERRED_DEVICES)}, got {self.preferred_device!r}")
        for name in ("conv_flat", "conv_pixels"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true, false or unset, got {getattr(self, name)!r}")
        if self.gemm_tile is not None and (len(self.gemm_tile) != 4 or min(self.gemm_tile) < 1):
            problems.append(f"gemm_tile must be 4 positive integers (MR, VW, NV, UNROLL), got {self.gemm_tile!r}")
        if not 0.0 < float(self.train_budget_fraction) <= 1.0:
            problems.append(f"train_budget_fraction must be in (0, 1], got {self.train_budget_fraction!r}")
        if problems:
            raise EdgeDLError(f"invalid target {self.name!r}: " + "; ".join(problems))

    @property
    def train_budget_bytes(self) -> int | None:
        """The default training memory budget: ``train_budget_fraction`` of ``memory_bytes`` (None if unknown)."""
        if not self.memory_bytes:
            return None
        return int(self.memory_bytes * self.train_budget_fraction)

    @property
    def num_threads(self) -> int:
        """Alias of :attr:`threads` (the name the first release's Target used)."""
        return self.threads

    def replace(self, **changes) -> Target:
        """A copy with some fields changed (``dataclasses.replace``; the result is validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Every field, plus ``train_budget_bytes``, as plain JSON-ready values (tuples and sets become lists)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, frozenset):
                v = sorted(v)
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, dict):
                v = dict(v)
            out[f.name] = v
        out["train_budget_bytes"] = self.train_budget_bytes
        return out
