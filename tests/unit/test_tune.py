"""edgedl tune: the decision rules (scripted timings), the tuned file, and where later loads apply it."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from edgedl.targets import load_profile_file

import edgedl
from edgedl import board, tune
from edgedl.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
KWS = str(ROOT / "examples" / "kws_tc_resnet.onnx")


class Scripted:
    """Stands in for tune._Bench: latency is a function of the candidate Target."""

    def __init__(self, cost):
        self.cost = cost
        self.model = edgedl.load(KWS)

    def measure(self, target, seconds=None):
        # tune() passes ``seconds`` only in its final interleaved rounds
        return self.cost(target) if seconds is None else getattr(self, "final_cost", self.cost)(target)


def _tune(monkeypatch, tmp_path, cost, final_cost=None):
    def bench(src, shapes, seconds):
        b = Scripted(cost)
        if final_cost is not None:
            b.final_cost = final_cost
        return b

    monkeypatch.setattr(tune, "_Bench", bench)
    return tune.tune(KWS, target=board.detected_target(), out=tmp_path / "t.toml", progress=False)


def test_a_faster_choice_is_adopted_and_written(monkeypatch, tmp_path):
    def cost(t):  # one thread is clearly best; a mid threshold helps a little more
        return (1.0 if t.threads == 1 else 2.0) - (0.1 if t.parallel_min_work == 1 << 17 else 0.0)

    r = _tune(monkeypatch, tmp_path, cost)
    assert r.target.threads == 1 and not r.kept_shipped
    assert r.after < r.before
    assert r.target.parallel_min_work is None  # thresholds are only tuned when several threads run
    written = load_profile_file(r.path)
    assert written.threads == 1 and written.tuned["board"] == board.detected_target().name
    assert written.tuned["model_hash"].startswith("sha256:")
    text = "\n".join(tune.format_result(r))
    assert "threads" in text and "faster" in text


def test_noise_keeps_the_shipped_choices(monkeypatch, tmp_path):
    import itertools

    jitter = itertools.cycle([1.0, 0.99, 1.01, 0.985])  # differences under MIN_GAIN
    r = _tune(monkeypatch, tmp_path, lambda t: next(jitter))
    shipped = board.detected_target()
    assert r.kept_shipped
    assert (r.target.threads, r.target.parallel_min_work, r.target.gemm_parallel_min_work) == (
        shipped.threads, shipped.parallel_min_work, shipped.gemm_parallel_min_work)


def test_never_slower_than_shipped(monkeypatch, tmp_path):
    """Stages pick a choice, but the interleaved final check finds the tuned set slower: shipped kept."""
    if board.detected_target().threads == 1:
        pytest.skip("a one-core machine has nothing to choose")
    r = _tune(monkeypatch, tmp_path, lambda t: 1.0 if t.threads == 1 else 2.0,
              final_cost=lambda t: 3.0 if t.threads == 1 else 2.0)
    assert r.kept_shipped and r.target.threads == board.detected_target().threads


def test_the_convolution_strategy_is_tuned(monkeypatch, tmp_path):
    """On a board where packed panels beat the padded image read in place, tuning writes ``conv_flat = false``."""
    assert tune._conv_flat_options(edgedl.load(KWS)) == [True, False]
    r = _tune(monkeypatch, tmp_path, lambda t: (1.0 if t.conv_flat is False else 1.5) - 0.2 * (t.conv_pixels is False))
    assert r.target.conv_flat is False and r.target.conv_pixels is False and not r.kept_shipped
    assert (load_profile_file(r.path).conv_flat, load_profile_file(r.path).conv_pixels) == (False, False)
    assert "conv_flat" in "\n".join(tune.format_result(r))


def test_real_tuning_run(tmp_path):
    r = tune.tune(KWS, out=tmp_path / "kws.toml", seconds=0.02, progress=False)
    assert 1 <= r.target.threads <= board.detected_target().cores
    assert r.after <= r.before
    assert load_profile_file(tmp_path / "kws.toml").tuned["board"] == board.detected_target().name


def _write_tuned(tmp_path, **tuned):
    here = board.detected_target()
    info = {"edgedl_version": edgedl.__version__, "board": here.name, "cpu": here.cpu, "model_hash": "sha256:0"}
    info.update(tuned)
    path = tune.tuned_path(here.name)
    tune.write_profile(here.replace(threads=1, parallel_min_work=99999, tuned=info), path)
    return path


def test_load_applies_this_boards_tuned_file(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("EDGEDL_TUNED", "1")
    path = _write_tuned(tmp_path)
    m = edgedl.load(KWS)
    assert m.target.threads == 1 and m.target.parallel_min_work == 99999 and m.target.source == str(path)
    monkeypatch.setenv("EDGEDL_TUNED", "0")
    assert edgedl.load(KWS).target.parallel_min_work is None


@pytest.mark.parametrize("field,value,why", [("board", "rpi4", "tuned on board 'rpi4'"),
                                             ("cpu", "cortex-a53", "tuned on CPU"),
                                             ("edgedl_version", "0.0.1", "tuned with edgedl 0.0.1")])
def test_tuned_file_from_elsewhere_is_ignored(monkeypatch, tmp_path, field, value, why):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("EDGEDL_TUNED", "1")
    path = _write_tuned(tmp_path, **{field: value})
    with pytest.warns(UserWarning, match=why):
        m = edgedl.load(KWS)
    assert m.target.parallel_min_work is None and m.target.tuned is None
    with pytest.warns(UserWarning, match="ignoring tuned profile"):  # passed explicitly: the same rule
        assert edgedl.load(KWS, target=str(path)).target.parallel_min_work is None


def test_malformed_tuned_file(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("EDGEDL_TUNED", "1")
    path = _write_tuned(tmp_path)
    path.write_text(path.read_text().replace("threads = 1", "threads = -3"))
    with pytest.raises(edgedl.EdgeDLError, match=r"choices\.threads"):
        edgedl.load(KWS)
    path.write_text("this is [not toml")
    with pytest.raises(edgedl.EdgeDLError, match=str(path.name)):
        edgedl.load(KWS)


def test_cli_tune_errors(capsys, tmp_path):
    assert cli_main(["tune", "no/such.onnx"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["tune", KWS, "--shape", "spectrogram=1xAx98"]) == 2
    assert "--shape" in capsys.readouterr().err
    assert cli_main(["tune", KWS, "--seconds", "0"]) == 2


def test_cli_tune_writes_the_file(capsys, tmp_path):
    out = tmp_path / "kws.toml"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli_main(["tune", KWS, "--seconds", "0.02", "--out", str(out),
                         "--shape", "spectrogram=1x40x98"]) == 0
    text = capsys.readouterr().out
    assert "| threads |" in text and f"wrote {out}" in text and os.path.isfile(out)
