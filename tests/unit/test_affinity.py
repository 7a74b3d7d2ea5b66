"""Core sets: a target's kernels run on its big (or little) cores; tune tries the sets on big.LITTLE CPUs."""
from __future__ import annotations

import os

import numpy as np
import pytest
from edgedl.targets import resolve_target

import edgedl
from edgedl import affinity

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                                reason="needs Linux affinity and two usable CPUs")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _allowed() -> dict[int, frozenset]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            out[int(tid)] = frozenset(os.sched_getaffinity(int(tid)))
        except OSError:  # the thread ended meanwhile
            pass
    return out


def _fake_big_little():
    cpus = sorted(os.sched_getaffinity(0))
    host = resolve_target("host")
    return host.replace(big_cores=tuple(cpus[:1]), little_cores=tuple(cpus[1:]), cores=len(cpus),
                        threads=len(cpus))


def test_core_ids():
    t = _fake_big_little()
    cpus = sorted(os.sched_getaffinity(0))
    assert affinity.core_ids(t) is None  # "all"
    assert affinity.core_ids(t.replace(core_set="big")) == frozenset(cpus[:1])
    assert affinity.core_ids(t.replace(core_set="little")) == frozenset(cpus[1:])
    assert affinity.core_ids(t.replace(core_set="little", little_cores=())) is None  # nothing to restrict to
    assert affinity.core_ids(None) is None


def test_bad_core_set_is_a_clear_error():
    with pytest.raises(edgedl.EdgeDLError, match="core_set must be one of"):
        _fake_big_little().replace(core_set="fast")


def test_a_big_core_run_pins_the_workers_and_gives_the_caller_its_cores_back():
    t = _fake_big_little().replace(core_set="big")
    big = affinity.core_ids(t)
    me = os.sched_getaffinity(0)
    m = edgedl.load(os.path.join(ROOT, "examples", "kws_tc_resnet.onnx"), target=t)
    x = np.load(os.path.join(ROOT, "examples", "spectrogram.npy"))
    ref = edgedl.load(os.path.join(ROOT, "examples", "kws_tc_resnet.onnx"))(x)
    try:
        np.testing.assert_array_equal(m(x), ref)
        assert affinity.pinned()
        assert os.sched_getaffinity(0) == me  # the calling thread is free again
        pinned = [tid for tid, cpus in _allowed().items() if cpus == big]
        assert pinned, "no worker thread runs on the big cores"
        # a model with every core unpins them
        edgedl.load(os.path.join(ROOT, "examples", "kws_tc_resnet.onnx"), target=t.replace(core_set="all"))(x)
        assert not affinity.pinned()
        assert all(cpus != big for tid, cpus in _allowed().items() if tid in pinned)
    finally:
        if affinity.pinned():
            affinity.pin_workers(None)


def test_tune_tries_core_sets_on_big_little(tmp_path):
    from edgedl.tune import _core_set_options, tune

    t = _fake_big_little()
    assert _core_set_options(t) == ["all", "big", "little"]
    assert _core_set_options(t.replace(little_cores=())) == []
    r = tune(os.path.join(ROOT, "examples", "kws_tc_resnet.onnx"), target=t, seconds=0.05,
             out=tmp_path / "tuned.toml", progress=False)
    st = {s.choice: s for s in r.stages}
    assert set(st["core_set"].measured) == {"all", "big", "little"}
    assert r.target.core_set in ("all", "big", "little")
    assert not affinity.pinned()  # tuning leaves the workers as it found them
    text = (tmp_path / "tuned.toml").read_text()
    assert f'core_set = "{r.target.core_set}"' in text
