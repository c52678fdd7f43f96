"""model.dav2: DA-V2-Small-shaped network, official key layout, checkpoint loading, ONNX export."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from model.dav2 import (
    DepthAnythingV2Small,
    DinoViT,
    bicubic_matrix,
    count_parameters,
    export_onnx,
    load_official_state_dict,
)
from model.teacher import Teacher
from tasks.errors import CheckpointError

# A few names from the official depth_anything_v2_vits.pth (DINOv2 encoder + DPT head).
OFFICIAL_KEYS = [
    "pretrained.cls_token", "pretrained.pos_embed", "pretrained.mask_token", "pretrained.patch_embed.proj.weight",
    "pretrained.blocks.0.norm1.weight", "pretrained.blocks.0.attn.qkv.weight", "pretrained.blocks.0.attn.proj.bias",
    "pretrained.blocks.11.ls1.gamma", "pretrained.blocks.11.mlp.fc2.weight", "pretrained.blocks.11.ls2.gamma",
    "pretrained.norm.bias", "depth_head.projects.3.weight", "depth_head.resize_layers.0.weight",
    "depth_head.resize_layers.3.bias", "depth_head.scratch.layer1_rn.weight",
    "depth_head.scratch.refinenet4.resConfUnit1.conv1.weight", "depth_head.scratch.refinenet1.out_conv.bias",
    "depth_head.scratch.output_conv1.weight", "depth_head.scratch.output_conv2.0.weight",
    "depth_head.scratch.output_conv2.2.bias",
]


def small_net() -> DepthAnythingV2Small:
    torch.manual_seed(0)
    return DepthAnythingV2Small(embed_dim=48, depth=4, heads=2, features=16, out_channels=(8, 16, 32, 48),
                                taps=(0, 1, 2, 3), img_size=70)


def test_shape_and_parameter_count():
    torch.manual_seed(0)
    net = DepthAnythingV2Small().eval()
    assert count_parameters(net) == pytest.approx(24.8e6, rel=0.005)
    keys = set(net.state_dict())
    assert set(OFFICIAL_KEYS) <= keys
    assert not any("layer1_rn.bias" in k or "stem_transpose" in k or "readout" in k for k in keys)
    assert tuple(net.state_dict()["pretrained.pos_embed"].shape) == (1, 37 * 37 + 1, 384)
    with torch.no_grad():
        out = net(torch.randn(1, 3, 42, 56))
    assert out.shape == (1, 42, 56) and (out >= 0).all() and out.std() > 0


def test_position_embedding_matches_dinov2_bicubic():
    torch.manual_seed(0)
    vit = DinoViT(dim=8, depth=1, heads=2)
    torch.nn.init.normal_(vit.pos_embed)
    g = vit.grid
    with torch.no_grad():
        assert torch.equal(vit.position_embedding(g, g), vit.pos_embed)
        for h, w in [(37, 49), (7, 9), (50, 20)]:
            grid = vit.pos_embed[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
            ref = F.interpolate(grid, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic", align_corners=False)
            got = vit.position_embedding(h, w)[:, 1:].reshape(1, h, w, -1).permute(0, 3, 1, 2)
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
    v = torch.randn(11)
    ref = F.interpolate(v[None, None, None], scale_factor=(1.0, 17 / 11), mode="bicubic", align_corners=False)[0, 0, 0]
    torch.testing.assert_close(bicubic_matrix(17, 11, 17 / 11) @ v, ref, rtol=0, atol=1e-5)


def test_state_dict_roundtrip_and_mismatches(tmp_path):
    src, dst = small_net(), small_net()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.01)
    torch.save(src.state_dict(), tmp_path / "ok.pth")
    load_official_state_dict(dst, tmp_path / "ok.pth")
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(x), src.eval()(x))

    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "wrapped.pth")
    load_official_state_dict(small_net(), tmp_path / "wrapped.pth")

    renamed = {k.replace("depth_head.", "head."): v for k, v in src.state_dict().items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError, match=r"renamed\.pth does not match.*missing keys"):
        load_official_state_dict(small_net(), tmp_path / "renamed.pth")
    bad_shape = dict(src.state_dict())
    bad_shape["pretrained.pos_embed"] = torch.zeros(1, 10, 48)
    torch.save(bad_shape, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"shape\.pth: pretrained\.pos_embed has shape"):
        load_official_state_dict(small_net(), tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"nowhere\.pth not found"):
        load_official_state_dict(small_net(), tmp_path / "nowhere.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pth is not a readable"):
        load_official_state_dict(small_net(), tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match=r"ok\.pth does not match"):
        load_official_state_dict(DepthAnythingV2Small(depth=2, taps=(0, 1)), tmp_path / "ok.pth")


@pytest.mark.slow  # > 10 s on this box; .ci/run runs it
def test_export_small_config_dynamic(tmp_path):
    net = small_net()
    report = export_onnx(net, tmp_path / "s.onnx", height=56, width=70)
    assert report["max_abs_diff"] < 1e-4 and report["ref_max"] > 0
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["pixel_values"]
    assert [o.name for o in sess.get_outputs()] == ["predicted_depth"]
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["monolidar.output_kind"] == "disparity" and meta["monolidar.short_side"] == "56"
    for shape in [(3, 3, 70, 70), (1, 3, 28, 98)]:  # other batch and grid sizes than the export's
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = net(x).numpy()
        np.testing.assert_allclose(sess.run(None, {"pixel_values": x.numpy()})[0], ref, atol=1e-4)
    with pytest.raises(ValueError, match="multiples of 14"):
        export_onnx(net, tmp_path / "x.onnx", height=50, width=56)


@pytest.mark.slow
def test_export_fp16(tmp_path):
    half = export_onnx(small_net(), tmp_path / "h.onnx", height=56, width=56, fp16=True)
    assert half["fp16"] and half["max_abs_diff"] < 5e-2 * max(1.0, half["ref_max"])
    t = Teacher(tmp_path / "h.onnx")
    assert t.input_dtype == np.float16 and t.short_side == 56
    out = t.predict(np.random.default_rng(0).integers(0, 256, (1, 40, 60, 3), dtype=np.uint8))
    assert out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.slow
def test_export_full_size_network_matches_torch(tmp_path):
    torch.manual_seed(0)
    net = DepthAnythingV2Small()
    report = export_onnx(net, tmp_path / "dav2s.onnx", height=98, width=98)
    assert report["parameters"] == count_parameters(net) and report["parameters"] == pytest.approx(24.8e6, rel=0.005)
    assert report["max_abs_diff"] < 1e-4
    assert (tmp_path / "dav2s.onnx").stat().st_size == pytest.approx(99e6, rel=0.05)  # fp32, like the official
    t = Teacher(tmp_path / "dav2s.onnx")
    assert t.short_side == 98
    img = np.random.default_rng(0).integers(0, 256, (2, 60, 100, 3), dtype=np.uint8)
    got = t.predict(img)
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(t.preprocess(img))).numpy()
    from model.teacher import resize_bilinear

    np.testing.assert_allclose(got, resize_bilinear(ref, 60, 100), atol=1e-4)
