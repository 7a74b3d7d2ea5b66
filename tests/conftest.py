"""Suite-wide settings."""
import os

# The suite runs in pytest-xdist workers (pyproject's addopts: -n auto). A cold run is mostly Numba compiling
# kernels, which takes one core per process: two workers on the CI's two cores take a cold run from 22 to 14
# minutes. More than four workers would mostly compile the same kernels in parallel (and hold a few hundred MB
# each): the count is the usable cores, at most four.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config):
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))

# NOTE: thread counts that follow the load (edgedl.load_monitor) would make tests that compare 1 and N threads
# compare 1 with 1 whenever the machine is busy. The suite runs at the counts it asks for; the monitor and its
# wiring have their own tests (tests/unit/test_load_monitor.py).
os.environ.setdefault("EDGEDL_FOLLOW_LOAD", "0")
# A tuned profile in this user's config folder (edgedl tune) would change thresholds under the tests; the tuned-file
# tests turn it back on with their own folder.
os.environ.setdefault("EDGEDL_TUNED", "0")
# CUDA kernels run in numba's CUDA simulator unless a GPU run asks otherwise (NUMBA_ENABLE_CUDASIM=0 with a
# GPU): set before numba is imported. It changes nothing for the CPU kernels.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


def _exact_int8_onnxruntime() -> None:
    """Every onnxruntime session of the suite computes 8-bit products exactly.

    onnxruntime's default uint8 x int8 kernels on x86 without VNNI (AVX2, AVX-512 before VNNI) add the two products
    of each byte pair into a saturating int16 (``vpmaddubsw``): where a pair exceeds 32767 (255 * 127 * 2 = 64770)
    its result is off, by tens of output steps (measured on a Zen 3: a QLinearConv 27 LSB from the exact sum).
    On a VNNI CPU, and with its session option ``session.x64quantprecision`` (weights moved to uint8, exact int16
    products), onnxruntime's sums are exact, as edgedl's are on every CPU. The suite compares against that exact
    arithmetic, so it sets the option on every session that does not set it itself. (The option moves int8
    weights to uint8 also beside int8 activations, for which some contrib ops have no kernel: such a session is
    made again without it; int8 x int8 products are exact by default.)"""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    key = "session.x64quantprecision"
    base = ort.InferenceSession
    if getattr(base, "_edgedl_exact_int8", False):
        return

    class ExactInt8Session(base):
        _edgedl_exact_int8 = True

        def __init__(self, path_or_bytes, sess_options=None, *args, **kwargs):
            so = sess_options if sess_options is not None else ort.SessionOptions()
            try:
                so.get_session_config_entry(key)
                added = False
            except RuntimeError:  # not set by the test
                so.add_session_config_entry(key, "1")
                added = True
            try:
                super().__init__(path_or_bytes, so, *args, **kwargs)
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
                if not added or "NOT_IMPLEMENTED" not in str(e):
                    raise
                so.add_session_config_entry(key, "0")
                super().__init__(path_or_bytes, so, *args, **kwargs)

    ort.InferenceSession = ExactInt8Session


_exact_int8_onnxruntime()


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_thread_settings():
    """Every test leaves Numba's thread count and edgedl's default count as it found them. With the suite
    split across worker processes, the order of tests in a process changes from run to run: a count one test
    set (edgedl.set_num_threads(1), numba.set_num_threads) made a later one in the same worker see 1 thread
    (test_configure_threads_follows_the_monitor failed, three 2-thread tests skipped)."""
    import numba

    from edgedl import threads

    before, default, follow = numba.get_num_threads(), threads._default, threads._follow_load
    yield
    threads._default, threads._follow_load = default, follow
    if numba.get_num_threads() != before:
        numba.set_num_threads(before)
