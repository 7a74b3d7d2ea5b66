"""Load edgedl's kernels from Numba's on-disk cache without initializing Numba's compiler.

A warm process (every kernel in the cache) needs none of Numba's compiler, yet Numba sets up two parts of it
before it loads the first cached function:

* ``target_context.refresh()`` imports and registers every lowering and typing implementation Numba has
  (NumPy, linear algebra and so scipy, typed containers, random, jitclass, third-party extensions): about
  0.35 s and 30 MB of a warm start, for work only a compilation uses. The compiler refreshes the context
  itself (``CompilerBase.__init__``) before it compiles anything.
* the Numba runtime (NRT) that compiled code calls into is compiled from LLVM IR in every process: 25-40 ms
  and 20-25 MB of resident LLVM code (its optimizer and code generator, which nothing else warm touches).
* the first call of any dispatcher initializes Numba's extensions (``entrypoints.init_all``: a scan of every
  installed distribution's entry points, 15-35 ms) so that argument typing knows their types; edgedl's
  kernels take arrays and scalars only, and a compilation initializes the extensions itself (in the
  refresh above).

:func:`install` swaps ``numba.core.caching.Cache.load_overload`` for a version that, for functions defined
in edgedl's own modules, only initializes the NRT, loading its machine code from the kernels' cache folder
when an earlier process left it there (keyed by the Numba and llvmlite versions, the CPU and the NRT debug
settings; it is compiled and saved otherwise), and skips the extension hook for those dispatchers. Every
other function (user code) takes Numba's own path unchanged, a kernel missing from the cache compiles as
before, and a Numba without the expected internals is left alone.

It also keys every edgedl kernel's cache entry on the whole package's sources, not only on its own file.
Numba checks a cached function against a hash of the file that defines it; but a kernel's machine code
contains every ``@njit`` function it calls, from other files (a convolution's epilogue from ``act.py``). After
an upgrade that changed only such a callee, the caller's entry still matched and ran the old callee: a
silent wrong answer (found when a new activation code reached the depthwise kernels as a no-op). The
fingerprint (:func:`package_fingerprint`, a hash of every ``.py`` file of the installed package that uses Numba,
~6 ms once per process) makes any change of edgedl's compiled code recompile its kernels once, while
reinstalling the same sources, or changing only code that Numba never compiles (the CLI, the passes, the
planner), keeps the cache.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile

_installed = False


_fingerprint: bytes | None = None
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def package_fingerprint() -> bytes:
    """sha256 of every ``.py`` file of the edgedl package that mentions numba (relative paths and contents: the
    files whose functions compiled kernels can call), once per process."""
    global _fingerprint
    if _fingerprint is None:
        h = hashlib.sha256()
        for folder, subfolders, files in os.walk(_PACKAGE_DIR):
            subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path, "rb") as f:
                        source = f.read()
                    if b"numba" in source:
                        h.update(os.path.relpath(path, _PACKAGE_DIR).encode())
                        h.update(source)
        _fingerprint = h.digest()
    return _fingerprint


def _in_package(path) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(path), _PACKAGE_DIR]) == _PACKAGE_DIR
    except (TypeError, ValueError):
        return False


def _install_source_stamp() -> bool:
    """Key the cache entries of functions defined in edgedl's files on :func:`package_fingerprint` too."""
    try:
        from numba.core.caching import _SourceFileBackedLocatorMixin as Mixin
    except ImportError:
        return False
    original = getattr(Mixin, "get_source_stamp", None)
    if original is None or getattr(original, "_edgedl_package", False):
        return original is not None

    def get_source_stamp(self):
        stamp = original(self)
        if _in_package(getattr(self, "_py_file", None)):
            return (stamp, package_fingerprint())
        return stamp

    get_source_stamp._edgedl_package = True  # type: ignore[attr-defined]
    get_source_stamp.__wrapped__ = original  # type: ignore[attr-defined]
    Mixin.get_source_stamp = get_source_stamp
    return True


def install() -> bool:
    """Install the light cache loading for edgedl kernels (once), and key their cache entries on the package's
    sources. Returns whether the light loading is in place."""
    global _installed
    if _installed:
        return True
    _install_source_stamp()
    try:
        from numba.core.caching import Cache
        from numba.core.dispatcher import _DispatcherBase
        from numba.core.runtime import nrtdynmod, rtsys
    except ImportError:
        return False
    original = getattr(Cache, "load_overload", None)
    original_hook = getattr(_DispatcherBase, "_compilation_chain_init_hook", None)
    needed = (hasattr(Cache, "_load_overload"), hasattr(Cache, "_guard_against_spurious_io_errors"),
              hasattr(rtsys, "initialize"), hasattr(nrtdynmod, "compile_nrt_functions"),
              hasattr(nrtdynmod, "create_nrt_module"), original_hook is not None)
    if original is None or getattr(original, "_edgedl_light", False) or not all(needed):
        _installed = getattr(original, "_edgedl_light", False)
        return _installed

    def load_overload(self, sig, target_context):
        """Numba's ``Cache.load_overload``; for an edgedl kernel, without the full context refresh."""
        if not _is_kernel(getattr(self, "_py_func", None)):
            return original(self, sig, target_context)
        initialize_runtime(target_context, getattr(self, "_cache_path", None))
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)

    def compilation_chain_init_hook(self):
        """Numba's hook ahead of typing a call's arguments; nothing for an edgedl kernel."""
        if not _is_kernel(getattr(self, "py_func", None)):
            original_hook(self)

    load_overload._edgedl_light = True  # type: ignore[attr-defined]
    load_overload.__wrapped__ = original  # type: ignore[attr-defined]
    compilation_chain_init_hook.__wrapped__ = original_hook  # type: ignore[attr-defined]
    Cache.load_overload = load_overload
    _DispatcherBase._compilation_chain_init_hook = compilation_chain_init_hook
    _installed = True
    return True


def _is_kernel(py_func) -> bool:
    """Whether a Numba function is one of edgedl's (defined in an ``edgedl.`` module)."""
    return (getattr(py_func, "__module__", None) or "").startswith("edgedl.")


def _nrt_cache_file(folder: str, codegen) -> str:
    """The file holding the NRT's machine code for this Numba, llvmlite, CPU and NRT configuration."""
    import llvmlite
    import numba
    from numba.core import config

    key = repr((numba.__version__, llvmlite.__version__, codegen.magic_tuple(), config.MACHINE_BITS,
                config.OPT, config.DEBUG_NRT, getattr(config, "DEBUG_NRT_STACK_LIMIT", None)))
    return os.path.join(folder, f"edgedl-nrt-{hashlib.sha256(key.encode()).hexdigest()[:20]}.nbo")


def _read_state(path: str):
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception:  # noqa: BLE001 - missing, partial or foreign: compile instead
        return None


def _write_state(path: str, state) -> None:
    """Write atomically (a reader never sees a partial file); a read-only folder just means no cache."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".edgedl-nrt-")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def initialize_runtime(target_context, cache_folder: str | None) -> None:
    """``rtsys.initialize(target_context)``, with the NRT's machine code from ``cache_folder`` when it is
    there (and saved there when it is compiled)."""
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.runtime import nrtdynmod, rtsys

    if getattr(rtsys, "_init", False):
        return
    if not cache_folder or not os.path.isdir(cache_folder):
        rtsys.initialize(target_context)
        return
    with global_compiler_lock:  # no other thread compiles (or initializes the NRT) meanwhile
        if getattr(rtsys, "_init", False):
            return
        compile_nrt = nrtdynmod.compile_nrt_functions

        def load_or_compile(ctx):
            codegen = ctx.codegen()
            path = _nrt_cache_file(cache_folder, codegen)
            state = _read_state(path)
            if state is not None:
                try:
                    return codegen.unserialize_library(state)
                except Exception:  # noqa: BLE001 - stale or damaged: compile it again
                    pass
            try:  # compile_nrt_functions, keeping the object code so that it can be saved
                ir_mod, library = nrtdynmod.create_nrt_module(ctx)
                library.enable_object_caching()
                library.add_ir_module(ir_mod)
                library.finalize()
                state = library.serialize_using_object_code()
            except Exception:  # noqa: BLE001 - a Numba that builds it differently: its own way
                return compile_nrt(ctx)
            _write_state(path, state)
            return library

        nrtdynmod.compile_nrt_functions = load_or_compile
        try:
            rtsys.initialize(target_context)
        finally:
            nrtdynmod.compile_nrt_functions = compile_nrt
