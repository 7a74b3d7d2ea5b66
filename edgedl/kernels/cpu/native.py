"""Kernels compiled once and called from other kernels through a function pointer.

Why: when one ``@njit`` function calls another, Numba links the callee's LLVM IR into the caller and
optimizes and generates machine code for it again, in every caller. The GEMM task (four vectorized
microkernel variants in LLVM IR) took 3.6 s to compile on its own, and its two drivers took 5.1 s and
4.7 s more because each compiled the task's IR again (the parallel driver twice: once in its loop body,
once in the function around it). A :class:`NativeFunction` is a Numba ``cfunc`` compiled (or loaded from
the kernel cache) once; the drivers take its address as an ``int64`` argument and call it through
:func:`caller`'s intrinsic, so their own code stays small and compiles in a fraction of a second. The
call costs one indirect call per task (a task is a whole block of a GEMM).

The address is process-specific, so it is passed at run time, never baked into cached code.
"""
from __future__ import annotations

import threading

from llvmlite import ir
from numba import types
from numba.core import sigutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

__all__ = ["NativeFunction", "native", "caller", "all_native", "by_key", "use_stubs", "readonly"]


def readonly(t):
    """The read-only variant of an array type, for a native function's inputs: they then accept constant
    (read-only) arrays, and writable ones too."""
    return t.copy(readonly=True)


class NativeFunction:
    """``py_func`` compiled for one signature as a C-callable function, on first use.

    ``address`` compiles it (or loads it from Numba's on-disk cache) and returns the address jitted code
    calls through ``caller(signature)``. ``compiled`` / ``cache_hits`` say what happened in this process."""

    def __init__(self, py_func, signature, options: dict, ahead: bool = False):
        args, restype = sigutils.normalize_signature(signature)
        #: a cold start whose model needs this function compiles it in a second process (see
        #: edgedl.runtime.compile_ahead): set on the ones most models need and that take long to compile
        self.ahead = ahead
        self.py_func = py_func
        self.signature = restype(*args)
        self.options = dict(options)
        self.__name__ = py_func.__name__
        self.__qualname__ = py_func.__qualname__
        self.__module__ = py_func.__module__
        self.__doc__ = py_func.__doc__
        self._cfunc = None
        self._stub = None
        self._lock = threading.Lock()

    def _build(self):
        from numba.core.ccallback import CFunc

        opts = {k: v for k, v in self.options.items() if k != "cache"}
        cf = CFunc(self.py_func, (self.signature.args, self.signature.return_type), locals={}, options=opts)
        if self.options.get("cache", False):
            cf.enable_caching()
        return cf

    def cached(self) -> bool:
        """Whether the compiled function is in this process or in the on-disk cache. A probe: what it finds
        on disk is loaded (and kept), nothing is compiled."""
        if self._cfunc is not None:
            return True
        with self._lock:
            if self._cfunc is not None:
                return True
            cf = self._build()
            cache = getattr(cf, "_cache", None)
            if cache is None or not hasattr(cf, "_targetdescr"):
                return False
            from numba.core.compiler_lock import global_compiler_lock

            with global_compiler_lock:
                cres = cache.load_overload(self.signature, cf._targetdescr.target_context)
                if cres is None:
                    return False
                cf._cache = _Loaded(cres)  # CFunc.compile() takes the result found instead of loading it again
                try:
                    cf.compile()
                finally:
                    cf._cache = cache
            self._cfunc = cf
        return True

    def compile(self):
        """The compiled ``CFunc`` (compiled, or loaded from the cache, on the first call). Only a real
        compilation emits the ``numba:compile`` event (as a dispatcher's does): a load from the cache is not one."""
        if self._cfunc is None and not self.cached():
            with self._lock:
                if self._cfunc is None:
                    cf = self._build()
                    with _compile_event(self):
                        cf.compile()
                    self._cfunc = cf
        return self._cfunc

    @property
    def address(self) -> int:
        """Address of the C-callable function (compiles or loads it first). In a compile-ahead process
        (:func:`use_stubs`) a function not yet loaded is reported and a do-nothing stand-in's address given."""
        if _stub_report is not None and self._cfunc is None and (_stub_keys is None or self.key in _stub_keys):
            _stub_report(self)
            return self._stub_address()
        return self.compile().address

    @property
    def key(self) -> str:
        """``module:qualname:signature``, how another process names this function (see :func:`by_key`)."""
        return f"{self.__module__}:{self.__qualname__}:{self.signature}"

    def _stub_address(self) -> int:
        if self._stub is None:
            import numba

            names = [f"a{i}" for i in range(len(self.signature.args))]
            scope: dict = {}
            exec(f"def stub({', '.join(names)}):\n    return None\n", scope)  # noqa: S102 - fixed source
            self._stub = numba.cfunc(self.signature)(scope["stub"])
        return self._stub.address

    @property
    def compiled(self) -> int:
        """1 when this process compiled or loaded the function, else 0."""
        return int(self._cfunc is not None)

    @property
    def cache_hits(self) -> int:
        return int(self._cfunc.cache_hits) if self._cfunc is not None else 0

    @property
    def cache_misses(self) -> int:
        return self.compiled - self.cache_hits

    def inspect_asm(self) -> str | None:
        """The machine code's assembly, when this process compiled the function (None when it was loaded
        from the cache, whose entries hold object code only, or not compiled at all)."""
        if self._cfunc is None or self.cache_hits:
            return None
        return self._cfunc._library.get_asm_str()

    def __repr__(self) -> str:
        return f"<native {self.__module__}.{self.__qualname__} {self.signature}>"


class _Loaded:
    """A one-entry stand-in for a CFunc's cache, holding a result already loaded from it."""

    def __init__(self, cres):
        self.cres = cres

    def load_overload(self, sig, target_context):
        return self.cres

    def save_overload(self, sig, cres):
        return None


class _compile_event:
    """Numba's ``numba:compile`` event around a cfunc compilation (a dispatcher's compilation emits it;
    a cfunc's does not), so listeners such as the compile notice see it."""

    def __init__(self, fn: NativeFunction):
        self.fn = fn

    def __enter__(self):
        from numba.core import event

        self.data = {"dispatcher": self.fn, "args": self.fn.signature.args,
                     "return_type": self.fn.signature.return_type}
        event.start_event("numba:compile", data=self.data)

    def __exit__(self, *exc):
        from numba.core import event

        event.end_event("numba:compile", data=self.data)
        return False


_ALL: list[NativeFunction] = []
#: set by :func:`use_stubs` in a compile-ahead process
_stub_report = None
_stub_keys: frozenset | None = None


def use_stubs(report, keys=None) -> None:
    """Compile-ahead mode for this process (see ``edgedl.runtime.compile_ahead``): a native function named
    in ``keys`` (None: any) asked for before it is loaded calls ``report(fn)`` and runs as a stand-in that
    does nothing, so everything else a model needs compiles meanwhile (its results are meaningless).
    ``report=None`` turns it off."""
    global _stub_report, _stub_keys
    _stub_report = report
    _stub_keys = None if keys is None else frozenset(keys)


def by_key(key: str) -> NativeFunction:
    """The native function named ``module:qualname:signature`` (its module imported if needed)."""
    import importlib

    module = key.partition(":")[0]
    if not module.startswith("edgedl."):
        raise KeyError(key)
    importlib.import_module(module)
    for fn in _ALL:
        if fn.key == key:
            return fn
    raise KeyError(key)


def native(signature, *, ahead: bool = False, **options):
    """Decorator: ``@native("void(int64, float32[::1])", **NJIT)`` makes a :class:`NativeFunction`;
    ``ahead``: see :attr:`NativeFunction.ahead`."""

    def wrap(py_func):
        fn = NativeFunction(py_func, signature, options, ahead=ahead)
        _ALL.append(fn)
        return fn

    return wrap


def all_native() -> list[NativeFunction]:
    """Every native function defined so far (kernel modules imported)."""
    return list(_ALL)


_CALLERS: dict = {}


def caller(*fns: NativeFunction):
    """An intrinsic ``call(address, args)`` for jitted code: calls the native function at ``address`` (an
    int64 from :attr:`NativeFunction.address`) with the tuple ``args`` converted to its signature.

    With several native functions (one body compiled for several signatures), the first whose signature
    accepts ``args`` is called: the caller in Python passes that one's address. Argument count and types
    are checked when the caller is typed. (A tuple, not ``*args``: Numba's parfor lowering cannot fold star
    arguments of an intrinsic inside a ``prange`` body.)"""
    key = tuple((fn.signature.return_type, tuple(fn.signature.args)) for fn in fns)
    found = _CALLERS.get(key)
    if found is not None:
        return found
    name = fns[0].__qualname__

    def pick(typingctx, args):
        for fn in fns:
            want = tuple(fn.signature.args)
            if len(args) == len(want) and all(got == exp or typingctx.can_convert(got, exp) is not None
                                               for got, exp in zip(args, want)):
                return fn
        return None

    @intrinsic
    def call_native(typingctx, address, args):
        if not isinstance(address, types.Integer):
            raise TypingError(f"{name}: the address must be an integer, not {address}")
        fn = pick(typingctx, args) if isinstance(args, types.BaseTuple) else None
        if fn is None:
            raise TypingError(f"{name}: arguments {args} fit none of {[str(f.signature) for f in fns]}")
        sig = fn.signature
        want = tuple(sig.args)
        call_sig = types.none(address, args)

        def codegen(context, builder, signature, llargs):
            addr = context.cast(builder, llargs[0], signature.args[0], types.int64)
            tup = signature.args[1]
            vals = [context.cast(builder, builder.extract_value(llargs[1], i), tup[i], want[i])
                    for i in range(len(want))]
            fnty = ir.FunctionType(context.get_value_type(sig.return_type),
                                   [context.get_value_type(t) for t in want])
            builder.call(builder.inttoptr(addr, fnty.as_pointer()), vals)
            return context.get_dummy_value()

        return call_sig, codegen

    _CALLERS[key] = call_native
    return call_native
