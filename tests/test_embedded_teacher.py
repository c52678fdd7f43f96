"""The embedded teacher: network shapes, SSI loss, deterministic training, ONNX export, the shipped model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.conventions import count_parameters
from model.embedded_teacher import DepthNetSmall, state_from_onnx, train_network
from model.evaluation import aligned_depth_metrics, ground_plane_disparity
from model.export import export_teacher_onnx
from model.losses import align_scale_shift, aligned_log_depth_error, ssi_disparity_loss
from tasks.errors import CheckpointError, TeacherError

SHIPPED = Path(__file__).resolve().parent.parent / "model" / "weights" / "monolidar_teacher_small.onnx"

torch.set_num_threads(2)


def test_network_takes_any_multiple_of_14_and_is_small():
    net = DepthNetSmall().eval()
    assert count_parameters(net) <= 5_000_000
    with torch.no_grad():
        for h, w in ((70, 98), (42, 154)):
            out = net(torch.zeros(2, 3, h, w))
            assert out.shape == (2, h, w)
            assert (out >= 0).all()  # disparity


def test_alignment_recovers_scale_and_shift_and_loss_ignores_them():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 20, 30, generator=g) + 0.1
    pred = 2.5 * target - 0.7
    torch.testing.assert_close(align_scale_shift(pred, target, torch.ones_like(target, dtype=torch.bool)), target)
    assert float(ssi_disparity_loss(pred, target)) < 1e-4
    # ... but not its sign: larger must mean nearer, so an inverted prediction is penalised.
    assert float(ssi_disparity_loss(-pred, target)) > 0.9
    noisy = torch.rand(3, 20, 30, generator=g)
    assert float(ssi_disparity_loss(noisy, target)) > 0.1
    # The mask decides which pixels count: garbage outside it does not change the loss.
    mask = torch.zeros_like(target, dtype=torch.bool)
    mask[:, :10] = True
    corrupted = torch.where(mask, pred, torch.full_like(pred, 100.0))
    assert float(ssi_disparity_loss(corrupted, target, mask)) < 1e-4


def test_log_depth_term_is_zero_for_an_affine_disparity_and_ignores_sky_and_far():
    g = torch.Generator().manual_seed(1)
    depth = 2.0 + 60.0 * torch.rand(2, 24, 32, generator=g)
    target = 1.0 / depth
    target[:, :4] = 0.0                                   # sky
    target[:, 4:6] = 1.0 / 200.0                          # beyond max_depth: not scored
    mask = torch.ones_like(target, dtype=torch.bool)
    pred = 3.0 * target + 0.2
    assert float(aligned_log_depth_error(pred, target, mask)) < 1e-4
    # Garbage where nothing is scored changes nothing; a wrong ordering where it is scored costs.
    junk = pred.clone()
    junk[:, :6] = 50.0
    assert float(aligned_log_depth_error(junk, target, mask)) < 1e-4
    wrong = pred.clone()
    wrong[:, 12:] = wrong[:, 12:].flip(-1)
    assert float(aligned_log_depth_error(wrong, target, mask)) > 0.05
    # It is part of the training loss only when asked for, and it is differentiable.
    wrong.requires_grad_(True)
    base = ssi_disparity_loss(wrong, target, mask)
    both = ssi_disparity_loss(wrong, target, mask, log_depth_weight=1.0)
    assert float(both.detach()) > float(base.detach())
    both.backward()
    assert torch.isfinite(wrong.grad).all() and wrong.grad.abs().sum() > 0


def test_state_recovered_from_onnx_reproduces_the_exported_network(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    net = DepthNetSmall()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the folding really changes the weights
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    out = tmp_path / "t.onnx"
    export_teacher_onnx(net.eval(), out, short_side=56, check_size=(42, 70))
    x = torch.randn(4, 3, 56, 84, generator=torch.Generator().manual_seed(2))
    recovered = DepthNetSmall()
    recovered.load_state_dict(state_from_onnx(out, x))
    ref = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x.numpy()})[0]
    with torch.no_grad():
        got_eval = recovered.eval()(x).numpy()
        got_train = recovered.train()(x).numpy()  # BN on batch statistics: those it was calibrated on
    scale = np.abs(ref).max()
    assert np.abs(got_eval - ref).max() / scale < 1e-4
    assert np.abs(got_train - ref).max() / scale < 1e-2
    other = tmp_path / "other.onnx"  # any other graph is refused, naming the file
    torch.onnx.export(torch.nn.Conv2d(3, 1, 3), (torch.zeros(1, 3, 8, 8),), str(other), dynamo=False)
    with pytest.raises(TeacherError, match="other.onnx: 1 Conv nodes"):
        state_from_onnx(other, x)


def test_aligned_metrics_and_ground_plane_baseline():
    h, w = 60, 80
    disp = ground_plane_disparity(h, w)
    assert disp.shape == (h, w) and (disp[: h // 2] == disp[0, 0]).all() and disp[-1, 0] > disp[h // 2 + 1, 0]
    # A depth map that IS an affine disparity of the guess (a flat ground) is recovered exactly.
    gt = np.where(np.arange(h)[:, None] > h // 2 + 1, 1.0 / (0.3 * disp + 0.001), 0.0)
    m = aligned_depth_metrics(disp, gt, max_depth=1e6)
    assert m["abs_rel"] < 1e-6 and m["delta1"] == 1.0
    with pytest.raises(ValueError, match="valid"):
        aligned_depth_metrics(disp, np.zeros((h, w)))


def _toy_groups(seed: int = 0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 255, (4, 28, 56, 3), dtype=np.uint8)
    disp = rng.random((4, 28, 56)).astype(np.float32)
    return [(rgb, disp)]


def test_training_is_deterministic_without_a_time_budget():
    a, info = train_network(_toy_groups(), steps=3, seed=5, batch=2, crop_width=42, threads=1, log=lambda m: None)
    b, _ = train_network(_toy_groups(), steps=3, seed=5, batch=2, crop_width=42, threads=1, log=lambda m: None)
    assert info["steps"] == 3
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_export_writes_da_v2_convention_with_metadata(tmp_path):
    import onnx

    from model.teacher import Teacher

    out = tmp_path / "t.onnx"
    info = export_teacher_onnx(DepthNetSmall(), out, short_side=56, check_size=(42, 70))
    assert info["ort_vs_torch_rel_err"] < 1e-3
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["monolidar.output_kind"] == "disparity" and meta["monolidar.short_side"] == "56"
    assert [i.name for i in proto.graph.input] == ["pixel_values"]
    assert [o.name for o in proto.graph.output] == ["predicted_depth"]
    teacher = Teacher(out, threads=1)
    assert teacher.short_side == 56 and teacher.output_kind == "disparity"
    pred = teacher.predict(np.zeros((1, 50, 90, 3), np.uint8))
    assert pred.shape == (1, 50, 90) and np.isfinite(pred).all()


def test_cli_rejects_bad_arguments(capsys):
    from flows.cli import main

    assert main(["train-teacher", "--scenes", "0"]) == 2
    assert "--scenes must be >= 1" in capsys.readouterr().err
    assert main(["train-teacher", "--short-side", "200"]) == 2
    assert "multiple of 14" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- shipped model
def test_shipped_model_is_small_and_loads_through_teacher():
    import onnx
    from onnx import numpy_helper

    from model.teacher import Teacher, default_teacher_path

    assert default_teacher_path() == SHIPPED
    assert SHIPPED.stat().st_size <= 10_000_000
    proto = onnx.load(str(SHIPPED))
    n_params = sum(numpy_helper.to_array(t).size for t in proto.graph.initializer)
    assert n_params <= 5_000_000
    teacher = Teacher(threads=2)
    assert teacher.output_kind == "disparity" and teacher.short_side % 14 == 0
    rgb = np.random.default_rng(0).integers(0, 255, (2, 120, 160, 3), dtype=np.uint8)
    pred = teacher.predict(rgb)
    assert pred.shape == (2, 120, 160) and pred.dtype == np.float32 and np.isfinite(pred).all()


def _kitti_scores(kitti_gt_dir):
    from PIL import Image

    from model.teacher import Teacher

    teacher = Teacher(threads=2)
    ours, guess = [], []
    for rgb_path in sorted((kitti_gt_dir / "rgb").glob("*.png")):
        rgb = np.asarray(Image.open(rgb_path).convert("RGB"))
        gt = np.asarray(Image.open(kitti_gt_dir / "depth" / rgb_path.name), np.float64) / 256.0
        gt[gt > 80] = 0
        ours.append(aligned_depth_metrics(teacher.predict(rgb[None])[0], gt))
        guess.append(aligned_depth_metrics(ground_plane_disparity(*gt.shape), gt))
    assert len(ours) == 2
    return ours, guess


def test_shipped_model_outputs_disparity_on_kitti(kitti_gt_dir):
    ours, _ = _kitti_scores(kitti_gt_dir)
    for m in ours:
        assert m["scale"] > 0  # larger output = nearer (disparity), not inverted
        assert m["delta1"] > 0.6 and m["abs_rel"] < 0.3


def test_shipped_model_beats_ground_plane_guess_on_kitti(kitti_gt_dir):
    # Measured for v4 (model/weights/MODEL_CARD.md): AbsRel 0.120 vs the guess's 0.147.
    ours, guess = _kitti_scores(kitti_gt_dir)
    assert np.mean([m["abs_rel"] for m in ours]) < np.mean([m["abs_rel"] for m in guess])


@pytest.mark.slow
def test_train_teacher_flow_end_to_end(tmp_path, prefect_harness):
    from flows.train_teacher import train_teacher
    from model.teacher import Teacher

    out = tmp_path / "teacher.onnx"
    summary = train_teacher(out, n_scenes=4, epochs=1, seed=3, minutes=None, short_side=56,
                            cache_dir=tmp_path / "cache", batch=2)
    assert out.is_file() and summary["monolidar.train_steps"] == "2"
    renders = sorted((tmp_path / "cache").rglob("*.npz"))
    assert len(renders) == 4
    # A retrain reuses the cached renders (same files, untouched).
    mtimes = [p.stat().st_mtime_ns for p in renders]
    train_teacher(out, n_scenes=4, epochs=1, seed=3, minutes=None, short_side=56, cache_dir=tmp_path / "cache",
                  batch=2)
    assert [p.stat().st_mtime_ns for p in renders] == mtimes
    assert Teacher(out).predict(np.zeros((1, 60, 80, 3), np.uint8)).shape == (1, 60, 80)


def test_train_teacher_never_replaces_the_shipped_model_by_default(tmp_path, capsys):
    from flows.cli import main
    from flows.train_teacher import DEFAULT_OUT, resolve_out
    from tasks.errors import InputError
    from tasks.provenance import sha256_file

    before = sha256_file(SHIPPED)
    assert resolve_out(None, False) == DEFAULT_OUT and DEFAULT_OUT.resolve() != SHIPPED.resolve()
    assert resolve_out(SHIPPED, True) == SHIPPED  # only when asked explicitly
    with pytest.raises(InputError, match="refusing to replace the shipped teacher"):
        resolve_out(SHIPPED, False)
    assert main(["train-teacher", "--out", str(SHIPPED), "--scenes", "1"]) == 2
    err = capsys.readouterr().err
    assert "refusing to replace the shipped teacher" in err and "--replace-shipped" in err
    assert sha256_file(SHIPPED) == before


class _Unlisted:  # any class torch's weights-only unpickler does not allow
    pass


def test_teacher_checkpoints_are_weights_only(tmp_path, capsys):
    from flows.cli import main
    from model.checkpoint import load_teacher_checkpoint, save_teacher_checkpoint
    from model.embedded_teacher import initial_state

    net = DepthNetSmall()
    good = save_teacher_checkpoint(tmp_path / "good.pt", net.state_dict(), {"steps": 3, "loss_curve": [0.5, 0.4]})
    state = initial_state(good, [])
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert load_teacher_checkpoint(good)["info"]["loss_curve"] == [0.5, 0.4]
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": net.state_dict(), "info": {"made_by": _Unlisted()}}, evil)
    with pytest.raises(CheckpointError, match="evil.pt: refused: this checkpoint needs pickle"):
        initial_state(evil, [])
    assert main(["train-teacher", "--init", str(evil), "--out", str(tmp_path / "t.onnx"), "--scenes", "1"]) == 2
    assert "needs pickle" in capsys.readouterr().err
