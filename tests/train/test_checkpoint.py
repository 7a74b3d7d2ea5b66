"""Checkpoints: a training process killed mid-epoch resumes to the same final weights as an uninterrupted
run; writes are atomic; a diverging loss leaves the last good checkpoint; damaged or mismatched files are
clear errors."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import edgedl
from edgedl import EdgeDLError, zoo
from edgedl.train import SGD
from edgedl.train.checkpoint import read_checkpoint

KILL_AT = 20  # steps: 8 per epoch, so the process dies in epoch 2 (0-based), after the checkpoint of step 18


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:256] / 16.0).astype(np.float32)[:, None]
    return np.ascontiguousarray(x), d.target[:256].astype(np.int64)


def _trainer():
    return edgedl.Trainer(edgedl.load(zoo.digits_cnn(seed=1)), optimizer=SGD(lr=0.05, momentum=0.9), seed=3)


def test_killed_run_resumes_to_the_same_weights(data, tmp_path):
    x, y = data
    np.savez(tmp_path / "data.npz", x=x, y=y)
    ckpt = tmp_path / "run.ckpt.npz"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        import numpy as np
        import edgedl
        from edgedl import zoo
        from edgedl.train import SGD

        d = np.load(sys.argv[1])
        tr = edgedl.Trainer(edgedl.load(zoo.digits_cnn(seed=1)), optimizer=SGD(lr=0.05, momentum=0.9), seed=3)
        step = tr._step  # what fit calls for each batch

        def dying_step(xb, yb):
            if tr.step_count == {KILL_AT}:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, as a power loss
            return step(xb, yb)

        tr._step = dying_step
        tr.fit(d["x"], d["y"], epochs=3, batch_size=32, checkpoint=sys.argv[2], checkpoint_every=3)
    """))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "data.npz"), str(ckpt)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    _, _, meta = read_checkpoint(ckpt)
    assert (meta["epoch"], meta["batch"], meta["step_count"]) == (2, 2, 18)  # mid-epoch
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".ckpt-")]

    resumed = _trainer()
    h1 = resumed.fit(x, y, epochs=3, batch_size=32, checkpoint=ckpt, resume=True)
    straight = _trainer()
    h2 = straight.fit(x, y, epochs=3, batch_size=32)
    for k in straight.params:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k], err_msg=k)
    assert h1.loss == h2.loss and resumed.step_count == straight.step_count == 24


def test_a_failed_write_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    x, y = data
    ckpt = tmp_path / "c.npz"
    tr = _trainer()
    tr.fit(x[:64], y[:64], epochs=1, batch_size=32, checkpoint=ckpt)
    before = read_checkpoint(ckpt)[0]

    def broken(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        tr.fit(x[:64], y[:64], epochs=1, batch_size=32, checkpoint=ckpt)
    monkeypatch.undo()
    after = read_checkpoint(ckpt)[0]
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    assert os.listdir(tmp_path) == ["c.npz"]


def test_a_diverging_loss_stops_with_the_last_good_checkpoint_on_disk(data, tmp_path):
    x, y = data
    ckpt = tmp_path / "c.npz"
    tr = _trainer()
    good = {}

    class Explode:
        def on_epoch_end(self, trainer, epoch, logs):
            good.update({k: v.copy() for k, v in trainer.params.items()})
            trainer.optimizer.lr = 1e30
            return False

    with pytest.raises(EdgeDLError, match=r"step \d+"):
        tr.fit(x, y, epochs=3, batch_size=32, checkpoint=ckpt, checkpoint_every=1000, callbacks=[Explode()])
    saved, _, meta = read_checkpoint(ckpt)
    assert meta["epoch"] == 1 and meta["batch"] == 0
    for k in good:
        np.testing.assert_array_equal(saved[k], good[k])


def test_bad_checkpoints_are_clear_errors(data, tmp_path):
    x, y = data
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgeDLError, match="not a readable checkpoint"):
        read_checkpoint(bad)
    with pytest.raises(EdgeDLError, match="no checkpoint"):
        read_checkpoint(tmp_path / "missing.npz")
    ckpt = tmp_path / "c.npz"
    _trainer().fit(x[:64], y[:64], epochs=1, batch_size=32, checkpoint=ckpt)
    with pytest.raises(EdgeDLError, match="same ones"):
        _trainer().fit(x[:64], y[:64], epochs=2, batch_size=16, checkpoint=ckpt, resume=True)
    other = edgedl.Trainer(edgedl.load(zoo.digits_cnn(seed=1)), trainable="bias", seed=3)
    with pytest.raises(EdgeDLError, match="trains"):
        other.fit(x[:64], y[:64], epochs=2, batch_size=32, checkpoint=ckpt, resume=True)
    with pytest.raises(EdgeDLError, match="checkpoint path"):
        _trainer().fit(x[:64], y[:64], resume=True)


def test_resume_with_batchnorm_statistics_and_dropout_is_exact(tmp_path):
    """Running statistics are checkpointed with the weights, and dropout masks come from (seed, step): an
    interrupted run resumes to the same weights and statistics as an uninterrupted one."""
    from test_trainer_modes import _bn_dropout_two_inputs

    rng = np.random.default_rng(2)
    feeds = {"x": rng.normal(size=(96, 1, 8, 8)).astype(np.float32), "z": rng.normal(size=(96, 4)).astype(np.float32)}
    y = rng.integers(0, 10, 96)

    def trainer():
        return edgedl.Trainer(edgedl.load(_bn_dropout_two_inputs(ratio=0.3)), optimizer=SGD(lr=0.05, momentum=0.9),
                              seed=5)

    whole = trainer()
    whole.fit(feeds, y, epochs=3, batch_size=16)

    class Stop(Exception):
        pass

    class Interrupt:
        def on_epoch_end(self, tr, epoch, logs):
            if epoch == 0:
                raise Stop

    ckpt = tmp_path / "bn.npz"
    first = trainer()
    with pytest.raises(Stop):
        first.fit(feeds, y, epochs=3, batch_size=16, checkpoint=ckpt, checkpoint_every=4, callbacks=[Interrupt()])
    assert {"m1", "v1"} <= set(read_checkpoint(ckpt)[0])
    resumed = trainer()
    resumed.fit(feeds, y, epochs=3, batch_size=16, checkpoint=ckpt, checkpoint_every=4, resume=True)
    for k in whole.params:
        np.testing.assert_array_equal(resumed.params[k], whole.params[k])
    for k in ("m1", "v1"):
        np.testing.assert_array_equal(resumed.buffers[k], whole.buffers[k])
        assert not np.array_equal(whole.buffers[k], resumed.graph.initializers[k])  # they did move
