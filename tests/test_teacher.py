"""model.teacher: onnxruntime runtime on small ONNX models built inside the tests."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import model.teacher as teacher_mod
from model.teacher import Teacher, choose_providers, default_teacher_path, network_size, resize_bilinear
from tasks.errors import TeacherError
from tasks.provenance import sha256_file
from tests.helpers import _TinyConv, add_metadata, export_torch


# ---------------------------------------------------------------------------------------------------
# Model builders
class _Ramp(torch.nn.Module):
    """Output = column index + 1 at the network resolution, whatever the pixels: exposes the resizing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x[:, 0]).cumsum(-1)


def graph_model(path: Path, nodes, inputs, outputs, initializers=()) -> Path:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def channel_mean_model(path: Path, elem=TensorProto.FLOAT, in_name="pixel_values", out_name="predicted_depth"):
    """[B,3,H,W] -> mean over channels [B,H,W]: the output is a known function of the normalised input."""
    node = helper.make_node("ReduceMean", [in_name], [out_name], axes=[1], keepdims=0)
    return graph_model(
        path, [node], [helper.make_tensor_value_info(in_name, elem, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info(out_name, elem, ["b", "h", "w"])],
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("teachers")
    return {
        "conv": export_torch(_TinyConv(), d / "conv.onnx"),
        "ramp": export_torch(_Ramp(), d / "ramp.onnx", metadata={"monolidar.short_side": 28}),
        "mean": channel_mean_model(d / "mean.onnx"),
        "meta": add_metadata(channel_mean_model(d / "meta.onnx"),
                             {"monolidar.output_kind": "metric", "monolidar.short_side": 140}),
    }


def images(n=2, h=30, w=50, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------
# Behaviour
def test_tiny_conv_net_shapes_and_determinism(models):
    t = Teacher(models["conv"], short_side=56)
    x = images(3, 40, 70)
    out = t.predict(x, batch_size=2)
    assert out.shape == (3, 40, 70) and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(out, t.predict(x, batch_size=2))
    np.testing.assert_allclose(t.predict(x, batch_size=1), out, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(t.predict([x[0], x[1], x[2]], batch_size=2), out)
    assert t.predict(x[0]).shape == (1, 40, 70)


def test_defaults_without_metadata(models):
    t = Teacher(models["conv"])
    assert (t.input_name, t.output_name, t.output_kind, t.short_side) == (
        "pixel_values", "predicted_depth", "disparity", 518)
    ident = t.identity()
    assert ident == {"sha256": sha256_file(models["conv"]), "path": str(models["conv"]), "output_kind": "disparity",
                     "short_side": 518, "input_name": "pixel_values", "output_name": "predicted_depth"}


def test_resize_back_is_exact(models):
    t = Teacher(models["ramp"])
    assert t.short_side == 28  # from metadata
    h, w = network_size(30, 50, 28)
    assert (h, w) == (28, 42)
    out = t.predict(images(2, 30, 50))
    # Bilinear with half-pixel centres on a ramp 1..w is the ramp evaluated at the source coordinate.
    src = np.clip((np.arange(50) + 0.5) * w / 50 - 0.5, 0, w - 1)
    np.testing.assert_allclose(out, np.broadcast_to(src + 1.0, (2, 30, 50)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("hw,side", [((375, 1242), 518), ((480, 640), 518), ((100, 33), 70), ((7, 9), 14), ((64, 64), 500)])
def test_network_size_multiples_of_14(models, hw, side):
    t = Teacher(models["mean"], short_side=side, probe=False)
    x = t.preprocess(np.zeros((1, *hw, 3), np.uint8))
    h, w = x.shape[2:]
    assert x.shape[:2] == (1, 3) and x.dtype == np.float32
    assert h % 14 == 0 and w % 14 == 0
    assert min(h, w) == t.short_side == round(side / 14) * 14
    assert abs(max(h, w) / min(h, w) - max(hw) / min(hw)) <= 14 / min(h, w)  # aspect kept to within a patch


def test_imagenet_normalisation(models):
    t = Teacher(models["mean"], short_side=14)
    rgb = np.array([200, 100, 50], np.uint8)
    out = t.predict(np.broadcast_to(rgb, (1, 20, 30, 3)).copy())
    expected = np.mean((rgb / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]))
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_metadata_honoured_and_overridden(models):
    t = Teacher(models["meta"])
    assert t.output_kind == "metric" and t.short_side == 140
    assert t.preprocess(np.zeros((1, 100, 200, 3), np.uint8)).shape == (1, 3, 140, 280)
    t2 = Teacher(models["meta"], output_kind="disparity", short_side=28)
    assert t2.output_kind == "disparity" and t2.short_side == 28


def test_provider_selection_falls_back_to_cpu(models):
    t = Teacher(models["mean"], providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert t.providers == ["CPUExecutionProvider"]
    assert choose_providers(["TensorrtExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers()[-1] == "CPUExecutionProvider"
    assert Teacher(models["mean"], threads=1).providers == ["CPUExecutionProvider"]


def test_fp16_model_accepted(tmp_path):
    t = Teacher(channel_mean_model(tmp_path / "half.onnx", elem=TensorProto.FLOAT16), short_side=14)
    assert t.input_dtype == np.float16
    x = images(1, 14, 28)
    out = t.predict(x)
    assert out.dtype == np.float32
    ref = ((x / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).mean(-1)
    np.testing.assert_allclose(out, ref, atol=2e-2)


def test_pickle_roundtrip(models):
    t = Teacher(models["conv"], short_side=28)
    t2 = pickle.loads(pickle.dumps(t))
    x = images(1, 28, 28)
    np.testing.assert_array_equal(t.predict(x), t2.predict(x))
    assert t2.identity() == t.identity()


def test_predict_rejects_bad_arrays(models):
    t = Teacher(models["mean"], short_side=14)
    with pytest.raises(ValueError):
        t.predict(np.zeros((1, 10, 10, 3), np.float32))
    with pytest.raises(ValueError):
        t.predict([np.zeros((10, 10, 3), np.uint8), np.zeros((12, 10, 3), np.uint8)])


def test_resize_bilinear_identity_and_constant():
    m = np.random.default_rng(0).random((2, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(resize_bilinear(m, 5, 7), m)
    np.testing.assert_allclose(resize_bilinear(np.full((1, 3, 4), 2.5, np.float32), 17, 9), 2.5)


# ---------------------------------------------------------------------------------------------------
# Bad models: each raises TeacherError naming the file
def test_missing_file(tmp_path):
    with pytest.raises(TeacherError, match=r"ghost\.onnx not found"):
        Teacher(tmp_path / "ghost.onnx")


def test_default_teacher_missing(monkeypatch, tmp_path, models):
    monkeypatch.setattr(teacher_mod, "DEFAULT_TEACHER", tmp_path / "weights" / "absent.onnx")
    with pytest.raises(TeacherError, match=r"absent\.onnx not found"):
        default_teacher_path()
    with pytest.raises(TeacherError, match=r"absent\.onnx"):
        Teacher()
    monkeypatch.setattr(teacher_mod, "DEFAULT_TEACHER", models["mean"])
    assert Teacher().path == models["mean"]


def test_corrupt_bytes(tmp_path):
    p = tmp_path / "corrupt.onnx"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(TeacherError, match=r"corrupt\.onnx is not a loadable ONNX file"):
        Teacher(p)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(TeacherError, match=r"empty\.onnx is empty"):
        Teacher(empty)


def test_rank3_input(tmp_path):
    p = graph_model(
        tmp_path / "rank3.onnx", [helper.make_node("Identity", ["pixel_values"], ["predicted_depth"])],
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["b", "h", "w"])],
        [helper.make_tensor_value_info("predicted_depth", TensorProto.FLOAT, ["b", "h", "w"])],
    )
    with pytest.raises(TeacherError, match=r"rank3\.onnx: input 'pixel_values' has rank 3"):
        Teacher(p)


def test_wrong_names(tmp_path, models):
    with pytest.raises(TeacherError, match=r"mean\.onnx: no input named 'image'"):
        Teacher(models["mean"], input_name="image")
    with pytest.raises(TeacherError, match=r"mean\.onnx: no output named 'depth'"):
        Teacher(models["mean"], output_name="depth")
    two = graph_model(
        tmp_path / "two_inputs.onnx", [helper.make_node("Add", ["a", "b"], ["s"]),
                                       helper.make_node("ReduceMean", ["s"], ["predicted_depth"], axes=[1], keepdims=0)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 3, "h", "w"]) for n in ("a", "b")],
        [helper.make_tensor_value_info("predicted_depth", TensorProto.FLOAT, ["b", "h", "w"])],
    )
    with pytest.raises(TeacherError, match=r"two_inputs\.onnx: 2 inputs"):
        Teacher(two)


def test_nan_output(tmp_path):
    nan = helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")])
    p = graph_model(
        tmp_path / "nan.onnx",
        [helper.make_node("ReduceMean", ["pixel_values"], ["m"], axes=[1], keepdims=0),
         helper.make_node("Mul", ["m", "nan"], ["predicted_depth"])],
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("predicted_depth", TensorProto.FLOAT, ["b", "h", "w"])], [nan],
    )
    with pytest.raises(TeacherError, match=r"nan\.onnx produced non-finite output"):
        Teacher(p)
    assert Teacher(p, probe=False).output_kind == "disparity"  # probe=False skips the check


def test_unknown_output_kind(models):
    with pytest.raises(TeacherError, match=r"mean\.onnx: output kind 'depthish'"):
        Teacher(models["mean"], output_kind="depthish")
