"""Data-movement kernels (Transpose, Concat, Split, Slice, Pad, Gather, Cast, reshape family) against numpy."""
import itertools

import numba
import numpy as np
import pytest

from edgedl import testing
from edgedl.errors import EdgeDLError, ShapeError, UnsupportedOpError
from edgedl.kernels.cpu.layout import bits_view, collapse_transpose, make_transpose
from edgedl.ops.layout import slice_bounds

rng = np.random.default_rng(1234)


def run_op(op_type, inputs, attrs=None, opset=18, const=(), n_out=1):
    """Build the op like the planner does (infer, build) and run its kernel on preallocated outputs.

    ``inputs`` is a list of arrays (None for omitted inputs); indices in ``const`` are passed as constants.
    Returns (outputs, reference outputs, kernel)."""
    return testing.run_op(op_type, inputs, attrs, opset=opset, const=const, n_out=n_out)


def rand(shape, dtype=np.float32):
    a = rng.standard_normal(shape) * 20
    if np.dtype(dtype) == np.bool_:
        return a > 0
    return a.astype(dtype)


# --- Transpose -------------------------------------------------------------------------------------------
def test_collapse_transpose():
    assert collapse_transpose((2, 3, 4, 5), (0, 2, 3, 1)) == ((2, 3, 20), (0, 2, 1))
    assert collapse_transpose((2, 3, 4, 5), (0, 3, 1, 2)) == ((2, 12, 5), (0, 2, 1))
    assert collapse_transpose((1, 3, 1, 5), (2, 3, 0, 1)) == ((3, 5), (1, 0))
    assert collapse_transpose((2, 3, 4), (0, 1, 2)) == ((24,), (0,))
    assert collapse_transpose((2, 3, 4, 5), (0, 2, 1, 3)) == ((2, 3, 4, 5), (0, 2, 1, 3))


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint8, np.float16, np.bool_, np.int32])
def test_transpose_all_perms(dtype):
    for shape in [(2, 3, 4), (1, 5, 1, 7), (3, 4, 5, 6), (33, 40)]:
        for perm in itertools.permutations(range(len(shape))):
            x = rand(shape, dtype)
            (y,), (ref,), _ = run_op("Transpose", [x], {"perm": list(perm)})
            np.testing.assert_array_equal(y, np.transpose(x, perm))
            np.testing.assert_array_equal(ref, y)


@pytest.mark.parametrize("shape,perm,kind", [
    ((1, 64, 48, 48), (0, 2, 3, 1), "tiles"),     # NCHW -> NHWC, parallel size
    ((2, 48, 48, 64), (0, 3, 1, 2), "tiles"),     # NHWC -> NCHW
    ((64, 1024), (1, 0), "tiles"),                # 4 KiB input stride: 8-wide column blocks
    ((4, 12, 64, 32), (0, 2, 1, 3), "rows"),      # attention head split
    ((37, 5, 29), (2, 1, 0), "tiles"),            # ragged tiles, batch axis in the middle
    ((2, 3, 4), (0, 1, 2), "copy"),
])
def test_transpose_kernels(shape, perm, kind):
    x = rand(shape)
    out = np.empty(tuple(shape[p] for p in perm), np.float32)
    fn, got_kind = make_transpose(shape, perm)
    assert got_kind == kind
    fn(bits_view(x), bits_view(out))
    np.testing.assert_array_equal(out, np.transpose(x, perm))


def test_transpose_default_and_bad_perm():
    x = rand((2, 3, 4))
    (y,), _, _ = run_op("Transpose", [x])
    np.testing.assert_array_equal(y, x.T)
    with pytest.raises(ShapeError, match="not a permutation"):
        run_op("Transpose", [x], {"perm": [0, 0, 1]})
    with pytest.raises(ShapeError, match="not a permutation"):
        run_op("Transpose", [x], {"perm": [0, 1]})


def test_threads_agree():
    """Parallel and serial variants give identical results (1 thread vs 2 threads)."""
    shapes = [((1, 64, 48, 48), (0, 2, 3, 1)), ((8, 16, 64, 32), (0, 2, 1, 3))]
    saved = numba.get_num_threads()
    try:
        for shape, perm in shapes:
            x = rand(shape)
            results = []
            for nt in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
                numba.set_num_threads(nt)
                (y,), _, _ = run_op("Transpose", [x], {"perm": list(perm)})
                results.append(y)
            np.testing.assert_array_equal(results[0], results[1])
            data = rand((300, 1000))
            idx = rng.integers(-300, 300, 200).astype(np.int64)
            outs = []
            for nt in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
                numba.set_num_threads(nt)
                (y,), _, _ = run_op("Gather", [data, idx])
                outs.append(y)
            np.testing.assert_array_equal(outs[0], outs[1])
            np.testing.assert_array_equal(outs[0], data[idx])
    finally:
        numba.set_num_threads(saved)


# --- Concat / Split --------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_concat(axis):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for k, s in enumerate(shapes):
        s[axis] = [1, 0, 3][k]
    xs = [rand(s) for s in shapes]
    (y,), (ref,), _ = run_op("Concat", xs, {"axis": axis})
    np.testing.assert_array_equal(y, np.concatenate(xs, axis))
    np.testing.assert_array_equal(ref, y)


def test_concat_int64_and_errors():
    xs = [rand((2, 3), np.int64), rand((2, 5), np.int64)]
    (y,), _, _ = run_op("Concat", xs, {"axis": 1})
    np.testing.assert_array_equal(y, np.concatenate(xs, 1))
    with pytest.raises(ShapeError, match=r"input 1 has shape \(3, 5\) and input 0 has shape \(2, 3\)"):
        run_op("Concat", [rand((2, 3)), rand((3, 5))], {"axis": 1})
    with pytest.raises(ShapeError, match="input 1 has rank 3"):
        run_op("Concat", [rand((2, 3)), rand((2, 3, 1))], {"axis": 1})
    with pytest.raises(ShapeError, match="out of range"):
        run_op("Concat", [rand((2, 3)), rand((2, 3))], {"axis": 2})


def test_split():
    x = rand((4, 7, 3))
    outs, refs, _ = run_op("Split", [x, np.array([2, 0, 5], np.int64)], {"axis": 1}, const=(1,), n_out=3)
    for o, r, e in zip(outs, refs, np.split(x, [2, 2], axis=1)):
        np.testing.assert_array_equal(o, e)
        np.testing.assert_array_equal(r, e)
    outs, _, _ = run_op("Split", [x], {"axis": 1, "num_outputs": 3}, n_out=3)  # uneven: 3, 3, 1
    assert [o.shape[1] for o in outs] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(outs, 1), x)
    outs, _, _ = run_op("Split", [x], {"axis": 0, "split": [1, 3]}, opset=11, n_out=2)
    np.testing.assert_array_equal(outs[1], x[1:])
    with pytest.raises(ShapeError, match="sums to"):
        run_op("Split", [x, np.array([2, 2], np.int64)], {"axis": 1}, const=(1,), n_out=2)
    with pytest.raises(ShapeError, match="equal parts"):
        run_op("Split", [x], {"axis": 1}, opset=13, n_out=2)
    with pytest.raises(UnsupportedOpError, match="constant"):
        run_op("Split", [x, np.array([3, 4], np.int64)], {"axis": 1}, n_out=2)


# --- Slice -----------------------------------------------------------------------------------------------
def test_slice_bounds_spec():
    big = np.iinfo(np.int64).max
    assert slice_bounds(10, 2, big, 1) == (2, 10, 8)
    assert slice_bounds(10, -1, -big, -1) == (9, -1, 10)
    assert slice_bounds(10, 20, 0, -2) == (9, 0, 5)
    assert slice_bounds(10, -20, 3, 1) == (0, 3, 3)
    assert slice_bounds(10, 5, 5, 1)[2] == 0
    assert slice_bounds(0, 0, 5, 1)[2] == 0


def test_slice_random_against_numpy():
    big = np.iinfo(np.int64).max
    for _ in range(150):
        shape = tuple(int(d) for d in rng.integers(0, 7, 3))
        x = rand(shape)
        k = int(rng.integers(1, 4))
        axes = rng.permutation(3)[:k].astype(np.int64) - 3 * rng.integers(0, 2, k)
        starts = rng.integers(-9, 9, k).astype(np.int64)
        ends = rng.integers(-9, 9, k).astype(np.int64)
        steps = rng.choice([-3, -2, -1, 1, 2, 3], k).astype(np.int64)
        if rng.random() < 0.3:
            ends[0] = big if steps[0] > 0 else -big
        (y,), (ref,), _ = run_op("Slice", [x, starts, ends, axes, steps], const=(1, 2, 3, 4))
        want = x
        for s, e, a, st in zip(starts, ends, axes, steps):
            want = np.take(want, _spec_indices(x.shape[a], int(s), int(e), int(st)), axis=int(a))
        np.testing.assert_array_equal(y, want)
        np.testing.assert_array_equal(ref, y)


def _spec_indices(dim, start, end, step):
    """The indices the ONNX Slice spec selects (its clamping pseudo-code, written out independently)."""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = np.clip(start, 0, dim), np.clip(end, 0, dim)
    else:
        start, end = np.clip(start, 0, dim - 1), np.clip(end, -1, dim - 1)
    return np.arange(start, end, step, dtype=np.int64)


def test_slice_negative_step_clamps_start_per_spec():
    # start -9 on an axis of 3 clamps to 0 with a negative step: one element (numpy slicing gives none;
    # onnxruntime follows the spec)
    x = np.arange(3, dtype=np.float32)
    one = lambda v: np.array([v], np.int64)
    (y,), _, _ = run_op("Slice", [x, one(-9), one(-9), one(0), one(-1)], const=(1, 2, 3, 4))
    np.testing.assert_array_equal(y, [0.0])


def test_slice_opset1_and_errors():
    x = rand((4, 5))
    (y,), _, _ = run_op("Slice", [x], {"starts": [1, 0], "ends": [3, -1], "axes": [0, 1]}, opset=9)
    np.testing.assert_array_equal(y, x[1:3, 0:-1])
    one = np.array([1], np.int64)
    with pytest.raises(ShapeError, match="steps"):
        run_op("Slice", [x, one, one, one * 0, one * 0], const=(1, 2, 3, 4))
    with pytest.raises(ShapeError, match="repeat"):
        two = np.array([0, 0], np.int64)
        run_op("Slice", [x, two, two, two], const=(1, 2, 3))


# --- Pad -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes(mode):
    for _ in range(30):
        shape = tuple(int(d) for d in rng.integers(2, 6, 3))
        x = rand(shape)
        hi = 2 if mode == "reflect" else 7
        pads = rng.integers(0, hi, 6)
        pads = np.minimum(pads, [shape[i % 3] - 1 for i in range(6)]) if mode == "reflect" else pads
        inputs = [x, pads.astype(np.int64)]
        if mode == "constant":
            inputs.append(np.array(2.5, np.float32))
        (y,), (ref,), _ = run_op("Pad", inputs, {"mode": mode}, opset=19, const=(1, 2))
        width = list(zip(pads[:3], pads[3:]))
        kw = {"constant_values": 2.5} if mode == "constant" else {}
        np.testing.assert_array_equal(y, np.pad(x, width, mode=mode, **kw))
        np.testing.assert_array_equal(ref, y)


def test_pad_negative_axes_and_old_opset():
    x = rand((4, 5, 6))
    pads = np.array([-1, 2, 1, -2], np.int64)
    axes = np.array([0, -1], np.int64)
    (y,), (ref,), _ = run_op("Pad", [x, pads, None, axes], {"mode": "edge"}, opset=18, const=(1, 3))
    np.testing.assert_array_equal(y, np.pad(x[1:, :, :-2], [(0, 1), (0, 0), (2, 0)], mode="edge"))
    np.testing.assert_array_equal(ref, y)
    (y,), _, _ = run_op("Pad", [x], {"pads": [0, 1, 0, 0, 1, 0], "value": -1.0}, opset=2)
    np.testing.assert_array_equal(y, np.pad(x, [(0, 0), (1, 1), (0, 0)], constant_values=-1.0))
    xi = rand((3, 3), np.int64)
    (y,), _, _ = run_op("Pad", [xi, np.array([1, 1, 1, 1], np.int64)], {"mode": "constant"}, opset=13, const=(1,))
    np.testing.assert_array_equal(y, np.pad(xi, 1))


def test_pad_errors():
    x = rand((3, 4))
    with pytest.raises(ShapeError, match="reflect.*smaller than the axis size"):
        run_op("Pad", [x, np.array([3, 0, 0, 0], np.int64)], {"mode": "reflect"}, opset=13, const=(1,))
    with pytest.raises(ShapeError, match="crop more"):
        run_op("Pad", [x, np.array([-2, 0, -2, 0], np.int64)], opset=13, const=(1,))
    with pytest.raises(ShapeError, match="pads has 3 values"):
        run_op("Pad", [x, np.array([1, 1, 1], np.int64)], opset=13, const=(1,))


# --- Gather ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.float16, np.bool_])
def test_gather(dtype):
    data = rand((5, 6, 7), dtype)
    for axis in (0, 1, 2, -1):
        for ishape in [(), (4,), (2, 3)]:
            dim = data.shape[axis]
            idx = rng.integers(-dim, dim, ishape).astype(np.int64)
            for const in ((), (1,)):
                (y,), (ref,), _ = run_op("Gather", [data, idx.astype(np.int32)], {"axis": axis}, const=const)
                np.testing.assert_array_equal(y, np.take(data, idx, axis=axis))
                np.testing.assert_array_equal(ref, y)


def test_gather_out_of_range():
    data = rand((4, 3))
    with pytest.raises(EdgeDLError, match="index 4 .* out of range"):
        run_op("Gather", [data, np.array([0, 4], np.int64)], const=(1,))
    # runtime indices: checked by the kernel, nothing read out of bounds
    with pytest.raises(EdgeDLError, match="index -5 .* out of range"):
        run_op("Gather", [data, np.array([[1, -5]], np.int64)])


# --- Cast, ConstantOfShape, Constant ---------------------------------------------------------------------
def test_cast():
    codes = {np.float32: 1, np.uint8: 2, np.int8: 3, np.int32: 6, np.int64: 7, np.bool_: 9, np.float16: 10,
             np.float64: 11}
    for src, dst in itertools.product(codes, codes):
        x = rand((3, 4), src)
        if np.dtype(src).kind == "f" and np.dtype(dst).kind in "iu":
            x = np.clip(x, 0, 100).astype(src)
        (y,), (ref,), _ = run_op("Cast", [x], {"to": codes[dst]})
        assert y.dtype == np.dtype(dst)
        np.testing.assert_array_equal(y, x.astype(dst))
        np.testing.assert_array_equal(ref, y)
    for code in (8, 14, 15):  # string, complex64, complex128
        with pytest.raises(UnsupportedOpError):
            run_op("Cast", [rand((2,))], {"to": code})
    with pytest.raises(ShapeError, match="not a valid ONNX element type"):
        run_op("Cast", [rand((2,))], {"to": 99})


def test_constant_of_shape_and_constant():
    (y,), (ref,), _ = run_op("ConstantOfShape", [np.array([2, 0, 3], np.int64)], const=(0,))
    assert y.shape == (2, 0, 3) and y.dtype == np.float32
    (y,), _, _ = run_op("ConstantOfShape", [np.array([2, 3], np.int64)], {"value": np.array([7], np.int32)},
                        const=(0,))
    np.testing.assert_array_equal(y, np.full((2, 3), 7, np.int32))
    with pytest.raises(UnsupportedOpError):
        run_op("ConstantOfShape", [np.array([2, 3], np.int64)])
    (y,), (ref,), _ = run_op("Constant", [], {"value_ints": [1, 2, 3]})
    np.testing.assert_array_equal(y, [1, 2, 3])
    np.testing.assert_array_equal(ref, y)
    assert y.dtype == np.int64


# --- Reshape family --------------------------------------------------------------------------------------
def test_reshape_family():
    x = rand((2, 3, 4))
    for shape, want in [([4, -1], (4, 6)), ([0, -1], (2, 12)), ([0, 0, 2, 2], (2, 3, 2, 2)), ([-1], (24,))]:
        (y,), (ref,), _ = run_op("Reshape", [x, np.array(shape, np.int64)], const=(1,))
        assert y.shape == want
        np.testing.assert_array_equal(y, x.reshape(want))
        np.testing.assert_array_equal(ref, y)
    with pytest.raises(ShapeError, match=r"cannot reshape 24 elements .* into \(5, -1\)"):
        run_op("Reshape", [x, np.array([5, -1], np.int64)], const=(1,))
    (y,), _, _ = run_op("Reshape", [np.zeros((0, 3), np.float32), np.array([3, 0], np.int64)],
                        {"allowzero": 1}, const=(1,))
    assert y.shape == (3, 0)
    for axis, want in [(0, (1, 24)), (2, (6, 4)), (-1, (6, 4)), (3, (24, 1))]:
        (y,), _, _ = run_op("Flatten", [x], {"axis": axis})
        assert y.shape == want
    xs = rand((1, 3, 1, 4))
    (y,), _, _ = run_op("Squeeze", [xs, np.array([-2], np.int64)], const=(1,))
    assert y.shape == (1, 3, 4)
    (y,), _, _ = run_op("Squeeze", [xs], opset=11)
    assert y.shape == (3, 4)
    with pytest.raises(ShapeError, match="size is 3"):
        run_op("Squeeze", [xs, np.array([1], np.int64)], const=(1,))
    (y,), _, _ = run_op("Unsqueeze", [x, np.array([-1, 0], np.int64)], const=(1,))
    assert y.shape == (1, 2, 3, 4, 1)
    (y,), _, _ = run_op("Unsqueeze", [x], {"axes": [1]}, opset=11)
    assert y.shape == (2, 1, 3, 4)
    outs, _, _ = run_op("Dropout", [x, np.array(0.5, np.float32)], n_out=2)
    np.testing.assert_array_equal(outs[0], x)
    assert outs[1].dtype == np.bool_ and outs[1].all()
    # training mode: ratio 0 keeps everything; otherwise kept elements are scaled by 1 / (1 - ratio), the
    # mask says which, and a seed makes the masks repeatable
    outs, _, _ = run_op("Dropout", [x, np.array(0.0, np.float32), np.array(True)], n_out=2)
    np.testing.assert_array_equal(outs[0], x)
    assert outs[1].all()
    big = np.ones((200, 50), np.float32)
    runs = []
    for _ in range(2):
        outs, _, _ = run_op("Dropout", [big, np.array(0.25, np.float32), np.array(True)], {"seed": 3}, n_out=2)
        y, mask = outs
        np.testing.assert_array_equal(y, np.where(mask, np.float32(1 / 0.75), 0))
        assert 0.2 < 1 - mask.mean() < 0.3
        runs.append(mask)
    np.testing.assert_array_equal(runs[0], runs[1])
    with pytest.raises(ShapeError, match="ratio"):
        run_op("Dropout", [x, np.array(1.0, np.float32), np.array(True)])


def test_alias_view_in_model():
    """Reshape between two ops runs as a view; as a graph output it is copied."""
    from onnx import helper, numpy_helper

    import edgedl

    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]),
             helper.make_node("Transpose", ["r"], ["y"], perm=[1, 0]),
             helper.make_node("Flatten", ["x"], ["f"], axis=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, (2, 3, 4))],
                          [helper.make_tensor_value_info("y", 1, None), helper.make_tensor_value_info("f", 1, None)],
                          [numpy_helper.from_array(np.array([6, 4], np.int64), "s")])
    m = edgedl.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    x = rand((2, 3, 4))
    out = m.run({"x": x})
    np.testing.assert_array_equal(out["y"], x.reshape(6, 4).T)
    np.testing.assert_array_equal(out["f"], x.reshape(2, 12))
    assert m.plan({"x": (2, 3, 4)}).kernel_impls().get("view") == 1


@pytest.mark.parametrize("shape,perm", [((1, 64, 64, 3), (0, 3, 1, 2)), ((2, 5, 7, 4), (0, 3, 1, 2)),
                                        ((1, 3, 16, 16), (0, 2, 3, 1)), ((3, 2, 9, 5), (0, 2, 3, 1)),
                                        ((1, 10, 10, 2), (0, 3, 1, 2)), ((17, 3), (1, 0)),
                                        ((2, 4, 13, 11), (0, 2, 3, 1)), ((1, 2, 33, 7), (0, 2, 3, 1)),
                                        ((3, 67), (1, 0)), ((2, 31, 9, 3), (0, 3, 1, 2))])
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint32, np.int8, np.uint8, np.float16, np.uint16,
                                   np.bool_])
def test_few_channel_transpose_moves_bits(shape, perm, dtype):
    """NHWC <-> NCHW of 2 to 4 channels runs on vector shuffles (32-bit items) or interleaved loops (8- and
    16-bit items), bit for bit (NaN payloads too), whole vector chunks and tails, several images."""
    rng = np.random.default_rng(3)
    size = np.dtype(dtype).itemsize
    u = {1: np.uint8, 2: np.uint16, 4: np.uint32}[size]
    x = rng.integers(0, 2 ** (8 * size), size=shape, dtype=np.uint64).astype(u)
    if dtype == np.bool_:
        x &= 1
    x = x.view(dtype)
    fn, kind = make_transpose(x.shape, perm, size)
    assert kind == "channels"
    out = np.empty(np.transpose(x, perm).shape, dtype)
    fn(bits_view(x), bits_view(out))
    np.testing.assert_array_equal(out.view(u), np.ascontiguousarray(np.transpose(x, perm)).view(u))
    (y,), (ref,), _ = run_op("Transpose", [x], {"perm": list(perm)})  # the op picks the same kernel
    np.testing.assert_array_equal(y.view(u), ref.view(u))
    np.testing.assert_array_equal(y.view(u), out.view(u))


@pytest.mark.parametrize("dtype", [np.int8, np.float16, np.float32])
def test_transpose_bound_kernel(dtype):
    """The Transpose op's bound kernel (channels, tiles and rows strategies) reads its input's current contents
    at every run."""
    from edgedl.ir import Node, TensorType
    from edgedl.registry import lookup

    for shape, perm in (((1, 64, 64, 3), (0, 3, 1, 2)), ((1, 3, 20, 20), (0, 2, 3, 1)),
                        ((1, 32, 16, 16), (0, 2, 3, 1)), ((2, 12, 8, 4), (0, 2, 1, 3))):
        op = lookup("Transpose")(Node("Transpose", "n", ["x"], ["y"], {"perm": list(perm)}), 18)
        t = op.infer([TensorType(shape, np.dtype(dtype))], [None])[0]
        kernel = op.build([TensorType(shape, np.dtype(dtype))], [t], [None])
        x = rand(shape, dtype)
        out = np.empty(t.shape, t.dtype)
        run = kernel.bind([x], [out], np.empty(kernel.scratch_bytes, np.uint8), 1)
        for k in range(2):
            x[...] = rand(shape, dtype)
            run()
            np.testing.assert_array_equal(out, np.transpose(x, perm), err_msg=f"{shape} {perm} run {k}")
