"""Tests for styleclip.models.identity: official ArcFace key format, strict loading, errors, the toyfaces network."""

from __future__ import annotations

import pytest
import torch

from styleclip.models import identity as identity_module
from styleclip.models.checkpoints import CheckpointError
from styleclip.models.identity import (
    ArcFaceIRSE50,
    arcface_prepare,
    identity_for_bundle,
    load_arcface,
    load_toyfaces_identity,
)
from styleclip.models.model_zoo import ModelBundle
from styleclip.toyfaces.identity_net import ToyfacesIdentity, save_identity

torch.set_num_threads(1)


def official_ir_se50_keys() -> list[tuple[str, tuple[int, ...]]]:
    """The official model_ir_se50.pth layout, written out from the published description (facts §7), not from
    our module: stem, output layer, then 24 units of [shortcut (conv+BN when the width changes), BN, conv,
    PReLU, conv, BN, SE(fc1, fc2)] over stages 64/128/256/512 with 3/4/14/3 units."""

    def bn(prefix, c):
        return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
                (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]

    keys = [("input_layer.0.weight", (64, 3, 3, 3)), *bn("input_layer.1", 64),
            ("input_layer.2.weight", (64,))]
    keys += [*bn("output_layer.0", 512), ("output_layer.3.weight", (512, 512 * 7 * 7)),
             ("output_layer.3.bias", (512,)), *bn("output_layer.4", 512)]
    unit = 0
    for c_in, depth, count in ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)):
        for k in range(count):
            cin = c_in if k == 0 else depth
            p = f"body.{unit}"
            if cin != depth:
                keys += [(f"{p}.shortcut_layer.0.weight", (depth, cin, 1, 1)),
                         *bn(f"{p}.shortcut_layer.1", depth)]
            keys += [*bn(f"{p}.res_layer.0", cin), (f"{p}.res_layer.1.weight", (depth, cin, 3, 3)),
                     (f"{p}.res_layer.2.weight", (depth,)), (f"{p}.res_layer.3.weight", (depth, depth, 3, 3)),
                     *bn(f"{p}.res_layer.4", depth),
                     (f"{p}.res_layer.5.fc1.weight", (depth // 16, depth, 1, 1)),
                     (f"{p}.res_layer.5.fc2.weight", (depth, depth // 16, 1, 1))]
            unit += 1
    return keys


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    """Random weights in the official key format (plausible BN statistics, so outputs are finite)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in official_ir_se50_keys():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(100)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        elif name.endswith("running_mean") or name.endswith(".bias"):
            state[name] = torch.randn(shape, generator=g) * 0.05
        elif len(shape) == 1:  # BN gains and PReLU slopes
            state[name] = torch.rand(shape, generator=g) * 0.5 + 0.25
        else:
            fan_in = int(torch.tensor(shape[1:]).prod())
            state[name] = torch.randn(shape, generator=g) / fan_in ** 0.5
    return state


@pytest.fixture(scope="module")
def official_file(tmp_path_factory, official_state):
    path = tmp_path_factory.mktemp("arcface") / "model_ir_se50.pth"
    torch.save(official_state, path)
    return path


@pytest.fixture(scope="module")
def arcface(official_file):
    return load_arcface(official_file)


def test_module_layout_is_the_official_one():
    ours = [(k, tuple(v.shape)) for k, v in ArcFaceIRSE50().state_dict().items()]
    assert len(ours) == 397
    assert ours == official_ir_se50_keys()  # same names, shapes and order


def test_official_format_file_loads_strictly(arcface, official_state):
    loaded = arcface.state_dict()
    assert loaded.keys() == official_state.keys()
    assert all(torch.equal(loaded[k].to(v.dtype), v) for k, v in official_state.items())
    assert not arcface.training and not any(p.requires_grad for p in arcface.parameters())


def test_embeddings_are_512d_unit_vectors_and_self_loss_is_zero(arcface):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = torch.rand(2, 3, 64, 64) * 2 - 1
    e = arcface.embed(x)
    assert e.shape == (2, 512) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(arcface.loss(x, x), torch.zeros(2), atol=1e-5)
    d = arcface.loss(x, y)
    assert d.shape == (2,) and (d > 1e-4).all() and (d <= 2).all()
    # The loss is differentiable w.r.t. the edited image only.
    x.requires_grad_(True)
    arcface.loss(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_prepare_follows_the_official_crop():
    img = torch.zeros(1, 3, 256, 256)
    img[:, :, 35:223, 32:220] = 1.0  # exactly the crop window: the prepared image is all ones
    out = arcface_prepare(img)
    assert out.shape == (1, 3, 112, 112) and torch.allclose(out, torch.ones_like(out))
    assert arcface_prepare(torch.zeros(3, 3, 1024, 1024)).shape == (3, 3, 112, 112)


def test_file_without_bn_counters_or_with_prefix_loads(tmp_path, official_state):
    old = {k: v for k, v in official_state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    assert len(load_arcface(tmp_path / "old.pth").state_dict()) == 397
    torch.save({"module." + k: v for k, v in official_state.items()}, tmp_path / "dp.pth")
    load_arcface(tmp_path / "dp.pth")


def test_wrong_files_name_expected_and_found(tmp_path, official_state):
    no_se = {k: v for k, v in official_state.items() if ".res_layer.5." not in k}
    torch.save(no_se, tmp_path / "ir50.pth")
    missing_se = r"missing 48 key\(s\) \[body\.0\.res_layer\.5\.fc1\.weight"
    with pytest.raises(CheckpointError, match=missing_se) as exc:
        load_arcface(tmp_path / "ir50.pth")
    assert "Expected 397 entries" in str(exc.value) and "found 349" in str(exc.value)
    assert "IR-50 without SE" in str(exc.value)

    wide = dict(official_state, **{"output_layer.3.weight": torch.zeros(512, 512 * 14 * 14)})
    torch.save(wide, tmp_path / "224.pth")
    with pytest.raises(CheckpointError, match=r"output_layer\.3\.weight: expected \(512, 25088\), "
                                              r"found \(512, 100352\)") as exc:
        load_arcface(tmp_path / "224.pth")
    assert "224 px" in str(exc.value)

    torch.save({"encoder.x": torch.zeros(1), "decoder.y": torch.zeros(1)}, tmp_path / "e4e.pt")
    with pytest.raises(CheckpointError, match="pSp/e4e checkpoint"):
        load_arcface(tmp_path / "e4e.pt")

    (tmp_path / "page.pth").write_text("<html>quota exceeded</html>")
    with pytest.raises(CheckpointError, match="HTML page"):
        load_arcface(tmp_path / "page.pth")
    with pytest.raises(FileNotFoundError):
        load_arcface(tmp_path / "missing.pth")


# --------------------------------------------------------------------------------------- toyfaces network


def small_identity() -> ToyfacesIdentity:
    torch.manual_seed(0)
    return ToyfacesIdentity(channels=(8, 8, 16, 16), hidden=16, embed_dim=12).requires_grad_(False).eval()


def test_toyfaces_identity_is_a_differentiable_identity_model():
    ident = small_identity()
    torch.manual_seed(2)
    x = (torch.rand(3, 3, 32, 32) * 2 - 1).requires_grad_(True)  # resized to 64 px inside
    e = ident.embed(x)
    assert e.shape == (3, 12) and torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(ident.loss(x, x), torch.zeros(3), atol=1e-5)
    ident.loss(x, torch.flip(x, dims=[0])).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in ident.parameters())
    ident.train()
    assert not ident.training  # a loss network keeps BatchNorm's running statistics


def test_toyfaces_identity_file_round_trip_and_errors(tmp_path):
    ident = small_identity()
    save_identity(ident, tmp_path / "i.pt")
    back = load_toyfaces_identity(tmp_path / "i.pt")
    assert back.embed_dim == 12 and back.kind == "toyfaces-identity"
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.allclose(back.embed(x), ident.half().float().embed(x), atol=1e-4)  # fp16 storage
    with pytest.raises(FileNotFoundError, match="train_identity"):
        load_toyfaces_identity(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a toyfaces identity network"):
        load_toyfaces_identity(tmp_path / "bad.pt")
    torch.save({"config": {"channels": [8]}, "state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a toyfaces identity network"):
        load_toyfaces_identity(tmp_path / "foreign.pt")


def test_bundle_lookup(monkeypatch, tmp_path):
    monkeypatch.setattr(identity_module, "_CACHE", {})
    save_identity(small_identity(), tmp_path / "i.pt")
    monkeypatch.setitem(identity_module._DOMAIN_NETWORKS, "toyfaces",
                        lambda device="cpu": load_toyfaces_identity(tmp_path / "i.pt", device=device))
    toy = identity_for_bundle("toyfaces")
    assert isinstance(toy, ToyfacesIdentity) and identity_for_bundle("toyfaces") is toy  # cached
    with pytest.raises(ValueError, match="unknown model"):
        identity_for_bundle("no-such-bundle")


def test_identity_status_and_the_apps_slider(monkeypatch, tmp_path):
    import app
    from styleclip.studio import Studio

    studio = Studio()
    monkeypatch.setattr(app, "STUDIO", studio)
    monkeypatch.setattr(identity_module, "_CACHE", {})
    monkeypatch.setitem(identity_module._DOMAIN_NETWORKS, "toyfaces",
                        lambda device="cpu": load_toyfaces_identity(tmp_path / "missing.pt", device=device))
    available, note = studio.identity_status("toyfaces")
    assert not available and "train_identity" in note
    assert studio.mapper_identity("toyfaces")[:2] == (None, 0.0)  # automatic: goes without, with a note
    assert "train_identity" in studio.mapper_identity("toyfaces")[2]
    with pytest.raises(ValueError, match="train_identity"):
        studio.mapper_identity("toyfaces", 0.3)
    steps, l2, update = app.optimization_sliders("toyfaces")
    bundle = studio.model("toyfaces").bundle
    assert l2["value"] == bundle.opt_l2_lambda and steps["value"] == bundle.opt_steps != ModelBundle.opt_steps
    assert update["value"] == 0.0 and update["interactive"] is False and "stays at 0" in update["info"]

    save_identity(small_identity(), tmp_path / "i.pt")
    monkeypatch.setitem(identity_module._DOMAIN_NETWORKS, "toyfaces",
                        lambda device="cpu": load_toyfaces_identity(tmp_path / "i.pt", device=device))
    available, note = studio.identity_status("toyfaces")
    assert available and "toyfaces-identity" in note
    identity, weight, note = studio.mapper_identity("toyfaces")
    assert isinstance(identity, ToyfacesIdentity) and weight == studio.model("toyfaces").bundle.mapper_id_weight
    assert studio.mapper_identity("toyfaces", 0.0)[:2] == (None, 0.0)
    assert studio.mapper_identity("toyfaces", 0.3)[1] == 0.3
    update = app.optimization_sliders("toyfaces")[2]
    assert update["interactive"] is True and update["value"] == studio.model("toyfaces").bundle.opt_id_lambda
    assert app.optimization_sliders("no-such-model")[2]["interactive"] is False  # a plain note, no exception
