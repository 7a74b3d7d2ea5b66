"""Suite-wide settings."""
import os

# NOTE: thread counts that follow the load (edgedl.load_monitor) would make tests that compare 1 and N threads
# compare 1 with 1 whenever the machine is busy. The suite runs at the counts it asks for; the monitor and its
# wiring have their own tests (tests/unit/test_load_monitor.py).
os.environ.setdefault("EDGEDL_FOLLOW_LOAD", "0")
