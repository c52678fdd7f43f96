"""Completion networks: registry, shapes/units, sparse pyramid, SPN keeps inputs, checkpoints, ONNX export."""
from __future__ import annotations

import pytest
import torch

from model.checkpoint import (ModelEMA, init_from_checkpoint, load_checkpoint, model_from_checkpoint,
                              save_checkpoint)
from model.completion import create_model, list_models, sparse_pyramid
from model.conventions import count_parameters
from tasks.errors import CheckpointError

torch.set_num_threads(1)  # the CI box has 2 shared cores: more threads oversubscribe


def _inputs(h=40, w=72, seed=0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(2, 3, h, w, generator=g)
    sparse = torch.where(torch.rand(2, 1, h, w, generator=g) < 0.1, 3.0 + 50 * torch.rand(2, 1, h, w, generator=g),
                         torch.zeros(()))
    return rgb, sparse


def test_registry_and_sizes():
    assert {"msdc_small", "msdc_base"} <= set(list_models())
    small, base = create_model("msdc_small"), create_model("msdc_base")
    assert count_parameters(small) < 1.5e6 < 5e6 < count_parameters(base)
    assert small.spn is None and base.spn is not None and base.spn.iters > 0
    assert create_model("msdc_small", spn_iters=2).spn.iters == 2
    with pytest.raises(ValueError, match="unknown completion model"):
        create_model("nope")


@pytest.mark.parametrize("name", ["msdc_small", "msdc_base"])
def test_forward_any_size_positive_metres(name):
    model = create_model(name, channels=(8, 8, 8, 8, 8)) if name == "msdc_base" else create_model(name)
    rgb, sparse = _inputs(37, 61)  # odd sizes: decoder resizes to skip sizes
    depth = model(rgb, sparse)
    assert depth.shape == (2, 1, 37, 61)
    assert (depth >= model.min_depth).all() and (depth <= model.max_depth).all()


def test_fresh_model_starts_from_densified_sparse_depth():
    # heads start at zero, so the first prediction is the pyramid's coarse depth: same scale as input
    model = create_model("msdc_small")
    rgb, _ = _inputs()
    sparse = torch.zeros(2, 1, 40, 72)
    sparse[:, :, ::3, ::3] = 20.0
    out = model(rgb, sparse)
    assert torch.allclose(out, torch.full_like(out, 20.0), rtol=1e-4)


def test_sparse_pyramid_is_normalised_average():
    log_d = torch.zeros(1, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    log_d[0, 0, 0, 0], mask[0, 0, 0, 0] = 2.0, 1.0
    log_d[0, 0, 1, 1], mask[0, 0, 1, 1] = 4.0, 1.0
    lv = sparse_pyramid(log_d, mask, 3)
    assert lv[1].shape == (1, 2, 2, 2) and lv[1][0, 0, 0, 0] == pytest.approx(3.0)
    assert lv[1][0, 1, 0, 0] == pytest.approx(0.5) and lv[2][0, 1, 0, 0] == pytest.approx(2 / 16)


def test_spn_keeps_sparse_inputs():
    model = create_model("msdc_small", spn_iters=3)
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    rgb, sparse = _inputs()
    out = model(rgb, sparse)
    m = sparse > 0
    assert torch.equal(out[m], sparse[m])


def test_checkpoint_roundtrip_and_errors(tmp_path):
    model = create_model("msdc_small")
    ema = ModelEMA(model)
    for p in model.parameters():
        p.data.add_(0.01)
    ema.update(model)
    path = save_checkpoint(tmp_path / "a.pt", model=model, model_name="msdc_small", ema=ema, step=7)
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 7
    raw = model_from_checkpoint(ckpt, use_ema=False)
    rgb, sparse = _inputs()
    with torch.no_grad():
        assert torch.equal(raw(rgb, sparse), model.eval()(rgb, sparse))
    # EMA differs from raw after one update with decay < 1
    ema_model = model_from_checkpoint(path)
    assert not torch.equal(ema_model.stem[0].weight, raw.stem[0].weight)

    other = create_model("msdc_small", channels=(8, 16, 24, 32, 48))
    with pytest.raises(CheckpointError, match=str(path.name)):
        init_from_checkpoint(other, "msdc_small", path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a monolidar completion checkpoint"):
        load_checkpoint(foreign)


def test_onnx_export_matches_torch(tmp_path):
    from model.export import export_onnx

    model = create_model("msdc_small", spn_iters=2)
    torch.manual_seed(1)
    for p in model.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    ckpt = save_checkpoint(tmp_path / "m.pt", model=model, model_name="msdc_small", ema=ModelEMA(model))
    info = export_onnx(ckpt, tmp_path / "m.onnx", check_height=90, check_width=150)
    assert info["max_abs_diff_m"] < 1e-3 and info["check_shape"] == [1, 1, 90, 150]
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["monolidar.model_name"] == "msdc_small"
