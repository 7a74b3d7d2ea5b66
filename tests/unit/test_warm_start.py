"""The warm start: loading a model does not import the onnx package, and kernels in Numba's cache load
without Numba's compiler set-up (edgedl.kernels.cache_load), in fresh processes."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
EXAMPLE = os.path.join(ROOT, "examples", "kws_tc_resnet.onnx")
SPECTROGRAM = os.path.join(ROOT, "examples", "spectrogram.npy")


def _python(code: str, *args: str, env: dict | None = None) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, **(env or {})), cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


LOAD_AND_RUN = """
import json, sys
import numpy as np
import edgedl
m = edgedl.load(sys.argv[1])
loaded = sorted(k for k in sys.modules if k.split(".")[0] in ("onnx", "ml_dtypes"))
y = m(np.load(sys.argv[2]))
ran = sorted(k for k in sys.modules if k.split(".")[0] in ("onnx", "ml_dtypes"))
print(json.dumps({"loaded": loaded, "ran": ran, "y": y.tolist()}))
"""


def test_load_and_run_do_not_import_onnx():
    import edgedl

    out = _python(LOAD_AND_RUN, EXAMPLE, SPECTROGRAM)
    assert out["loaded"] == [] and out["ran"] == []
    np.testing.assert_array_equal(np.array(out["y"], np.float32), edgedl.load(EXAMPLE)(np.load(SPECTROGRAM)))


ONNX_LATER = """
import json, sys
import numpy as np
import edgedl
from edgedl.converters import onnx_proto
m = edgedl.load(sys.argv[1])
private = onnx_proto.schema()
import onnx  # after edgedl registered the same .proto file in protobuf's default pool
model = onnx.load(sys.argv[1])
onnx.checker.check_model(model)
x = np.load(sys.argv[2])
print(json.dumps({
    "same_classes": onnx.ModelProto is private.ModelProto and onnx.TensorProto is private.TensorProto,
    "same_output": bool((edgedl.load(model)(x) == m(x)).all()),
    "roundtrip": onnx.ModelProto.FromString(model.SerializeToString()) == model,
}))
"""


def test_onnx_imported_after_edgedl_shares_the_message_classes():
    out = _python(ONNX_LATER, EXAMPLE, SPECTROGRAM)
    assert out == {"same_classes": True, "same_output": True, "roundtrip": True}


WARM = """
import json, sys
import numpy as np
from numba.core import caching, compiler
counts = {"loaded": 0, "compiled": 0}
load, compile_extra = caching.Cache._load_overload, compiler.compile_extra
def counting_load(self, *args):
    cres = load(self, *args)
    counts["loaded"] += cres is not None
    return cres
def counting_compile(*args, **kwargs):
    counts["compiled"] += 1
    return compile_extra(*args, **kwargs)
caching.Cache._load_overload, compiler.compile_extra = counting_load, counting_compile
import edgedl
m = edgedl.load(sys.argv[1])
y = m(np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64))
refreshed = "numba.np.arraymath" in sys.modules  # imported by Numba's full context refresh only
kernels = dict(counts)
import numba

@numba.njit
def user(a, b):  # user code compiled after the kernels loaded: Numba refreshes its context as usual
    return np.dot(a, b)

dot = float(user(np.ones(3), np.arange(3.0)))
print(json.dumps({**kernels, "y": y.tolist(), "refreshed": refreshed, "dot": dot}))
"""


def _relu_model(path: str) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_cached_kernels_load_without_numba_refresh(tmp_path):
    model = str(tmp_path / "relu.onnx")
    _relu_model(model)
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    want = np.maximum(np.linspace(-1, 1, 64, dtype=np.float32), 0).tolist()

    cold = _python(WARM, model, env=env)
    assert cold["compiled"] > 0 and cold["refreshed"]  # compiling refreshes the context
    nrt = glob.glob(str(tmp_path / "cache" / "**" / "edgedl-nrt-*.nbo"), recursive=True)
    assert len(nrt) == 1  # the Numba runtime's machine code, saved beside the kernels

    warm = _python(WARM, model, env=env)
    assert warm["compiled"] == 0 and warm["loaded"] > 0, warm
    assert not warm["refreshed"]
    assert warm["y"] == cold["y"] == [want]
    assert warm["dot"] == cold["dot"] == 3.0

    with open(nrt[0], "wb") as f:  # a damaged runtime file: compiled again and rewritten
        f.write(b"not a pickle")
    again = _python(WARM, model, env=env)
    assert again["compiled"] == 0 and again["y"] == [want] and not again["refreshed"]
    with open(nrt[0], "rb") as f:
        assert f.read() != b"not a pickle"
