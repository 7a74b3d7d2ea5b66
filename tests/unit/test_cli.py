"""The edgedl command: info, run, ops, and one-line errors with a non-zero exit code."""
import os
import subprocess
import sys

import numpy as np

from edgedl.cli import main

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "kws_tc_resnet.onnx")
INPUT = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "spectrogram.npy")


def test_info(capsys):
    assert main(["info", EXAMPLE]) == 0
    out = capsys.readouterr().out
    assert "spectrogram: float32 [N, 40, 98]" in out
    assert "arena:" in out and "lower bound" in out and "parameters:" in out and "Conv x" in out


def test_run_writes_outputs(tmp_path, capsys):
    out_path = tmp_path / "out.npz"
    assert main(["run", EXAMPLE, "--input", INPUT, "--output", str(out_path), "--repeat", "2"]) == 0
    with np.load(out_path) as data:
        scores = data["scores"]
    assert scores.shape == (1, 12)
    np.testing.assert_allclose(scores.sum(), 1.0, rtol=1e-5)


def test_run_npz_input(tmp_path):
    feeds = tmp_path / "in.npz"
    np.savez(feeds, spectrogram=np.load(INPUT))
    assert main(["run", EXAMPLE, "--input", str(feeds)]) == 0


def test_ops_matrix(capsys):
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    for op in ("Conv", "Gemm", "MaxPool", "Softmax", "Resize", "Transpose"):
        assert op in out


def test_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    r = subprocess.run([sys.executable, "-m", "edgedl.cli", "info", str(bad)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode != 0
    assert r.stderr.startswith("edgedl: error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "edgedl.cli", "run", EXAMPLE, "--input", str(tmp_path / "no.npy")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((1, 41, 98), np.float32))
    r = subprocess.run([sys.executable, "-m", "edgedl.cli", "run", EXAMPLE, "--input", str(wrong)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and "axis 1" in r.stderr and "Traceback" not in r.stderr


def test_info_on_a_model_whose_plan_needs_an_input_value(tmp_path, capsys):
    """silero-vad's pattern: If(sr == 16000) picks branches that fit only their own input size; info says the
    plan is built at the first run instead of failing."""
    from onnx import TensorProto as T
    from onnx import helper as h

    from edgedl.cli import main

    then_g = h.make_graph([h.make_node("Add", ["x", "x"], ["t"])], "then", [],
                          [h.make_tensor_value_info("t", T.FLOAT, None)])
    else_g = h.make_graph([h.make_node("ReduceSum", ["x"], ["e"], keepdims=0)], "else", [],
                          [h.make_tensor_value_info("e", T.FLOAT, None)])
    g = h.make_graph([h.make_node("Equal", ["sr", "k"], ["c"]),
                      h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [4]), h.make_tensor_value_info("sr", T.INT64, [])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], [h.make_tensor("k", T.INT64, [], [16000])])
    path = tmp_path / "if.onnx"
    path.write_bytes(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]).SerializeToString())
    assert main(["info", str(path)]) == 0
    assert "built at the first run, from the values of inputs ['sr']" in capsys.readouterr().out
