"""Training flows end to end on tiny data: pretrain (exact resume) -> finetune (+SSI, teacher cache) ->
evaluate, the CLI commands, and bad-input errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flows.cli import main
from model.checkpoint import load_checkpoint
from tasks.errors import CheckpointError

H, W = 48, 96
CROP = dict(crop_h=32, crop_w=64)
FAST = dict(batch_size=2, threads=1, progress=False, warmup=1)
KITTI_K = np.array([[707.0493, 0, 604.0814], [0, 707.0493, 180.5066], [0, 0, 1]], dtype=np.float32)


def _synthetic_sample(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    depth = (4.0 + 60.0 * (1.0 - yy / H) ** 2 + 3.0 * np.sin(xx / 7.0 + seed)).astype(np.float32)
    depth[: H // 6] = 0.0  # sky
    rgb = np.clip(np.stack([depth * 3, 255 - depth * 3, (xx * 2) % 255], -1) + rng.normal(0, 8, (H, W, 3)), 0, 255)
    sparse = np.zeros_like(depth)
    sparse[H // 4::3, ::2] = depth[H // 4::3, ::2]
    return {"rgb": rgb.astype(np.uint8), "depth": depth, "sparse": np.round(sparse * 256).astype(np.uint16),
            "teacher_output": np.where(depth > 0, 1.0 / np.maximum(depth, 1e-3), 0).astype(np.float16),
            "K": np.array([[80, 0, W / 2], [0, 80, H / 2], [0, 0, 1]], np.float32),
            "lidar_pose": np.eye(4, dtype=np.float32)}


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from storage.store import DatasetStore

    path = tmp_path_factory.mktemp("store") / "ds"
    store = DatasetStore.create(path, height=H, width=W, shard_size=2, config={"test": True},
                                teacher={"sha256": "synthetic"}, sensor="test", code_version="test")
    store.ensure_shards(2)
    for shard in range(2):
        samples = [_synthetic_sample(shard * 2 + r) for r in range(2)]
        arrays = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
        rows = [{"sample_id": f"s{shard}{r}", "source_uri": f"mem://{shard}/{r}", "content_hash": f"h{shard}{r}",
                 "seed": r, "status": "ok"} for r in range(2)]
        store.write_shard(shard, arrays, rows)
    store.finalize({"samples": 4})
    return path


@pytest.fixture(scope="module")
def kitti_dir(tmp_path_factory, kitti_gt_dir):
    from storage.kitti import kitti_dc_from_gt_dir

    out = tmp_path_factory.mktemp("kitti") / "val"
    return kitti_dc_from_gt_dir(kitti_gt_dir / "rgb", kitti_gt_dir / "depth", out, KITTI_K, crop=True, n_lines=64, seed=0)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A tiny disparity 'teacher' ONNX (conv net) with the DA-V2 I/O names."""

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

        def forward(self, pixel_values):
            return torch.relu(self.conv(pixel_values))[:, 0] + 0.1

    path = tmp_path_factory.mktemp("teacher") / "tiny.onnx"
    torch.onnx.export(Tiny(), (torch.rand(1, 3, 28, 28),), str(path), input_names=["pixel_values"],
                      output_names=["predicted_depth"], dynamo=False,
                      dynamic_axes={"pixel_values": {0: "b", 2: "h", 3: "w"}, "predicted_depth": {0: "b", 1: "h", 2: "w"}})
    return path


@pytest.fixture(scope="module")
def stage1(tiny_store, tmp_path_factory, prefect_harness):
    from flows.train import pretrain_flow

    out = tmp_path_factory.mktemp("stage1")
    summary = pretrain_flow(store=str(tiny_store), out=str(out), steps=4, ckpt_every=2, **CROP, **FAST)
    return out, summary


def _states_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not _states_equal(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def test_pretrain_writes_checkpoints_and_log(stage1):
    out, summary = stage1
    assert summary["finished"] and summary["step"] == 4
    ckpt = load_checkpoint(out / "final.pt")
    assert ckpt["step"] == 4 and ckpt["config"]["stage"] == 1 and ckpt["ema"]["updates"] == 4
    lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 4 and np.isfinite(lines[-1]["loss"])


def test_pretrain_exact_resume(stage1, tiny_store, tmp_path):
    from flows.train import pretrain_flow

    out_a, _ = stage1
    part = pretrain_flow(store=str(tiny_store), out=str(tmp_path), steps=4, ckpt_every=2, stop_at=2, **CROP, **FAST)
    assert not part["finished"] and part["step"] == 2 and not (tmp_path / "final.pt").exists()
    rest = pretrain_flow(store=str(tiny_store), out=str(tmp_path), steps=4, ckpt_every=2, **CROP, **FAST)
    assert rest["resumed_from"] == 2 and rest["finished"]
    a, b = load_checkpoint(out_a / "final.pt"), load_checkpoint(tmp_path / "final.pt")
    for key in ("model", "ema", "optimizer"):
        assert _states_equal(a[key], b[key]), key
    assert torch.equal(a["rng"], b["rng"])


def test_finetune_and_evaluate_end_to_end(stage1, kitti_dir, tiny_teacher, tmp_path):
    from flows.train import compute_teacher_outputs, evaluate_flow, finetune_flow

    from storage.cache import ArrayCache, default_cache_dir

    s1, _ = stage1
    out = tmp_path / "stage2"
    summary = finetune_flow(kitti=str(kitti_dir), out=str(out), init=str(s1 / "final.pt"), teacher=str(tiny_teacher),
                            ssi_weight=0.5, grad_weight=0.5, steps=3, crop_h=64, crop_w=128, **FAST)
    assert summary["finished"] and [p["step"] for p in summary["loss_curve"]] == [3]
    # Teacher outputs live in the build's ArrayCache (beside the run dir), one entry per frame, reused.
    cache_dir = default_cache_dir(out)
    again = compute_teacher_outputs.fn(str(kitti_dir), str(tiny_teacher), str(cache_dir))
    assert again["computed"] == 0 and again["cached"] == 2
    raw = ArrayCache(cache_dir).get("teacher", again["keys"][0])
    assert raw.shape == (352, 1216) and np.isfinite(raw).all()
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert "ssi" in log[-1] and "sup" in log[-1]
    # DMD3C's SSI variant (median/MAD in random crops) trains through the same flow.
    mad = finetune_flow(kitti=str(kitti_dir), out=str(tmp_path / "mad"), init=str(s1 / "final.pt"),
                        teacher=str(tiny_teacher), ssi_weight=0.5, ssi_variant="median_mad", steps=2, crop_h=64,
                        crop_w=128, **FAST)
    assert mad["finished"] and mad["last_loss"]["ssi"] > 0

    pred_dir = tmp_path / "pred"
    report = evaluate_flow(kitti=str(kitti_dir), ckpt=str(out / "final.pt"), out=str(pred_dir), exclude_input=True,
                           threads=1, progress=False)
    for k in ("rmse_mm", "mae_mm", "irmse_1km", "imae_1km", "absrel", "delta1"):
        assert np.isfinite(report[k]) and np.isfinite(report["ipbasic"][k])
    assert report["n_images"] == 2 and len(report["per_image"]) == 2
    pngs = sorted(p for p in pred_dir.glob("*.png"))
    assert len(pngs) == 2
    from PIL import Image

    png = np.asarray(Image.open(pngs[0]))
    assert png.dtype == np.uint16 and png.shape == (352, 1216) and (png > 0).all()
    assert json.loads((pred_dir / "metrics.json").read_text())["n_images"] == 2


def test_finetune_init_from_other_architecture_fails(stage1, kitti_dir, tmp_path):
    from flows.train import finetune_flow

    s1, _ = stage1
    with pytest.raises(CheckpointError, match="final.pt"):
        finetune_flow(kitti=str(kitti_dir), out=str(tmp_path), init=str(s1 / "final.pt"), model="msdc_base",
                      ssi_weight=0.0, steps=1, **CROP, **FAST)


def test_cli_evaluate_ipbasic_json(kitti_dir, capsys, prefect_harness):
    assert main(["evaluate", "--kitti", str(kitti_dir), "--baseline", "ipbasic", "--json", "--exclude-input"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "ipbasic" and report["n_images"] == 2
    for k in ("rmse_mm", "mae_mm", "irmse_1km", "imae_1km", "absrel", "delta1"):
        assert np.isfinite(report[k])
    assert 200 < report["mae_mm"] < 5000 and report["delta1"] > 0.7


def test_cli_pretrain_and_export(tiny_store, tmp_path, capsys, prefect_harness):
    out = tmp_path / "run"
    assert main(["pretrain", "--store", str(tiny_store), "--out", str(out), "--steps", "2", "--crop", "32", "64",
                 "--batch-size", "1", "--threads", "1", "--no-progress"]) == 0
    assert "step 2 (finished)" in capsys.readouterr().out
    onnx_path = tmp_path / "net.onnx"
    assert main(["export-onnx", "--ckpt", str(out / "final.pt"), "--out", str(onnx_path)]) == 0
    assert onnx_path.is_file() and "max |diff|" in capsys.readouterr().err


def test_cli_bad_inputs_exit_2(tmp_path, tiny_store, kitti_dir, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    cases = [
        (["evaluate", "--kitti", str(tmp_path / "nowhere"), "--baseline", "ipbasic"], "nowhere"),
        (["evaluate", "--kitti", str(tmp_path), "--baseline", "ipbasic"], str(tmp_path)),
        (["evaluate", "--kitti", str(kitti_dir), "--ckpt", str(junk)], "junk.pt"),
        (["pretrain", "--store", str(tmp_path), "--out", str(tmp_path / "o")], str(tmp_path)),
        (["pretrain", "--store", str(tiny_store), "--out", str(tmp_path / "o"), "--model", "resnet"], "resnet"),
        (["finetune", "--kitti", str(kitti_dir), "--out", str(tmp_path / "o"), "--init", str(junk)], "junk.pt"),
        (["finetune", "--kitti", str(kitti_dir), "--out", str(tmp_path / "o"), "--teacher", str(junk)], "junk.pt"),
        (["export-onnx", "--ckpt", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onnx")], "missing.pt"),
        (["evaluate", "--kitti", str(kitti_dir), "--ckpt", str(_pickled(tmp_path))], "needs pickle"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err and f"monolidar {argv[0]}: error:" in err, (argv, err)


def _pickled(tmp_path):
    """A checkpoint-looking file that can only be loaded by unpickling arbitrary objects."""
    path = tmp_path / "pickled.pt"
    torch.save({"format": "monolidar.completion", "obj": _Evil()}, path)
    return path


class _Evil:
    pass


def test_checkpoints_that_need_pickle_are_refused(tmp_path):
    from model.checkpoint import load_teacher_checkpoint, safe_torch_load

    path = _pickled(tmp_path)
    for load in (load_checkpoint, load_teacher_checkpoint, safe_torch_load):
        with pytest.raises(CheckpointError, match="pickled.pt: refused: this checkpoint needs pickle"):
            load(path)


def test_no_pickle_loading_anywhere_in_the_source():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    needle = "weights_only=" + "False"
    offenders = [str(p) for d in ("model", "flows", "tasks", "storage", "bench") for p in (root / d).rglob("*.py")
                 if needle in p.read_text()]
    assert offenders == []
