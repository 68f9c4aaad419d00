"""Smoke runs of the embedded models' trainers, and the pieces they share (prefetching, time budgets)."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch

from styleclip.models.clip_model import ClipModel
from styleclip.models.generator_io import load_generator, save_generator
from styleclip.toyfaces import budget as budget_module
from styleclip.toyfaces import fit_mapping, train_clip, train_generator, z_layout
from styleclip.toyfaces.attributes import ATTRIBUTES
from styleclip.toyfaces.budget import StepBudget
from styleclip.toyfaces.prefetch import batches
from styleclip.toyfaces.renderer import labels_of
from tests.conftest import make_tiny_generator

pytestmark = pytest.mark.usefixtures("one_thread")
DISCRETE_NAMES = {a.name for a in ATTRIBUTES if a.kind == "discrete"}


def _square_plus(offset: int, step: int) -> int:
    return step * step + offset


def test_prefetched_batches_arrive_in_step_order_as_inline():
    make = functools.partial(_square_plus, 7)
    inline = [b for _, b in zip(range(6), batches(make, 3, workers=0))]
    stream = batches(make, 3, workers=2)
    pooled = [next(stream) for _ in range(6)]
    stream.close()
    assert pooled == inline == [s * s + 7 for s in range(3, 9)]


def test_step_budget_fixes_the_total_from_the_measured_rate(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(budget_module.time, "time", lambda: clock[0])
    b = StepBudget(steps=50_000, minutes=1.0, start_step=100, settle=2, window=4)
    totals = []
    for step in range(100, 108):
        totals.append(b.update(step))
        clock[0] += 0.5  # 2 steps per second
    # 4 steps measured in 2 s at step 106, 3 s of the 60 s spent: (60 - 3) s x 2 steps/s more.
    assert totals[:6] == [50_000] * 6
    assert totals[6] == 106 + 1 + 114
    assert StepBudget(steps=9, minutes=0, start_step=0).update(5) == 9
    # A warm start already past --steps (which count from step 0) still runs long enough to measure its rate.
    assert StepBudget(steps=3000, minutes=1.0, start_step=5000, settle=2, window=4).update(5000) == 5007


def test_step_budget_ends_the_run_past_its_deadline_when_the_rate_was_overstated(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(budget_module.time, "time", lambda: clock[0])
    b = StepBudget(steps=50_000, minutes=1.0, start_step=0, settle=1, window=2, overrun=1.1)
    step, total = 0, b.update(0)
    fixed = []
    while step < total:
        # 10 steps/s while measured (prefetched batches), 1 step/s after: the 60 s budget fixes ~600 steps.
        clock[0] += 0.1 if step < 3 else 1.0
        step += 1
        total = b.update(step)
        fixed.append(total)
    assert max(fixed[3:]) > 500  # the rate measured on prefetched batches had fixed several hundred steps
    assert 66 <= step <= 71  # ended one step past the deadline (66 s at 1 step/s after 3 quick ones)


def test_z_layout_reads_the_pixel_normalised_z_and_keeps_the_renderers_probabilities():
    z = np.random.default_rng(0).standard_normal((4000, 128))
    # The mapping sees z / |z|.
    np.testing.assert_allclose(z_layout.attribute_code(z_layout.params_of_z(z[0])),
                               z_layout.attribute_code(z_layout.params_of_z(3.0 * z[0])), atol=1e-6)
    faces = [z_layout.params_of_z(row) for row in z]
    for attr in ATTRIBUTES:
        if attr.kind == "discrete":
            freq = np.array([sum(getattr(f, attr.name) == v for f in faces) for v in attr.values]) / len(faces)
            assert np.abs(freq - np.array(attr.probs)).max() < 0.03, attr.name
    with pytest.raises(ValueError, match="needs >= 53"):
        z_layout.params_of_z(z[0, :20])


def test_attribute_code_one_hot_layout():
    z = np.random.default_rng(1).standard_normal(128)
    params = z_layout.params_of_z(z)
    code = z_layout.attribute_code(params)
    assert code.shape == (z_layout.CODE_DIM,)
    offset = 0
    for attr in ATTRIBUTES:
        if attr.kind == "discrete":
            block = code[offset:offset + len(attr.values)]
            assert block.sum() == 1 and block[attr.index(getattr(params, attr.name))] == 1
            offset += len(attr.values)
        else:
            assert code[offset] == pytest.approx(getattr(params, attr.name))
            offset += 1
    assert np.all((code[offset:] > 0) & (code[offset:] < 1))  # nuisances scaled over their ranges


def test_threshold_layers_detect_every_split_of_the_layout():
    g = make_tiny_generator(size=8, style_dim=128)
    z_layout.set_threshold_layers(g.style, sharpness=30.0)
    assert not g.style[1].weight.requires_grad and not g.style[2].weight.requires_grad
    z = torch.randn(512, 128)
    with torch.no_grad():
        features = g.style[:3](z)  # pixel norm, threshold layer, step layer
    u = z / z.pow(2).mean(1, keepdim=True).sqrt()
    splits = [split for entry in z_layout.Z_LAYOUT.values() if isinstance(entry, list) for split in entry]
    for i, split in enumerate(splits):
        margin = (u[:, split.dim] - split.threshold).abs() > 0.1  # outside the 1/K transition
        above = u[:, split.dim] >= split.threshold
        assert torch.equal((features[:, i] > 0)[margin], above[margin]), i
        high = features[margin & above, i]
        assert torch.allclose(high, torch.full_like(high, 0.4 * 2.5 * math.sqrt(2)), atol=1e-4), i


def test_generator_training_steps_lower_the_loss_on_a_fixed_batch():
    state = train_generator.make_state(seed=0)
    g, encoder, opt = state["g"], state["encoder"], state["opt"]
    z, image, code = train_generator.make_batch(0, 4, train_generator.CONFIG.size, step=0)
    z, code, target = torch.from_numpy(z), torch.from_numpy(code), train_generator.to_img(image)
    for group in opt.param_groups:
        group["lr"] = 2e-3 * group["lr_scale"]
    losses = []
    for _ in range(6):
        loss, parts = train_generator.training_loss(g, encoder, z, code, target, mix=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert set(parts) == {"pixel", "mapping"}
    assert losses[-1] < losses[0]


def test_mix_fraction_schedule():
    assert train_generator.mix_fraction(0, 100) == 0
    assert train_generator.mix_fraction(30, 100) == 0
    assert train_generator.mix_fraction(50, 100) == pytest.approx(0.25)
    assert train_generator.mix_fraction(100, 100) == train_generator.MIX_MAX


def test_generator_trainer_smoke_run_exports_and_resumes(tmp_path, capsys):
    state, export = tmp_path / "state.pt", tmp_path / "generator.pt"
    common = ["--batch", "2", "--log-every", "1", "--state", str(state), "--export", str(export)]
    train_generator.main(["--restart", "--steps", "2", *common])
    g = load_generator(export)
    assert g.size == train_generator.CONFIG.size and g.style_dim == train_generator.CONFIG.style_dim
    assert torch.load(export, weights_only=True)["train_step"] == 2
    capsys.readouterr()
    train_generator.main(["--steps", "3", *common])  # resumes from the state
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [entry["step"] for entry in logged if "step" in entry] == [3]
    # A fresh clone has no state: it continues from the export (and its code encoder).
    state.unlink()
    train_generator.main(["--steps", "4", *common])
    assert "warm_start" in capsys.readouterr().out
    assert torch.load(export, weights_only=True)["train_step"] == 4


def test_detail_variant_changes_only_the_detail_attributes_and_the_mask_marks_where_they_show():
    z, image, _code, mask = train_generator.make_batch(0, 3, 64, step=0, detail=True)
    for row in z:
        params = z_layout.params_of_z(row)
        variant = train_generator.detail_variant(params)
        changed = {a.name for a in ATTRIBUTES if getattr(variant, a.name) != getattr(params, a.name)}
        assert changed == set(train_generator.DETAIL_ATTRIBUTES)
    assert mask.shape == image.shape[:3] and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert 0.02 < mask.mean() < 0.5  # the face's small features, not the whole picture
    assert mask[:, :8].sum() == 0  # nothing in the top rows (background, hair, hats)
    same = train_generator.make_batch(0, 3, 64, step=0)
    assert np.array_equal(same[1], image)  # the batch itself does not depend on the mask


def test_pixel_weight_dilates_the_mask_and_weighted_loss_counts_masked_errors_more():
    mask = torch.zeros(1, 8, 8, dtype=torch.uint8)
    mask[0, 4, 4] = 1
    assert train_generator.pixel_weight(None, 5.0) is None
    assert train_generator.pixel_weight(mask, 0.0) is None
    weight = train_generator.pixel_weight(mask, 5.0)
    assert weight.shape == (1, 1, 8, 8)
    assert weight[0, 0, 3:6, 3:6].eq(6).all() and weight.sum() == 64 + 5 * 9
    target = torch.zeros(1, 3, 8, 8)
    ones = torch.ones(1, 1, 8, 8)
    inside, outside = target.clone(), target.clone()
    inside[..., 4, 4], outside[..., 0, 0] = 0.5, 0.5
    for img in (inside, outside):
        unweighted = train_generator.distillation_loss(img, target)
        assert train_generator.distillation_loss(img, target, ones) == unweighted
    assert (train_generator.distillation_loss(inside, target, weight)
            > 3 * train_generator.distillation_loss(outside, target, weight))


def test_generator_trainer_with_detail_weight_and_frozen_mapping_trains_only_the_synthesis(tmp_path):
    state, export = tmp_path / "state.pt", tmp_path / "generator.pt"
    train_generator.main(["--restart", "--steps", "1", "--batch", "2", "--state", str(state), "--export",
                          str(export)])
    before = torch.load(state, weights_only=True)["g"]
    train_generator.main(["--steps", "3", "--batch", "2", "--mode", "e2e", "--detail-weight", "4",
                          "--freeze-mapping", "--state", str(state), "--export", str(export)])
    after = torch.load(state, weights_only=True)["g"]
    mapping = [k for k in before if k.startswith("style.")]
    synthesis = [k for k in before if not k.startswith("style.") and before[k].is_floating_point()]
    assert mapping and all(torch.equal(before[k], after[k]) for k in mapping)
    assert any(not torch.equal(before[k], after[k]) for k in synthesis)


def test_generator_trainer_with_reused_renders_trains_and_resumes(tmp_path, capsys):
    state, export = tmp_path / "state.pt", tmp_path / "generator.pt"
    common = ["--batch", "2", "--reuse", "2", "--mode", "e2e", "--log-every", "1", "--state", str(state),
              "--export", str(export)]
    train_generator.main(["--restart", "--steps", "3", *common])
    train_generator.main(["--steps", "5", *common])  # resumes at an odd step: the buffer refills
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    losses = [entry["loss"] for entry in logged if "step" in entry]
    assert [entry["step"] for entry in logged if "step" in entry] == [1, 2, 3, 4, 5]
    assert all(math.isfinite(loss) for loss in losses)
    assert torch.load(export, weights_only=True)["train_step"] == 5
    for bad in (["--reuse", "0"], ["--detail-weight", "-1"]):
        with pytest.raises(SystemExit):
            train_generator.main([*bad, "--state", str(state), "--export", str(export)])
    assert "--reuse must be at least 1" in capsys.readouterr().err


def test_clip_trainer_smoke_run_exports_a_loadable_clip(tmp_path):
    state, export = tmp_path / "state.pt", tmp_path / "clip.pt"
    train_clip.main(["--restart", "--steps", "2", "--batch", "4", "--log-every", "1", "--state", str(state),
                     "--export", str(export)])
    ckpt = torch.load(export, weights_only=True)
    assert ckpt["train_step"] == 2
    features = ClipModel.load(export).encode_text(["a smiling face"])
    assert features.shape[-1] == train_clip.MODEL_KWARGS["embed_dim"]


def test_clip_trainer_resnet_tower_resumes_with_its_own_architecture(tmp_path):
    state, export = tmp_path / "state.pt", tmp_path / "clip.pt"
    common = ["--batch", "4", "--log-every", "1", "--state", str(state), "--export", str(export)]
    train_clip.main(["--restart", "--vision", "resnet", "--steps", "1", *common])
    # Resumed without --vision (the default is the ViT): the state's own ResNet config is used.
    train_clip.main(["--steps", "2", *common])
    ckpt = torch.load(export, weights_only=True)
    assert ckpt["train_step"] == 2 and ckpt["config"]["vision_layers"] == train_clip.RESNET_KWARGS["vision_layers"]
    model = ClipModel.load(export)
    assert model.input_resolution == 64
    assert model.encode_image(torch.zeros(1, 3, 64, 64)).shape == (1, train_clip.RESNET_KWARGS["embed_dim"])


def test_contrast_groups_vary_only_the_chosen_attributes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        params, mentions = train_clip.contrast_group(rng, 4, ("mouth", "earrings"))
        varied = {m[0] for m in mentions}
        assert len(varied) == 1 and varied <= {"mouth", "earrings"}
        labels = [labels_of(p) for p in params]
        for name in labels[0]:
            if name != next(iter(varied)) and name in DISCRETE_NAMES:
                assert len({lab[name] for lab in labels}) == 1, name
        assert len({lab[next(iter(varied))] for lab in labels}) == len(params)


def test_clip_trainer_continuation_restarts_its_schedule_and_keeps_it_on_resume(tmp_path):
    assert train_clip.lr_at(1000, 2000, 1.0, warmup=10, origin=1000) == pytest.approx(0.1)
    assert train_clip.lr_at(1900, 2000, 1.0, warmup=10) < 0.01  # without an origin: the end of the old cosine
    assert train_clip.lr_at(1900, 2900, 1.0, warmup=10, origin=1900) == pytest.approx(0.1)
    init, state, export = tmp_path / "init.pt", tmp_path / "state.pt", tmp_path / "clip.pt"
    common = ["--batch", "4", "--log-every", "1", "--state", str(state)]
    train_clip.main(["--restart", "--steps", "2", *common, "--export", str(init)])
    state.unlink()  # a fresh clone: no state, only the export to continue from
    common += ["--export", str(export)]
    train_clip.main(["--init", str(init), "--new-schedule", "--warmup", "1", "--steps", "3",
                     "--group-attrs", "mouth", "--group-frac", "1.0", *common])
    assert torch.load(state, weights_only=True)["schedule_origin"] == 2
    train_clip.main(["--steps", "4", *common])  # resumed: the origin comes from the state
    assert torch.load(state, weights_only=True)["schedule_origin"] == 2
    with pytest.raises(SystemExit, match="lips"):
        train_clip.main(["--restart", "--steps", "1", "--group-attrs", "lips", *common])
    with pytest.raises(SystemExit, match="nothing to train: the run is at step 4"):
        train_clip.main(["--steps", "3", *common])  # a step count below the run's, not a silent no-op


def test_clip_trainer_with_a_locked_text_tower_changes_only_the_image_tower(tmp_path):
    init, state, export = tmp_path / "init.pt", tmp_path / "state.pt", tmp_path / "clip.pt"
    common = ["--batch", "4", "--log-every", "1", "--state", str(state)]
    train_clip.main(["--restart", "--steps", "1", *common, "--export", str(init)])
    state.unlink()
    train_clip.main(["--init", str(init), "--freeze-text", "--new-schedule", "--warmup", "1", "--steps", "3",
                     *common, "--export", str(export)])
    before = torch.load(init, weights_only=True)["state_dict"]
    after = torch.load(export, weights_only=True)["state_dict"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("visual.") for k in changed), sorted(changed)[:5]


def test_hard_negative_captions_swap_one_attribute_and_keep_the_true_caption_first():
    from styleclip.toyfaces.renderer import NUM_PARAMS, labels_of, params_from_normal, set_attribute

    rng = np.random.default_rng(0)
    varied = set()
    for _ in range(30):
        params = params_from_normal(rng.standard_normal(NUM_PARAMS))
        state = rng.bit_generator.state
        texts, name, values = train_clip.hard_negative_captions(params, rng, 0.3, 4, ("mouth", "facial_hair"))
        varied.add(name)
        assert name in ("mouth", "facial_hair") and 2 <= len(texts) == len(values) <= 4
        assert values[0] == labels_of(params)[name] and len(set(values)) == len(values)
        # A pure function of the random state (batches are replayed on resume).
        replay = np.random.default_rng()
        replay.bit_generator.state = state
        again = train_clip.hard_negative_captions(params, replay, 0.3, 4, ("mouth", "facial_hair"))
        assert again == (texts, name, values)
        assert len(set(texts)) == len(texts) and all(
            set_attribute(params, name, v) != params for v in values[1:])
    assert varied == {"mouth", "facial_hair"}


def test_hard_negative_loss_rewards_the_true_caption_and_ignores_padding():
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    texts = torch.nn.functional.normalize(torch.tensor([[[1.0, 0.1], [0.0, 1.0], [1.0, 0.1]],
                                                        [[0.1, 1.0], [1.0, 0.0], [0.7, 0.7]]]), dim=-1)
    tokens = torch.tensor([[[1, 2], [3, 4], [1, 2]], [[5, 6], [7, 8], [9, 9]]])  # row 0's third: padding
    right = train_clip.hard_negative_loss(image, texts, tokens, torch.tensor(20.0))
    wrong = train_clip.hard_negative_loss(image.flip(0), texts, tokens, torch.tensor(20.0))
    assert right < 0.05 < wrong
    # Padding (a repeat of the true caption) must not count as a rival: row 0 alone is then a two-way choice.
    two_way = train_clip.hard_negative_loss(image[:1], texts[:1, :2], tokens[:1, :2], torch.tensor(20.0))
    torch.testing.assert_close(train_clip.hard_negative_loss(image[:1], texts[:1], tokens[:1], torch.tensor(20.0)),
                               two_way)


def test_clip_trainer_with_swapped_captions_trains_the_text_tower_unless_it_is_locked(tmp_path):
    init, state, export = tmp_path / "init.pt", tmp_path / "state.pt", tmp_path / "clip.pt"
    common = ["--batch", "4", "--log-every", "1", "--state", str(state)]
    train_clip.main(["--restart", "--steps", "1", *common, "--export", str(init)])
    before = torch.load(init, weights_only=True)["state_dict"]
    for locked in (True, False):
        state.unlink()
        train_clip.main(["--init", str(init), *(["--freeze-text"] if locked else []), "--negatives", "3",
                         "--negative-attrs", "mouth,age", "--new-schedule", "--warmup", "1", "--steps", "3", *common,
                         "--export", str(export)])
        after = torch.load(export, weights_only=True)
        assert after["train_step"] == 3
        text_changed = any(not torch.equal(before[k], after["state_dict"][k]) for k in before
                           if k.startswith("transformer."))
        assert text_changed is not locked
    img, tokens, negatives = train_clip.batch_at(0, 0, 4, 0.4, negatives=3, negative_attrs=("mouth",))
    assert img.shape == (4, 3, 64, 64) and negatives.shape == (4, 3, 77) and torch.equal(negatives[:, 0], tokens)


def test_attribute_heads_read_the_renderers_labels_and_skip_hidden_attributes():
    from styleclip.toyfaces.renderer import NUM_PARAMS, labels_of, observable, params_from_normal

    rng = np.random.default_rng(3)
    params = [params_from_normal(rng.standard_normal(NUM_PARAMS)) for _ in range(8)]
    labels, visible = train_clip.label_tensors(params)
    names = [a.name for a in train_clip.DISCRETE]
    assert labels.shape == visible.shape == (8, len(names)) and "mouth" in names and "face_width" not in names
    assert labels[5, names.index("mouth")] == labels_of(params[5])["mouth"]
    assert visible[:, names.index("eye_color")].tolist() == [observable(p)["eye_color"] for p in params]
    # With the batch's labels appended, the rest of the batch is unchanged.
    plain = train_clip.batch_at(0, 0, 4, 0.4, negatives=3)
    labelled = train_clip.batch_at(0, 0, 4, 0.4, negatives=3, labels=True)
    assert len(labelled) == 5 and all(torch.equal(a, b) for a, b in zip(plain, labelled))

    heads = train_clip.AttributeHeads(6)
    for head in heads.heads:  # a head that reads the label off feature 0 exactly
        torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)
        head.weight.data[:, 0] = 50.0 * torch.arange(head.out_features)
        head.bias.data = -25.0 * torch.arange(head.out_features) ** 2
    features = torch.zeros(8, 6)
    features[:, 0] = labels[:, 0].float()  # right for attribute 0, mostly wrong for the others
    accuracy = heads.accuracy(features, labels, visible)
    assert accuracy[names[0]] == 1.0 and min(accuracy.values()) < 1.0
    one = torch.zeros_like(visible)
    one[:, 0] = True  # only attribute 0 counts: its loss is near 0
    assert heads.loss(features, labels, one) < 1e-3 < heads.loss(features, labels, visible)


def test_clip_trainer_with_attribute_heads_keeps_them_beside_the_clip_weights(tmp_path):
    state, export = tmp_path / "state.pt", tmp_path / "clip.pt"
    common = ["--batch", "4", "--log-every", "1", "--state", str(state), "--export", str(export)]
    train_clip.main(["--restart", "--steps", "2", "--attr-heads", "1", "--negatives", "3", *common])
    saved = torch.load(state, weights_only=True)
    assert saved["step"] == 2 and len(saved["heads"]) == 2 * len(train_clip.DISCRETE)
    exported = torch.load(export, weights_only=True)
    assert not any("head" in k for k in exported["state_dict"])
    assert ClipModel.load(export).embed_dim == 256  # the heads beside the weights do not disturb the loader
    train_clip.main(["--steps", "3", "--attr-heads", "1", "--negatives", "3", *common])  # resumes with its heads
    assert torch.load(state, weights_only=True)["step"] == 3
    with pytest.raises(SystemExit, match="--attr-heads"):
        train_clip.main(["--steps", "4", "--negatives", "3", *common])
    # A fresh clone has only the export: a continuation from it starts with the exported heads.
    heads_at_3 = torch.load(export, weights_only=True)["attribute_heads"]
    state.unlink()
    train_clip.main(["--init", str(export), "--state", str(state), "--export", str(tmp_path / "next.pt"),
                     "--steps", "4", "--attr-heads", "1", "--batch", "4", "--lr", "0"])
    assert all(torch.equal(v, torch.load(state, weights_only=True)["heads"][k]) for k, v in heads_at_3.items())


def test_encoder_margin_loss_singles_out_an_ignored_attribute_and_training_on_it_separates_it(tmp_path, capsys):
    torch.manual_seed(0)
    encoder = train_generator.CodeEncoder(128)
    code = torch.from_numpy(fit_mapping.code_pool(128, seed=4)[1])
    _, offset, width = next(block for block in z_layout.code_blocks() if block[0] == "lipstick")
    with torch.no_grad():
        encoder.net[0].weight[:, offset:offset + width] = 0  # the encoder ignores lipstick: w never moves for it
    blind = train_generator.encoder_margin_loss(encoder, code, margin=0.1)
    # Lipstick gives a shortfall of (almost) 1, its distance being 0, so the mean is at least about 1 / n.
    assert blind.item() >= 0.99 / len(z_layout.code_blocks())
    assert train_generator.encoder_margin_loss(encoder, code, margin=1e-4).item() < blind.item()
    opt = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    for _ in range(30):
        loss = train_generator.encoder_margin_loss(encoder, code, margin=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert train_generator.encoder_margin_loss(encoder, code, margin=0.1).item() < 0.5 * blind.item()
    # The trainer takes it as an option in code mode and logs the term.
    train_generator.main(["--restart", "--steps", "2", "--batch", "2", "--margin-weight", "1", "--log-every", "1",
                          "--state", str(tmp_path / "s.pt"), "--export", str(tmp_path / "g.pt")])
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"step"' in line]
    assert [e["step"] for e in logged] == [1, 2] and all(math.isfinite(e["margin"]) for e in logged)
    with pytest.raises(SystemExit):
        train_generator.main(["--encoder-margin", "0", "--state", str(tmp_path / "s.pt")])


def test_decoding_agreement_is_perfect_for_the_encoders_own_w_and_drops_for_a_wrong_one():
    encoder = train_generator.CodeEncoder(128)
    z, code = (torch.from_numpy(a) for a in fit_mapping.code_pool(64, seed=3))
    exact = fit_mapping.agreement(lambda _: encoder(code), encoder, z, code)
    assert set(exact) == {a.name for a in ATTRIBUTES if a.kind == "discrete"}
    assert all(v == 1.0 for v in exact.values())
    shuffled = fit_mapping.agreement(lambda _: encoder(code.flip(0)), encoder, z, code)
    assert min(shuffled.values()) < 0.9


def test_fit_mapping_smoke_run_builds_frozen_thresholds_and_records_the_fit(tmp_path):
    export, out = tmp_path / "generator.pt", tmp_path / "fitted.pt"
    train_generator.main(["--restart", "--steps", "1", "--batch", "2", "--state", str(tmp_path / "s.pt"),
                          "--export", str(export)])
    fit_mapping.main(["--generator", str(export), "--out", str(out), "--steps", "3", "--pool", "256",
                      "--batch", "32", "--sharpness", "30", "--n-mlp", "5", "--log-every", "1"])
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["threshold_sharpness"] == 30.0 and ckpt["mapping_fit"]["steps"] == 3
    assert "code_encoder" in ckpt and ckpt["train_step"] == 1
    g = load_generator(out)
    assert g.config.n_mlp == 5
    # The stored first layers are the threshold detectors, which a warm start freezes again.
    state = train_generator.warm_start(out, seed=0)
    assert state["sharpness"] == 30.0 and not state["g"].style[1].weight.requires_grad


def test_adversarial_consistency_finds_a_worse_perturbation_than_noise_and_trains_it_away(tmp_path):
    from styleclip.models.clip_model import build_small_clip

    model = build_small_clip(**train_clip.MODEL_KWARGS, seed=0)
    img = train_clip.batch_at(0, 0, 6, 0.4)[0]
    seeded = functools.partial(torch.Generator().manual_seed, 5)
    assert train_clip.adversarial_consistency(model, img, 0.0, 2, seeded()).item() == pytest.approx(0.0, abs=1e-6)
    attacked = train_clip.adversarial_consistency(model, img, 0.03, 2, seeded())
    noise = (torch.rand(img.shape, generator=seeded()) * 2 - 1) * 0.03
    with torch.no_grad():
        clean = train_clip.image_features_of(model, img)
        by_noise = (train_clip.image_features_of(model, img + noise) - clean).pow(2).sum(-1).mean()
    assert attacked > 2 * by_noise
    again = train_clip.adversarial_consistency(model, img, 0.03, 2, seeded())
    torch.testing.assert_close(again, attacked)  # the same random start, the same perturbation
    attacked.backward()  # the term trains the image tower only
    assert model.visual.conv1.weight.grad is not None and model.token_embedding.weight.grad is None

    generator = make_tiny_generator()
    fakes = train_clip.generated_batch(generator, 3, 0.5, 64, torch.Generator().manual_seed(1))
    assert fakes.shape == (3, 3, 64, 64) and fakes.abs().max() <= 1
    torch.testing.assert_close(train_clip.generated_batch(generator, 3, 0.5, 64, torch.Generator().manual_seed(1)),
                               fakes)
    still = train_clip.generated_batch(generator, 3, 0.0, 64, torch.Generator().manual_seed(1))
    assert (still - fakes).abs().mean() > 1e-3  # the W+ jitter moves the pictures

    gen_path, state, export = tmp_path / "g.pt", tmp_path / "state.pt", tmp_path / "clip.pt"
    save_generator(generator, gen_path)
    train_clip.main(["--restart", "--steps", "2", "--batch", "4", "--log-every", "1", "--adv-weight", "4",
                     "--adv-generated", "2", "--adv-generator", str(gen_path), "--state", str(state),
                     "--export", str(export)])
    assert torch.load(export, weights_only=True)["train_step"] == 2


def test_counterfactual_twins_differ_only_in_the_swapped_captions_attribute():
    from styleclip.toyfaces.renderer import NUM_PARAMS, labels_of, params_from_normal

    plain = train_clip.batch_at(0, 0, 6, 0.4, negatives=3, labels=True)
    out = train_clip.batch_at(0, 0, 6, 0.4, negatives=3, labels=True, counterfactuals=4)
    assert len(out) == 8 and all(torch.equal(a, b) for a, b in zip(plain[:3], out[:3]))
    assert torch.equal(plain[3], out[6]) and torch.equal(plain[4], out[7])  # the twins leave the batch alone
    twin_img, twin_of, pairs = out[3:6]
    assert twin_img.shape == (len(twin_of), 3, 64, 64) and 0 < len(twin_of) <= 4
    assert torch.equal(pairs, out[2][twin_of, :2])  # by default: the face's caption and its first swapped one
    # The same face with one attribute changed: close to its original, far from the other faces.
    for c, i in enumerate(twin_of.tolist()):
        own = (twin_img[c] - out[0][i]).abs().mean()
        others = min((twin_img[c] - out[0][j]).abs().mean() for j in range(6) if j != i)
        assert 0 < own < others
    # The twin takes the value of the face's first swapped caption, and only that attribute changes.
    rng = np.random.default_rng([0, 0, 1])
    params = [params_from_normal(rng.standard_normal(NUM_PARAMS)) for _ in range(6)]
    texts, name, values = train_clip.hard_negative_captions(params[0], rng, 0.4, 3)
    assert len(texts) > 1 and twin_of[0] == 0  # face 0 has a swapped caption, so it has the first twin
    twin = labels_of(train_clip.set_attribute(params[0], name, values[1]))
    own = labels_of(params[0])
    assert twin[name] != own[name]
    assert [k for k in own if own[k] != twin[k]] == [name]

    # Twins on attributes of their own choosing: the batch is unchanged, the pairs name those attributes.
    chosen = train_clip.batch_at(0, 0, 6, 0.4, negatives=3, labels=True, counterfactuals=6,
                                 direction_attrs=("background",))
    assert all(torch.equal(a, b) for a, b in zip(out[:3], chosen[:3])) and len(chosen[4]) == 6
    words = [train_clip.clip.simple_tokenizer.SimpleTokenizer().decode(
        [t for t in row.tolist() if 0 < t < 49406]) for row in chosen[5][:, 1]]
    assert all("background" in w or "backdrop" in w for w in words), words


def test_direction_loss_is_zero_when_image_and_text_change_agree_and_trainer_runs_with_it(tmp_path):
    image = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    change = torch.randn(2, 8)
    twins = torch.nn.functional.normalize(image[[0, 2]] + 0.1 * change, dim=-1)
    pairs = torch.randn(2, 2, 8)
    pairs[:, 1] = pairs[:, 0] + 3 * (twins - image[[0, 2]])  # text change along image change
    of = torch.tensor([0, 2])
    assert train_clip.direction_loss(image, twins, of, pairs) < 1e-5
    pairs[:, 1] = pairs[:, 0] - (twins - image[[0, 2]])  # opposite: the largest loss, 2
    assert abs(train_clip.direction_loss(image, twins, of, pairs) - 2) < 1e-5

    common = ["--batch", "4", "--log-every", "1", "--state", str(tmp_path / "s.pt"), "--export",
              str(tmp_path / "c.pt")]
    with pytest.raises(SystemExit, match="--negatives"):
        train_clip.main(["--restart", "--steps", "1", "--direction-weight", "1", *common])
    train_clip.main(["--restart", "--steps", "2", "--negatives", "3", "--direction-weight", "1",
                     "--counterfactuals", "2", *common])
    train_clip.main(["--steps", "3", "--negatives", "3", "--direction-weight", "1", "--direction-attrs",
                     "hat,background", *common])
    assert torch.load(tmp_path / "s.pt", weights_only=True)["step"] == 3
    with pytest.raises(SystemExit, match="--direction-attrs"):
        train_clip.main(["--steps", "4", "--negatives", "3", "--direction-weight", "1", "--direction-attrs", "hats",
                         *common])
