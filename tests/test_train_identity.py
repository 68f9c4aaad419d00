"""Tests for the toyfaces identity network's training data, loss and a short training run."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from styleclip.toyfaces.identity_net import IDENTITY_ATTRIBUTES, load_identity
from styleclip.toyfaces.renderer import labels_of, params_from_normal
from styleclip.toyfaces.train_identity import (
    EDITABLE_ATTRIBUTES,
    identity_loss,
    identity_triplet_normals,
    identity_triplets,
    same_person,
    train,
)

torch.set_num_threads(1)


def test_triplets_change_one_attribute_or_the_identity():
    u = identity_triplet_normals(60, seed=3)
    assert u.shape[:2] == (3, 60)
    unchanged = new_background = 0
    for i in range(60):
        a, b, c = (labels_of(params_from_normal(u[k, i])) for k in range(3))
        new_background += a["background"] != b["background"]
        changed_b = [name for name in a if a[name] != b[name] and name != "background"]
        assert len(changed_b) <= 1 and set(changed_b) <= set(EDITABLE_ATTRIBUTES)  # b: the same face
        unchanged += not changed_b
        changed_c = [name for name in a if a[name] != c[name]]
        assert len(changed_c) == 1 and changed_c[0] in IDENTITY_ATTRIBUTES  # c: one identity attribute
        if changed_c[0] == "face_width":
            assert abs(a["face_width"] - c["face_width"]) >= 0.2
    assert 0 < unchanged < 30  # about 15% differ only in pose and light (and maybe the background)
    assert 20 <= new_background <= 45  # about half get a new background; c always keeps a's (checked above)
    assert not np.allclose(u[1, :, -9:], u[0, :, -9:])  # b gets a new pose and light, c keeps a's
    assert np.array_equal(u[2, :, -9:], u[0, :, -9:])
    assert np.array_equal(identity_triplet_normals(60, seed=3), u)  # seeded


def test_same_person_rules():
    n = 6
    labels = {name: torch.zeros(n, dtype=torch.long) for name in EDITABLE_ATTRIBUTES}
    labels.update({"skin_tone": torch.tensor([0, 0, 0, 1, 0, 0]), "eye_color": torch.tensor([0, 1, 1, 0, 0, 0]),
                   "nose": torch.zeros(n, dtype=torch.long), "face_width": torch.tensor([.5, .5, .5, .5, .7, .5])})
    labels["hair_color"] = torch.tensor([0, 0, 0, 0, 0, 1])
    labels["hat"] = torch.tensor([0, 0, 0, 0, 0, 1])
    visible = {name: torch.ones(n, dtype=torch.bool) for name in labels}
    visible["eye_color"] = torch.tensor([True, True, False, True, True, True])
    same = same_person(labels, visible)
    assert same[0, 0] and not same[0, 1]  # eye colour differs and both are visible
    assert same[0, 2]  # image 2 hides its eyes: cannot be told apart from image 0
    assert not same[0, 3]  # skin tone
    assert not same[0, 4]  # face width beyond the tolerance
    assert not same[0, 5]  # two other attributes changed
    assert torch.equal(same, same.t())
    labels["hat"][5] = 0
    assert same_person(labels, visible)[0, 5]  # one other attribute changed: the same face
    labels["background"][5] = 3
    assert same_person(labels, visible)[0, 5]  # a new background on top is not a difference of the face


def test_loss_prefers_partners_and_ignores_indistinct_images():
    n, d = 4, 16
    torch.manual_seed(0)
    people = F.normalize(torch.randn(n, d), dim=-1)
    hard = F.normalize(torch.randn(n, d), dim=-1)
    good = torch.cat([people, people, hard])  # partners identical, hard negatives elsewhere
    bad = torch.cat([people, people.roll(1, 0), hard])
    none = torch.zeros(3 * n, 3 * n, dtype=torch.bool)
    assert identity_loss(good, n, none) < identity_loss(bad, n, none)
    # a copy of the anchor among the negatives costs unless it is declared indistinct
    clash = torch.cat([people, people, people])
    indistinct = torch.zeros(3 * n, 3 * n, dtype=torch.bool)
    idx = torch.arange(n)
    indistinct[idx, idx + 2 * n] = indistinct[idx + n, idx + 2 * n] = True
    assert identity_loss(clash, n, indistinct) < identity_loss(clash, n, none) - 0.1


def test_short_training_run_learns_and_resumes(tmp_path):
    data = identity_triplets(12, seed=11, workers=1, use_cache=False)
    assert data[0].shape == (3, 12, 64, 64, 3)
    img = torch.as_tensor(data[0].reshape(-1, 64, 64, 3)).permute(0, 3, 1, 2).float() / 127.5 - 1
    indistinct = same_person({k: torch.as_tensor(v.reshape(-1)) for k, v in data[1].items()},
                             {k: torch.as_tensor(v.reshape(-1)) for k, v in data[2].items()})

    def clean_loss(model) -> float:
        with torch.no_grad():
            return float(identity_loss(F.normalize(model.features(img), dim=-1), 12, indistinct))

    ckpt = tmp_path / "last.pt"
    model0, _ = train(steps=1, batch=12, data=data, out_path=None, ckpt_path=ckpt, log=lambda s: None)
    before = clean_loss(model0)
    model, _ = train(steps=40, batch=12, lr=3e-3, data=data, out_path=tmp_path / "id.pt", ckpt_path=ckpt,
                     resume=True, log=lambda s: None)
    assert clean_loss(model) < before - 0.3
    assert torch.load(ckpt, weights_only=True)["step"] == 40
    loaded = load_identity(tmp_path / "id.pt")
    assert loaded.embed(img[:2]).shape == (2, 64)



def test_auc_counts_ordered_pairs():
    from styleclip.toyfaces.eval_identity import _auc

    assert _auc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert _auc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 0.0
    assert _auc(torch.tensor([1.0]), torch.tensor([1.0, 0.0])) == 0.75  # a tie counts half
