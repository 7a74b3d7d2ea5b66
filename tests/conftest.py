"""Suite-wide settings."""
import os

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
