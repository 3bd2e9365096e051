"""Checkpoint reading/loading, the model-zoo table, and the ImageNet-init converters."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from rankseg_fast.checkpoint import (
    ZOO,
    CheckpointError,
    cache_path,
    convert_swin,
    convert_torchvision_resnet,
    load_backbone_weights,
    load_model_zoo,
    read_checkpoint,
    read_checkpoint_file,
    verify_md5_prefix,
    write_d2_pkl,
)
from rankseg_fast.modeling.backbones import build_backbone


class ToyModel(nn.Module):
    """Same top-level names as the real model, tiny sizes; pixel_mean/pixel_std non-persistent."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.backbone = build_backbone("swin_tiny", embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
        self.sem_seg_head = nn.Module()
        self.sem_seg_head.pixel_decoder = nn.Module()
        self.sem_seg_head.pixel_decoder.mask_features = nn.Conv2d(8, 8, 1)
        self.sem_seg_head.predictor = nn.Module()
        self.sem_seg_head.predictor.class_embed = nn.Linear(8, num_classes + 1)
        self.sem_seg_head.predictor.query_feat = nn.Embedding(3, 8)
        self.ml_norm = nn.LayerNorm(num_classes + 1)
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.ones(3, 1, 1), persistent=False)


def _randomized(model: nn.Module) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_state_equal(model: nn.Module, expected: dict[str, torch.Tensor]):
    got = model.state_dict()
    assert set(got) == set(expected)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


def test_roundtrip_pkl_numpy(tmp_path):
    src = ToyModel()
    expected = _randomized(src)
    state = {**expected, "criterion.empty_weight": torch.ones(6)}
    write_d2_pkl(tmp_path / "m.pkl", state, author="test")
    ckpt = read_checkpoint_file(tmp_path / "m.pkl")
    assert ckpt.format == "d2-pkl" and ckpt.metadata["__author__"] == "test"
    dst = ToyModel()
    report = load_model_zoo(dst, tmp_path / "m.pkl")
    _assert_state_equal(dst, expected)
    assert report.ok and report.dropped == ["criterion.empty_weight"]
    assert report.loaded == len(expected)


@pytest.mark.parametrize("layout", ["model", "state_dict", "bare", "module"])
def test_roundtrip_pth(tmp_path, layout):
    src = ToyModel()
    expected = _randomized(src)
    if layout == "module":
        obj = {"module." + k: v for k, v in expected.items()}
    elif layout == "bare":
        obj = dict(expected)
    else:
        obj = {layout: dict(expected), "iteration": 7, "optimizer": {"state": {}}}
    torch.save(obj, tmp_path / "m.pth")
    dst = ToyModel()
    load_model_zoo(dst, str(tmp_path / "m.pth"))
    _assert_state_equal(dst, expected)


def test_bare_pickle_nested_and_dtype_cast(tmp_path):
    src = ToyModel()
    expected = _randomized(src)
    nested: dict = {}
    for k, v in expected.items():  # nested dicts, float64 arrays
        head, _, tail = k.partition(".")
        arr = v.numpy().astype(np.float64) if v.is_floating_point() else v.numpy()
        nested.setdefault(head, OrderedDict())[tail] = arr
    with open(tmp_path / "m.pkl", "wb") as f:
        pickle.dump(nested, f, protocol=2)
    dst = ToyModel()
    load_model_zoo(dst, tmp_path / "m.pkl")
    for k, v in dst.state_dict().items():
        assert v.dtype == expected[k].dtype
        torch.testing.assert_close(v, expected[k])


def test_pickled_tensors_are_read(tmp_path):
    """The reference Swin converter stores torch tensors in a plain pickle."""
    state = {"a": torch.arange(4.0), "b": torch.arange(3)}
    with open(tmp_path / "t.pkl", "wb") as f:
        pickle.dump({"model": state, "__author__": "third_party", "matching_heuristics": True}, f)
    got = read_checkpoint(tmp_path / "t.pkl")
    assert torch.equal(got["a"], state["a"]) and torch.equal(got["b"], state["b"])


def test_strict_report_lists_missing_unexpected_and_mismatched(tmp_path):
    src = ToyModel()
    state = _randomized(src)
    del state["ml_norm.weight"]
    state["ml_head.cls_emb"] = torch.zeros(1, 5, 512)
    state["sem_seg_head.predictor.class_embed.weight"] = torch.zeros(81, 8)
    before = {k: v.clone() for k, v in ToyModel().state_dict().items()}
    torch.save(state, tmp_path / "m.pth")
    dst = ToyModel()
    dst.load_state_dict(before)
    with pytest.raises(CheckpointError) as info:
        load_model_zoo(dst, tmp_path / "m.pth")
    msg = str(info.value)
    assert "missing" in msg and "ml_norm.weight" in msg
    assert "unexpected" in msg and "ml_head.cls_emb" in msg
    assert "sem_seg_head.predictor.class_embed.weight: file (81, 8) vs model (6, 8)" in msg
    _assert_state_equal(dst, before)  # strict failure leaves the model untouched
    report = load_model_zoo(dst, tmp_path / "m.pth", strict=False)
    assert report.missing == ["ml_norm.weight"] and report.unexpected == ["ml_head.cls_emb"]
    assert report.mismatched == [("sem_seg_head.predictor.class_embed.weight", (81, 8), (6, 8))]
    assert torch.equal(dst.state_dict()["ml_norm.bias"], state["ml_norm.bias"])


def test_long_key_lists_are_grouped(tmp_path):
    dst = ToyModel()
    torch.save({"unrelated.weight": torch.zeros(1)}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError) as info:
        load_model_zoo(dst, tmp_path / "m.pth")
    n = sum(k.startswith("backbone.layers") for k in dst.state_dict())
    assert f"{n} keys under backbone.layers.* (first: backbone.layers.0." in str(info.value)


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_truncated_files(tmp_path, suffix):
    state = _randomized(ToyModel())
    full = tmp_path / f"full{suffix}"
    if suffix == ".pkl":
        write_d2_pkl(full, state, author="test")
    else:
        torch.save(state, full)
    data = full.read_bytes()
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="bad" + suffix.replace(".", r"\.")) as info:
        read_checkpoint(bad)
    assert "truncated" in str(info.value) or "corrupt" in str(info.value)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_malicious_pickle_is_refused(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(2)}, "x": _Evil(marker)}, f)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert not marker.exists()
    if suffix == ".pkl":
        assert "refused global" in str(info.value) and "system" in str(info.value)


def test_zoo_table_and_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKSEG_FAST_CACHE", str(tmp_path))
    entry = ZOO["ade20k-sem-swin-b-rankseg"]
    assert entry.recipe == ("ade20k/semantic-segmentation/swin/"
                            "maskformer2_swin_base_IN21k_384_bs16_160k_res640-rankseg.yaml")
    assert entry.metrics == {"mIoU": 54.9, "mIoU_ms_flip": 55.6}
    assert cache_path("zoo:ade20k-sem-swin-b-rankseg") == tmp_path / entry.filename
    assert ZOO["ade20k-sem-swin-b"].md5_prefix == "7e47bf"
    assert ZOO["coco-ins-swin-l"].md5_prefix == "e5f453"
    assert sum(e.kind == "model" for e in ZOO.values()) == 18
    with pytest.raises(FileNotFoundError):
        cache_path("vspw-swin-b")


def test_missing_file_without_network_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKSEG_FAST_CACHE", str(tmp_path))

    def offline(url, dst, *args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CheckpointError) as info:
        load_model_zoo(ToyModel(), "zoo:ade20k-sem-swin-l")
    msg = str(info.value)
    assert ZOO["ade20k-sem-swin-l"].url in msg
    assert str(tmp_path / "model_final_6b4a3a.pkl") in msg


def test_download_verifies_md5_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKSEG_FAST_CACHE", str(tmp_path))
    state = _randomized(ToyModel())

    def fake_download(url, dst, *args, **kwargs):
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(CheckpointError, match="md5"):  # our file does not hash to 6b4a3a...
        load_model_zoo(ToyModel(), "zoo:ade20k-sem-swin-l")
    assert not (tmp_path / "model_final_6b4a3a.pkl").exists()
    dst = ToyModel()  # RankSeg .pth names carry no md5: accepted
    load_model_zoo(dst, "zoo:ade20k-sem-swin-l-rankseg")
    _assert_state_equal(dst, state)
    assert verify_md5_prefix(tmp_path / ZOO["ade20k-sem-swin-l-rankseg"].filename, None)


def _torchvision_resnet50_state() -> OrderedDict[str, torch.Tensor]:
    """Names and shapes of torchvision's resnet50().state_dict(), values random."""
    gen = torch.Generator().manual_seed(1)
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def bn(name, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{p}"] = (c,)
        shapes[f"{name}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    in_c = 64
    for layer, (mid, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        out = mid * 4
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            shapes[f"{p}.conv1.weight"] = (mid, in_c, 1, 1)
            bn(f"{p}.bn1", mid)
            shapes[f"{p}.conv2.weight"] = (mid, mid, 3, 3)
            bn(f"{p}.bn2", mid)
            shapes[f"{p}.conv3.weight"] = (out, mid, 1, 1)
            bn(f"{p}.bn3", out)
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (out, in_c, 1, 1)
                bn(f"{p}.downsample.1", out)
            in_c = out
    shapes["fc.weight"] = (1000, 2048)
    shapes["fc.bias"] = (1000,)
    return OrderedDict((k, torch.tensor(0, dtype=torch.int64) if k.endswith("tracked") else
                        torch.randn(s, generator=gen)) for k, s in shapes.items())


def test_torchvision_resnet_conversion_loads_strictly(tmp_path):
    tv = _torchvision_resnet50_state()
    d2 = convert_torchvision_resnet(tv)
    assert torch.equal(d2["stem.conv1.weight"], tv["conv1.weight"])
    assert torch.equal(d2["stem.conv1.norm.running_var"], tv["bn1.running_var"])
    assert torch.equal(d2["res2.0.shortcut.weight"], tv["layer1.0.downsample.0.weight"])
    assert torch.equal(d2["res5.2.conv3.norm.bias"], tv["layer4.2.bn3.bias"])
    assert not any(k.startswith("stem.fc") or "num_batches" in k for k in d2)
    write_d2_pkl(tmp_path / "R-50.pkl", d2, author="torchvision")
    meta = read_checkpoint_file(tmp_path / "R-50.pkl").metadata
    assert meta == {"__author__": "torchvision", "matching_heuristics": True}
    backbone = build_backbone("R50")
    report = load_backbone_weights(backbone, tmp_path / "R-50.pkl")
    assert report.ok and report.loaded == len(d2)
    assert torch.equal(backbone.state_dict()["res4.5.conv2.weight"], tv["layer3.5.conv2.weight"])


def _official_swin_tiny_state() -> OrderedDict[str, torch.Tensor]:
    """An official-Swin-T-sized checkpoint dict: our names minus norm{i}, plus head/norm/attn_mask."""
    reference = build_backbone("swin_tiny").state_dict()
    gen = torch.Generator().manual_seed(2)
    state = OrderedDict()
    for k, v in reference.items():
        if k.startswith("norm") and k[4].isdigit():
            continue
        state[k] = v.clone() if not v.is_floating_point() else torch.randn(v.shape, generator=gen)
        if k.endswith("attn.relative_position_index") and int(k.split(".")[3]) % 2 == 1:
            state[k.replace("attn.relative_position_index", "attn_mask")] = torch.zeros(4, 49, 49)
    state["norm.weight"], state["norm.bias"] = torch.ones(768), torch.zeros(768)
    state["head.weight"], state["head.bias"] = torch.zeros(1000, 768), torch.zeros(1000)
    return state


def test_swin_conversion_loads_strictly(tmp_path):
    official = _official_swin_tiny_state()
    torch.save({"model": official}, tmp_path / "swin_tiny_patch4_window7_224.pth")
    converted = convert_swin(read_checkpoint(tmp_path / "swin_tiny_patch4_window7_224.pth"))
    assert not any(k.startswith(("head.", "norm.")) or k.endswith("attn_mask") for k in converted)
    write_d2_pkl(tmp_path / "swin.pkl", converted, author="third_party")
    backbone = build_backbone("swin_tiny")
    load_backbone_weights(backbone, tmp_path / "swin.pkl")
    got = backbone.state_dict()
    assert torch.equal(got["layers.2.blocks.5.mlp.fc1.weight"], official["layers.2.blocks.5.mlp.fc1.weight"])
    assert torch.equal(got["norm3.weight"], torch.ones(768)) and torch.equal(got["norm0.bias"], torch.zeros(96))


def test_prefix_and_matching_heuristics_into_full_model(tmp_path):
    """A converted backbone file loaded into a full model: prefix= or the file's matching_heuristics."""
    src = ToyModel()
    expected = _randomized(src)
    backbone_only = {k[len("backbone."):]: v for k, v in expected.items() if k.startswith("backbone.")}
    write_d2_pkl(tmp_path / "b.pkl", backbone_only, author="third_party")
    for kwargs in ({"prefix": "backbone."}, {}):
        dst = ToyModel()
        report = load_model_zoo(dst, tmp_path / "b.pkl", strict=False, **kwargs)
        assert not report.unexpected and not report.mismatched
        assert all(not k.startswith("backbone.") for k in report.missing)
        assert torch.equal(dst.state_dict()["backbone.patch_embed.proj.weight"],
                           expected["backbone.patch_embed.proj.weight"])


def test_convert_cli(tmp_path):
    tv = OrderedDict([("conv1.weight", torch.randn(4, 3, 7, 7)), ("bn1.weight", torch.ones(4)),
                      ("layer1.0.conv1.weight", torch.randn(2, 4, 1, 1)),
                      ("layer1.0.downsample.1.running_mean", torch.zeros(8)), ("fc.bias", torch.zeros(10))])
    torch.save(tv, tmp_path / "tv.pth")
    out = tmp_path / "out.pkl"
    proc = subprocess.run([sys.executable, "-m", "rankseg_fast.convert", "torchvision-resnet",
                           str(tmp_path / "tv.pth"), str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = read_checkpoint(out)
    assert sorted(got) == ["res2.0.conv1.weight", "res2.0.shortcut.norm.running_mean", "stem.conv1.norm.weight",
                           "stem.conv1.weight"]
    assert torch.equal(got["res2.0.conv1.weight"], tv["layer1.0.conv1.weight"])
    bad = subprocess.run([sys.executable, "-m", "rankseg_fast.convert", "swin", str(tmp_path / "tv.pth"),
                          str(tmp_path / "x.pkl")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "not a Swin checkpoint" in bad.stderr


def test_numpy1_pickle_globals_are_accepted(tmp_path):
    """numpy 1.x writes numpy.core.multiarray._reconstruct; numpy 2.x numpy._core.*: both are resolved."""
    data = pickle.dumps({"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "__author__": "x"},
                        protocol=2)
    data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in data
    (tmp_path / "old.pkl").write_bytes(data)
    got = read_checkpoint(tmp_path / "old.pkl")
    assert torch.equal(got["w"], torch.arange(6.0).reshape(2, 3))
