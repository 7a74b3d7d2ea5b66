"""Old opsets as exporters wrote them: the attribute forms that later became inputs (Upsample 7/9, Resize 10 to 19,
Split/Slice/Clip/Reduce*/Squeeze/Unsqueeze/Pad/TopK with attributes, BatchNormalization spatial, Dropout is_test,
old Gather/Concat), each a small model compared with onnxruntime (or, where onnxruntime has no kernel for that
opset, with onnx's reference implementation)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import edgedl

ort = pytest.importorskip("onnxruntime")


class Case:
    """One node (or a few) at ``opset``; ``inputs``: name -> shape (float32 graph inputs), ``inits``: constants."""

    def __init__(self, name, opset, nodes, inputs, inits=None, outputs=("y",), int_inputs=None, rtol=1e-5,
                 atol=1e-5, ref="ort", shapes=None):
        self.name, self.opset, self.nodes = name, opset, nodes
        self.inputs, self.inits, self.outputs = inputs, inits or {}, outputs
        self.int_inputs = int_inputs or {}
        self.rtol, self.atol = rtol, atol
        #: "ort", "onnx" (onnx.reference: onnxruntime has no kernel at this opset) or a function feeds -> outputs
        self.ref = ref
        self.shapes = shapes or {}  # output shapes that shape inference leaves out at old opsets

    def model(self) -> onnx.ModelProto:
        ins = [h.make_tensor_value_info(k, T.FLOAT, s) for k, s in self.inputs.items()]
        ins += [h.make_tensor_value_info(k, T.INT64, v.shape) for k, v in self.int_inputs.items()]
        # TopK's indices, Dropout's mask (bool from opset 10, the input's type before); the rest float
        kinds = {"i": T.INT64, "mask": T.BOOL if self.opset >= 10 else T.FLOAT}
        outs = [h.make_tensor_value_info(o, kinds.get(o, T.FLOAT), self.shapes.get(o)) for o in self.outputs]
        g = h.make_graph(self.nodes, self.name, ins, outs, [nh.from_array(np.asarray(v), k)
                                                            for k, v in self.inits.items()])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", self.opset)], ir_version=7)
        m = onnx.shape_inference.infer_shapes(m, strict_mode=True)  # (fills in the outputs' shapes)
        onnx.checker.check_model(m)
        return m

    def feeds(self, seed=0):
        rng = np.random.default_rng(seed)
        f = {k: rng.standard_normal(s).astype(np.float32) for k, s in self.inputs.items()}
        f.update(self.int_inputs)
        return f


def n(op, ins, outs=("y",), **attrs):
    return h.make_node(op, list(ins), list(outs), **attrs)


F = np.float32
I = np.int64  # noqa: E741


def _cases() -> list[Case]:
    c = []
    x4 = {"x": [1, 2, 3, 4]}
    # --- Upsample -----------------------------------------------------------------------------------------
    c.append(Case("upsample7_nearest", 7, [n("Upsample", ["x"], scales=[1.0, 1.0, 2.0, 3.0], mode="nearest")], x4))
    c.append(Case("upsample7_linear", 7, [n("Upsample", ["x"], scales=[1.0, 1.0, 2.0, 2.0], mode="linear")], x4))
    c.append(Case("upsample9_nearest", 9, [n("Upsample", ["x", "s"], mode="nearest")], x4,
                  {"s": np.array([1, 1, 2.5, 1.5], F)}))
    c.append(Case("upsample9_linear", 9, [n("Upsample", ["x", "s"], mode="linear")], x4,
                  {"s": np.array([1, 1, 2, 3], F)}))
    # --- Resize -------------------------------------------------------------------------------------------
    c.append(Case("resize10_nearest_up", 10, [n("Resize", ["x", "s"], mode="nearest")], x4,
                  {"s": np.array([1, 1, 2, 1.5], F)}))
    c.append(Case("resize10_nearest_down", 10, [n("Resize", ["x", "s"], mode="nearest")], {"x": [1, 2, 7, 9]},
                  {"s": np.array([1, 1, 0.5, 0.4], F)}))
    c.append(Case("resize10_linear", 10, [n("Resize", ["x", "s"], mode="linear")], x4,
                  {"s": np.array([1, 1, 2, 1.5], F)}))
    for ctm in ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "tf_half_pixel_for_nn"]:
        mode = "nearest" if ctm == "tf_half_pixel_for_nn" else "linear"
        # (scales that give whole output lengths: see test_align_corners_with_a_fractional_output_length)
        c.append(Case(f"resize11_scales_{mode}_{ctm}", 11,
                      [n("Resize", ["x", "roi", "s"], mode=mode, coordinate_transformation_mode=ctm)], x4,
                      {"roi": np.array([], F), "s": np.array([1, 1, 2, 1.5], F)}))
    c.append(Case("resize11_sizes_cubic", 11, [n("Resize", ["x", "roi", "s", "sz"], mode="cubic")], x4,
                  {"roi": np.array([], F), "s": np.array([], F), "sz": np.array([1, 2, 5, 7], I)}))
    c.append(Case("resize11_cubic_exclude_outside", 11,
                  [n("Resize", ["x", "roi", "s"], mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1)], x4,
                  {"roi": np.array([], F), "s": np.array([1, 1, 2, 0.75], F)}))
    for nm in ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]:
        c.append(Case(f"resize11_nearest_{nm}", 11, [n("Resize", ["x", "roi", "s"], mode="nearest", nearest_mode=nm)],
                      x4, {"roi": np.array([], F), "s": np.array([1, 1, 2.5, 1.75], F)}))
    c.append(Case("resize11_tf_crop_and_resize_roi", 11,
                  [n("Resize", ["x", "roi", "s", "sz"], mode="linear",
                     coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-1.0)],
                  {"x": [1, 1, 5, 6]},
                  {"roi": np.array([0, 0, 0.2, 0.1, 1, 1, 0.9, 1.2], F), "s": np.array([], F),
                   "sz": np.array([1, 1, 4, 5], I)}))
    c.append(Case("resize11_pytorch_half_pixel_to_one", 11,
                  [n("Resize", ["x", "roi", "s", "sz"], mode="linear",
                     coordinate_transformation_mode="pytorch_half_pixel")],
                  x4, {"roi": np.array([], F), "s": np.array([], F), "sz": np.array([1, 2, 1, 3], I)}))
    c.append(Case("resize11_tf_crop_and_resize_scales", 11,
                  [n("Resize", ["x", "roi", "s"], mode="linear", coordinate_transformation_mode="tf_crop_and_resize")],
                  {"x": [1, 1, 5, 6]}, {"roi": np.array([0, 0, 0.1, 0.2, 1, 1, 0.8, 0.9], F),
                                        "s": np.array([1, 1, 2, 1.5], F)}))
    c.append(Case("resize13_optional_roi_scales", 13, [n("Resize", ["x", "", "", "sz"], mode="linear")], x4,
                  {"sz": np.array([1, 2, 6, 3], I)}))
    c.append(Case("resize13_scales_no_roi", 13, [n("Resize", ["x", "", "s"], mode="nearest")], x4,
                  {"s": np.array([1, 1, 3, 0.5], F)}))
    c.append(Case("resize18_axes_sizes_keep_aspect", 18,
                  [n("Resize", ["x", "", "", "sz"], mode="linear", axes=[2, 3], keep_aspect_ratio_policy="not_larger")],
                  x4, {"sz": np.array([7, 5], I)}))
    c.append(Case("resize18_antialias_cubic_down", 18,
                  [n("Resize", ["x", "", "s"], mode="cubic", antialias=1)], {"x": [1, 2, 9, 8]},
                  {"s": np.array([1, 1, 0.5, 0.6], F)}))
    c.append(Case("resize18_antialias_linear_down", 18,
                  [n("Resize", ["x", "", "s"], mode="linear", antialias=1)], {"x": [1, 2, 9, 8]},
                  {"s": np.array([1, 1, 0.4, 0.75], F)}))
    c.append(Case("resize19_half_pixel_symmetric", 19,
                  [n("Resize", ["x", "", "s"], mode="linear", coordinate_transformation_mode="half_pixel_symmetric")],
                  x4, {"s": np.array([1, 1, 1.7, 0.6], F)}))
    # --- Split --------------------------------------------------------------------------------------------
    c.append(Case("split2_attr", 2, [n("Split", ["x"], ["a", "b"], axis=3, split=[1, 3])], x4, outputs=("a", "b")))
    c.append(Case("split11_attr_negative_axis", 11, [n("Split", ["x"], ["a", "b", "c"], axis=-1, split=[2, 1, 1])],
                  x4, outputs=("a", "b", "c")))
    c.append(Case("split11_equal", 11, [n("Split", ["x"], ["a", "b"], axis=1)], x4, outputs=("a", "b")))
    c.append(Case("split13_input", 13, [n("Split", ["x", "sp"], ["a", "b"], axis=2)], x4,
                  {"sp": np.array([2, 1], I)}, outputs=("a", "b")))
    c.append(Case("split18_num_outputs", 18, [n("Split", ["x"], ["a", "b", "c"], axis=3, num_outputs=3)], x4,
                  outputs=("a", "b", "c")))
    # --- Slice --------------------------------------------------------------------------------------------
    c.append(Case("slice1_attrs", 1, [n("Slice", ["x"], starts=[1, -3], ends=[3, 1000], axes=[2, 3])], x4))
    c.append(Case("slice9_attrs_no_axes", 9, [n("Slice", ["x"], starts=[0, 1, 1], ends=[1, 2, -1])], x4))
    c.append(Case("slice10_inputs", 10, [n("Slice", ["x", "st", "en", "ax", "sp"])], x4,
                  {"st": np.array([3, -1], I), "en": np.array([0, -1000], I), "ax": np.array([3, 2], I),
                   "sp": np.array([-2, -1], I)}))
    c.append(Case("slice13_inputs", 13, [n("Slice", ["x", "st", "en"])], x4,
                  {"st": np.array([0, 1], I), "en": np.array([1, 2], I)}))
    # --- Clip ---------------------------------------------------------------------------------------------
    c.append(Case("clip6_attrs", 6, [n("Clip", ["x"], min=-0.5, max=0.7)], x4))
    c.append(Case("clip6_default_bounds", 6, [n("Clip", ["x"], max=0.3)], x4))
    c.append(Case("clip11_inputs", 11, [n("Clip", ["x", "lo", "hi"])], x4,
                  {"lo": np.array(-0.2, F), "hi": np.array(0.4, F)}))
    c.append(Case("clip11_min_only", 11, [n("Clip", ["x", "lo"])], x4, {"lo": np.array(0.1, F)}))
    c.append(Case("clip13_max_only", 13, [n("Clip", ["x", "", "hi"])], x4, {"hi": np.array(0.1, F)}))
    # --- reductions ---------------------------------------------------------------------------------------
    c.append(Case("reducemean11_axes_attr", 11, [n("ReduceMean", ["x"], axes=[1, -1], keepdims=0)], x4))
    c.append(Case("reducemean13_axes_attr_keepdims", 13, [n("ReduceMean", ["x"], axes=[2])], x4))
    c.append(Case("reducemean13_all", 13, [n("ReduceMean", ["x"], keepdims=0)], x4))
    c.append(Case("reducemean18_axes_input", 18, [n("ReduceMean", ["x", "ax"], keepdims=1)], x4,
                  {"ax": np.array([0, 3], I)}))
    c.append(Case("reducemean18_noop", 18, [n("ReduceMean", ["x", "ax"], noop_with_empty_axes=1)], x4,
                  {"ax": np.array([], I)}))
    c.append(Case("reducesum11_axes_attr", 11, [n("ReduceSum", ["x"], axes=[0, 2], keepdims=1)], x4))
    c.append(Case("reducesum13_axes_input", 13, [n("ReduceSum", ["x", "ax"], keepdims=0)], x4,
                  {"ax": np.array([-1], I)}))
    c.append(Case("reducesum13_no_axes", 13, [n("ReduceSum", ["x"])], x4))
    c.append(Case("reducemax12_axes_attr", 12, [n("ReduceMax", ["x"], axes=[1], keepdims=0)], x4))
    # --- Squeeze / Unsqueeze ------------------------------------------------------------------------------
    c.append(Case("squeeze11_axes_attr", 11, [n("Squeeze", ["x"], axes=[0, -2])], {"x": [1, 3, 1, 4]}))
    c.append(Case("squeeze9_no_axes", 9, [n("Squeeze", ["x"])], {"x": [1, 3, 1, 4]}))
    c.append(Case("squeeze13_axes_input", 13, [n("Squeeze", ["x", "ax"])], {"x": [1, 3, 1, 4]},
                  {"ax": np.array([2], I)}))
    c.append(Case("unsqueeze9_axes_attr", 9, [n("Unsqueeze", ["x"], axes=[0, 3])], {"x": [3, 4]}))
    c.append(Case("unsqueeze11_negative_axes", 11, [n("Unsqueeze", ["x"], axes=[-1, 0])], {"x": [3, 4]}))
    c.append(Case("unsqueeze13_axes_input", 13, [n("Unsqueeze", ["x", "ax"])], {"x": [3, 4]},
                  {"ax": np.array([1, -1], I)}))
    # --- Pad ----------------------------------------------------------------------------------------------
    c.append(Case("pad2_constant_attrs", 2, [n("Pad", ["x"], pads=[0, 0, 1, 2, 0, 1, 0, 1], value=1.5)], x4))
    c.append(Case("pad2_reflect", 2, [n("Pad", ["x"], pads=[0, 0, 2, 1, 0, 0, 1, 2], mode="reflect")], x4))
    c.append(Case("pad2_edge", 2, [n("Pad", ["x"], pads=[0, 0, 1, 1, 0, 0, 2, 0], mode="edge")], x4))
    c.append(Case("pad11_inputs_negative", 11, [n("Pad", ["x", "p", "v"])], x4,
                  {"p": np.array([0, 0, 1, -1, 0, 0, -1, 2], I), "v": np.array(-2.0, F)}))
    c.append(Case("pad18_axes", 18, [n("Pad", ["x", "p", "", "ax"], mode="reflect")], x4,
                  {"p": np.array([1, 2, 1, 1], I), "ax": np.array([2, 3], I)}))
    # --- BatchNormalization / Dropout ---------------------------------------------------------------------
    bn = {"sc": np.array([0.5, 2.0], F), "b": np.array([0.1, -0.3], F), "m": np.array([0.2, -0.1], F),
          "v": np.array([1.5, 0.3], F)}
    c.append(Case("batchnorm7_spatial", 7, [n("BatchNormalization", ["x", "sc", "b", "m", "v"], spatial=1,
                                            epsilon=1e-3)], x4, bn))
    bn0 = {k: np.abs(np.random.default_rng(3).standard_normal((2, 3, 4))).astype(F) + (0.5 if k == "v" else 0)
           for k in ("sc", "b", "m", "v")}
    c.append(Case("batchnorm7_per_activation", 7, [n("BatchNormalization", ["x", "sc", "b", "m", "v"], spatial=0)],
                  x4, bn0))
    c.append(Case("batchnorm9", 9, [n("BatchNormalization", ["x", "sc", "b", "m", "v"])], x4, bn))
    c.append(Case("batchnorm6_is_test", 6, [n("BatchNormalization", ["x", "sc", "b", "m", "v"], is_test=1)], x4, bn,
                  ref="onnx"))
    c.append(Case("dropout6_is_test", 6, [n("Dropout", ["x"], ["d"], is_test=1, ratio=0.3), n("Relu", ["d"])], x4))
    c.append(Case("dropout7_with_mask", 7, [n("Dropout", ["x"], ["d", "mask"], ratio=0.4), n("Relu", ["d"])], x4))
    c.append(Case("dropout10", 10, [n("Dropout", ["x"], ["d"], ratio=0.4), n("Relu", ["d"])], x4))
    c.append(Case("dropout12_ratio_input", 12, [n("Dropout", ["x", "r"], ["d"]), n("Relu", ["d"])], x4,
                  {"r": np.array(0.5, F)}))
    # --- TopK ---------------------------------------------------------------------------------------------
    c.append(Case("topk1_k_attr", 1, [n("TopK", ["x"], ["v", "i"], k=2)], x4, outputs=("v", "i")))
    c.append(Case("topk9_k_attr_axis", 9, [n("TopK", ["x"], ["v", "i"], k=2, axis=1)], x4, outputs=("v", "i")))
    c.append(Case("topk10_k_input", 10, [n("TopK", ["x", "k"], ["v", "i"], axis=-1)], x4, {"k": np.array([3], I)},
                  outputs=("v", "i")))
    c.append(Case("topk11_smallest", 11, [n("TopK", ["x", "k"], ["v", "i"], axis=2, largest=0)], x4,
                  {"k": np.array([2], I)}, outputs=("v", "i")))
    # --- Gather / Concat ----------------------------------------------------------------------------------
    c.append(Case("gather1", 1, [n("Gather", ["x", "ix"], axis=3)], x4, {"ix": np.array([[3, 0], [1, 1]], I)}))
    c.append(Case("gather9_axis0", 9, [n("Gather", ["x", "ix"])], {"x": [3, 4]}, {"ix": np.array([2, 0], I)}))
    c.append(Case("gather11_negative_indices", 11, [n("Gather", ["x", "ix"], axis=-1)], x4,
                  {"ix": np.array([-1, 0, -4], I)}))
    # (Concat-1: axis optional, 1 by default; neither onnxruntime nor onnx's reference takes it without)
    c.append(Case("concat1_default_axis", 1, [n("Concat", ["x", "z"])], {"x": [2, 3], "z": [2, 2]},
                  ref=lambda f: [np.concatenate([f["x"], f["z"]], axis=1)], shapes={"y": [2, 5]}))
    c.append(Case("concat4", 4, [n("Concat", ["x", "z"], axis=0)], {"x": [2, 3], "z": [1, 3]}))
    c.append(Case("concat7", 7, [n("Concat", ["x", "z"], axis=1)], {"x": [2, 3], "z": [2, 2]}))
    c.append(Case("concat11_negative_axis", 11, [n("Concat", ["x", "z"], axis=-2)], {"x": [2, 3], "z": [1, 3]}))
    # a classic opset-9 exporter chain: Shape -> Gather -> Unsqueeze -> Concat -> Reshape, Upsample by a Constant
    c.append(Case("opset9_exporter_chain", 9, [
        n("Shape", ["x"], ["sh"]), n("Gather", ["sh", "i0"], ["b"], axis=0), n("Unsqueeze", ["b"], ["bu"], axes=[0]),
        n("Concat", ["bu", "m1"], ["shape"], axis=0), n("Reshape", ["x", "shape"], ["flat"]),
        n("Constant", [], ["us"], value=nh.from_array(np.array([1, 1, 2, 2], F))),
        n("Upsample", ["x", "us"], ["up"], mode="nearest"), n("ReduceMean", ["up"], ["rm"], axes=[2, 3], keepdims=0),
        n("Concat", ["flat", "rm"], ["y"], axis=1)], x4, {"i0": np.array(0, I), "m1": np.array([-1], I)},
        shapes={"y": [1, 26]}))
    return c


CASES = {case.name: case for case in _cases()}


def _reference(case: Case, model: onnx.ModelProto, feeds):
    if callable(case.ref):
        return case.ref(feeds)
    if case.ref == "onnx":
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(model).run(None, feeds)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("name", list(CASES))
def test_old_opset_form_matches_the_reference(name):
    case = CASES[name]
    model = case.model()
    m = edgedl.load(model.SerializeToString())
    for seed in range(2):
        feeds = case.feeds(seed)
        want = _reference(case, model, feeds)
        got = m.run(feeds)
        for o, w in zip(case.outputs, want):
            g = got[o]
            w = np.asarray(w)
            assert g.shape == w.shape, (o, g.shape, w.shape)
            assert g.dtype == w.dtype or (w.dtype == np.bool_ and g.dtype == np.bool_), (o, g.dtype, w.dtype)
            np.testing.assert_allclose(g, w, rtol=case.rtol, atol=case.atol, err_msg=f"{name}: {o}")


def test_onnxruntime_is_the_reference_wherever_it_has_the_kernel():
    """The cases checked with onnx's reference instead are exactly those onnxruntime cannot load."""
    for case in CASES.values():
        if case.ref != "onnx":
            continue
        so = ort.SessionOptions()
        so.log_severity_level = 4
        with pytest.raises(Exception):  # noqa: B017  (onnxruntime raises its own Fail / NotImplemented types)
            ort.InferenceSession(case.model().SerializeToString(), so, providers=["CPUExecutionProvider"])


def test_align_corners_with_a_fractional_output_length_follows_the_onnx_tests_not_onnxruntime():
    """Resize with scales 1.5 on a length of 3 (output_width 4.5, 4 pixels): the ONNX spec's reference and its
    backend tests (test_resize_downsample_scales_linear_align_corners) divide by output_width - 1 = 3.5;
    onnxruntime divides by the integer length - 1 = 3 (it fails that backend test). edgedl follows ONNX."""
    case = Case("align_corners_fractional", 11, [n("Resize", ["x", "roi", "s"], mode="linear",
                                                   coordinate_transformation_mode="align_corners")],
                {"x": [1, 1, 3, 4]}, {"roi": np.array([], F), "s": np.array([1, 1, 1.5, 2], F)}, ref="onnx")
    model = case.model()
    feeds = case.feeds()
    got = edgedl.load(model.SerializeToString()).run(feeds)["y"]
    np.testing.assert_allclose(got, _reference(case, model, feeds)[0], rtol=1e-5, atol=1e-6)
    onnxruntime_result = ort.InferenceSession(model.SerializeToString(),
                                              providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(got - onnxruntime_result).max() > 1e-2  # (if onnxruntime changes, this note is stale)


@pytest.mark.parametrize("opset", [7, 10, 12])
def test_dropout_mask_is_all_ones_in_inference(opset):
    """In inference nothing is dropped, so edgedl's mask is all ones (True; 1.0 in Dropout-7's float mask): the
    meaning opset 12 spells out and what onnx's reference gives at every opset. onnxruntime's Dropout 7-11
    kernels write zeros (False) instead, from 12 on ones: an inference-time mask nobody reads, noted, not followed."""
    ratio = {"ratio": 0.4} if opset < 12 else {}
    case = Case(f"dropout{opset}_mask", opset, [n("Dropout", ["x"], ["y", "mask"], **ratio)], {"x": [1, 2, 3, 4]},
                outputs=("y", "mask"), shapes={"mask": [1, 2, 3, 4]})
    model = case.model()
    feeds = case.feeds()
    got = edgedl.load(model.SerializeToString()).run(feeds)
    want = _reference(case, model, feeds)
    np.testing.assert_array_equal(got["y"], want[0])
    assert got["mask"].dtype == (np.float32 if opset < 10 else np.bool_) and np.all(got["mask"] == 1)
    assert bool(np.all(want[1] == 1)) == (opset >= 12)  # (if onnxruntime changes, this note is stale)
