"""Tests of the toyfaces attribute classifier: shipped weights, accuracy on fresh renders, training."""

from __future__ import annotations

import numpy as np
import torch

from styleclip.toyfaces.attributes import ATTRIBUTES
from styleclip.toyfaces.classifier import (
    DEFAULT_PATH,
    AttributeClassifier,
    load_classifier,
    save_classifier,
    to_img,
)
from styleclip.toyfaces.dataset import make_dataset, observable_array
from styleclip.toyfaces.train_classifier import augment, classifier_loss, train

torch.set_num_threads(1)


def _fresh(n: int, seed: int, size: int = 64):
    images, labels, params = make_dataset(n, seed, size=size, workers=1, use_cache=False)
    return images, labels, observable_array(params)


def test_small_model_and_io(tmp_path):
    model = AttributeClassifier()
    assert sum(p.numel() for p in model.parameters()) <= 1_000_000
    img = to_img(np.zeros((2, 64, 64, 3), np.uint8))
    assert img.shape == (2, 3, 64, 64) and float(img.min()) == -1.0
    probs = model.predict(img)
    for a in ATTRIBUTES:
        if a.kind == "discrete":
            assert probs[a.name].shape == (2, len(a.values))
            torch.testing.assert_close(probs[a.name].sum(1), torch.ones(2))
        else:
            assert probs[a.name].shape == (2,)
    assert model.predict(torch.zeros(1, 3, 128, 128))["hat"].shape == (1, 3)  # resized to 64
    save_classifier(model, tmp_path / "c.pt")
    loaded = load_classifier(tmp_path / "c.pt")
    out = loaded.predict(img)
    torch.testing.assert_close(out["hair_color"], probs["hair_color"], atol=2e-2, rtol=0)


def test_shipped_classifier_is_accurate_on_fresh_renders():
    assert DEFAULT_PATH.exists(), "assets/toyfaces/classifier.pt is missing"
    model = load_classifier()
    images, labels, visible = _fresh(64, seed=777)
    probs = model.predict(to_img(images))
    for a in ATTRIBUTES:
        mask = visible[a.name]
        if a.kind == "discrete":
            acc = (probs[a.name].argmax(1).numpy()[mask] == labels[a.name][mask]).mean()
            assert acc >= 0.9, f"{a.name}: {acc:.2%}"
        else:
            mae = np.abs(probs[a.name].numpy() - labels[a.name]).mean()
            assert mae < 0.12, f"{a.name}: MAE {mae:.3f}"


def test_augment_is_seeded_and_bounded():
    images, _, _ = _fresh(8, seed=5)
    a = augment(images, torch.Generator().manual_seed(1))
    b = augment(images, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert a.shape == (8, 3, 64, 64) and float(a.min()) >= -1 and float(a.max()) <= 1
    torch.testing.assert_close(
        augment(images, torch.Generator().manual_seed(1), strength=0.0).contiguous(), to_img(images)
    )


def test_training_lowers_the_loss_and_resumes(tmp_path):
    images, labels, visible = _fresh(64, seed=9)
    torch.manual_seed(0)
    model = AttributeClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    img = to_img(images)
    lab = {k: torch.as_tensor(v) for k, v in labels.items()}
    vis = {k: torch.as_tensor(v) for k, v in visible.items()}
    losses = []
    for _ in range(8):
        loss, _ = classifier_loss(model, model(img), lab, vis)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]

    ckpt = tmp_path / "last.pt"
    logs: list[str] = []
    train(
        steps=2,
        batch=16,
        data=(images, labels, visible),
        ckpt_path=ckpt,
        out_path=tmp_path / "c.pt",
        log=logs.append,
    )
    assert ckpt.exists() and (tmp_path / "c.pt").exists()
    train(
        steps=3,
        batch=16,
        data=(images, labels, visible),
        ckpt_path=ckpt,
        out_path=None,
        resume=True,
        log=logs.append,
    )
    assert any("resumed" in line and "step 2" in line for line in logs)
    assert torch.load(ckpt, weights_only=True)["step"] == 3
