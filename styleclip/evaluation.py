"""The edit benchmark shared by every engine: attribute success and preservation, read by the toyfaces classifier.

An edit is an `EditSpec` (a text pair plus the attribute value it should produce). `evaluate_edits` runs an
engine-agnostic edit function `edit_fn(spec, seed) -> img [1, 3, R, R]` over seeds, and the attribute classifier
(a measuring instrument, never used to make edits) reads both the source and the edited image:

- success: the edited image's predicted value of `spec.attribute` is one of the target values, counted over seeds
  whose source did not already have it (those are skipped and reported, and `edit_fn` is not called for them);
- preservation: the fraction of the other discrete attributes whose predicted label is unchanged, averaged over
  the edited seeds; continuous attributes are reported as the mean absolute change of their predicted value.

Attributes that cannot be seen are not scored, with the renderer's visibility rules applied to the *predicted*
labels of each image (generated images have no ground-truth params): `eyes` and `eye_color` are hidden behind
sunglasses and `eye_color` behind closed eyes. A seed whose source hides the edited attribute is skipped as
"hidden"; an edit that hides it (e.g. sunglasses instead of closed eyes) counts as a failure.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .models.device import module_device
from .toyfaces.attributes import ATTRIBUTES, attribute

if TYPE_CHECKING:
    from .studio import LoadedModel
    from .toyfaces.classifier import AttributeClassifier

__all__ = [
    "BENCHMARK_EDITS",
    "HELDOUT_EDITS",
    "EditFailed",
    "EditFn",
    "EditReport",
    "EditRow",
    "EditSpec",
    "SourceFn",
    "evaluate_edits",
    "format_report",
    "global_directions_edit",
    "mapper_edit",
    "mapper_paths_in",
    "model_source_fn",
    "optimization_edit",
]

_MOST_CHANGED = 3  # how many of the most often changed other attributes a row lists
MODEL_DEFAULT = "model"  # a setting left to the model bundle


@dataclass(frozen=True)
class EditSpec:
    """One benchmark edit.

    Attributes:
        name: short label, also the mapper file stem with spaces as underscores ("blond hair" → blond_hair.pt).
        attribute: the discrete attribute the edit should change (a name in attributes.ATTRIBUTES).
        target_value: the value it should produce, or a tuple of accepted values (e.g. any hat).
        neutral: neutral text (global directions).
        target: target text (global directions, mapper training, optimization).
    """

    name: str
    attribute: str
    target_value: str | tuple[str, ...]
    neutral: str
    target: str

    def __post_init__(self) -> None:
        attr = attribute(self.attribute)  # raises ValueError naming the known attributes
        if attr.kind != "discrete":
            raise ValueError(
                f"{self.name}: attribute {self.attribute!r} is continuous; benchmark edits need a "
                "discrete one"
            )
        if not self.target_values:
            raise ValueError(f"{self.name}: no target value")
        for value in self.target_values:
            attr.index(value)  # raises ValueError listing the attribute's values

    @property
    def target_values(self) -> tuple[str, ...]:
        """The accepted values as a tuple."""
        return (self.target_value,) if isinstance(self.target_value, str) else tuple(self.target_value)

    @property
    def target_indices(self) -> tuple[int, ...]:
        """Indices of the accepted values in `Attribute.values` (the classifier's class order)."""
        attr = attribute(self.attribute)
        return tuple(attr.index(v) for v in self.target_values)


# Targets use the embedded CLIP's training vocabulary (toyfaces/captions.py): its captions name hats only as
# "a cap", "a beanie", "a knit hat"…, and the bare word "hat" only in "no hat", so this CLIP reads "a face with a
# hat" as a face without one (benchmarks/bench_prompt_vocabulary.py).
BENCHMARK_EDITS: tuple[EditSpec, ...] = (
    EditSpec("smiling", "mouth", "smiling", "face", "smiling face"),
    EditSpec("blond hair", "hair_color", "blond", "face", "face with blond hair"),
    EditSpec("black hair", "hair_color", "black", "face", "face with black hair"),
    EditSpec("glasses", "glasses", ("round", "square"), "face", "face with glasses"),
    EditSpec("sunglasses", "glasses", "sunglasses", "face", "face with sunglasses"),
    EditSpec("beard", "facial_hair", "beard", "face", "face with a beard"),
    EditSpec("eyes closed", "eyes", "closed", "face", "face with closed eyes"),
    EditSpec("hat", "hat", ("cap", "beanie"), "face", "face with a knit hat"),
    EditSpec("purple background", "background", "purple", "face", "face with a purple background"),
    EditSpec("old", "age", "old", "face", "old face"),
    EditSpec("lipstick", "lipstick", "lipstick", "face", "face with lipstick"),
)

# Edits kept out of every tuning decision, to check that a setting chosen on BENCHMARK_EDITS generalises
# (`bench_edits.py --edit-set heldout`); same vocabulary rule.
HELDOUT_EDITS: tuple[EditSpec, ...] = (
    EditSpec("red hair", "hair_color", "red", "face", "face with red hair"),
    EditSpec("pink hair", "hair_color", "pink", "face", "face with pink hair"),
    EditSpec("bald", "hair_style", "bald", "face", "bald face"),
    EditSpec("curly hair", "hair_style", "curly", "face", "face with curly hair"),
    EditSpec("frowning", "mouth", "frowning", "face", "frowning face"),
    EditSpec("surprised", "mouth", "surprised", "face", "surprised face"),
    EditSpec("moustache", "facial_hair", "moustache", "face", "face with a moustache"),
    EditSpec("earrings", "earrings", "earrings", "face", "face with earrings"),
    EditSpec("rosy cheeks", "blush", "blush", "face", "face with rosy cheeks"),
    EditSpec("big nose", "nose", "big", "face", "face with a big nose"),
    EditSpec("blue eyes", "eye_color", "blue", "face", "face with blue eyes"),
    EditSpec("black background", "background", "black", "face", "face with a black background"),
)

EditFn = Callable[[EditSpec, int], torch.Tensor]
"""edit_fn(spec, seed) -> edited img float [1, 3, R, R] in [-1, 1]; may raise EditFailed.

Optional attributes read by evaluate_edits: `supports(spec) -> bool` (False skips the whole spec) and
`describe(spec) -> str` (a note for the row, e.g. the beta and channel count used).
"""

SourceFn = Callable[[int], torch.Tensor]
"""source_fn(seed) -> source img float [1, 3, R, R] in [-1, 1]."""


class EditFailed(RuntimeError):
    """An edit function could not produce an image for this seed; counted as a failure, its message noted."""


@dataclass(frozen=True)
class EditRow:
    """The benchmark result of one EditSpec.

    Attributes:
        spec: the edit.
        num_seeds: seeds given.
        attempted: seeds counted for success (source lacked the target and showed the attribute).
        succeeded: attempted seeds whose edited image shows a target value.
        skipped_already: seeds whose source already had a target value (not edited).
        skipped_hidden: seeds whose source hides the attribute (e.g. eyes behind sunglasses; not edited).
        failed: attempted seeds whose edit raised EditFailed (counted as failures, no preservation).
        success: succeeded / attempted, None when nothing was attempted.
        preservation: mean over edited seeds of the fraction of visible other discrete attributes unchanged.
        continuous_change: continuous attribute → mean |edited − source| of its predicted value.
        most_changed: up to 3 (other attribute, fraction of edited seeds where its label changed), largest first.
        misses: where the edited attribute landed on the edited seeds that missed the target: (value, count),
            most frequent first; "unchanged" counts seeds whose value stayed the source's, "hidden" those where
            the edit hid it (the failure pattern: too weak, or pushed to a neighbouring value).
        seconds_per_edit: mean wall time of one edit_fn call (None when none ran).
        skipped: True when the edit function does not support the spec at all (e.g. no mapper for it).
        notes: messages (failures with their counts, the edit function's description).
    """

    spec: EditSpec
    num_seeds: int
    attempted: int = 0
    succeeded: int = 0
    skipped_already: int = 0
    skipped_hidden: int = 0
    failed: int = 0
    success: float | None = None
    preservation: float | None = None
    continuous_change: dict[str, float] = field(default_factory=dict)
    most_changed: tuple[tuple[str, float], ...] = ()
    misses: tuple[tuple[str, int], ...] = ()
    seconds_per_edit: float | None = None
    skipped: bool = False
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "name": self.spec.name,
            "attribute": self.spec.attribute,
            "target_values": list(self.spec.target_values),
            "neutral": self.spec.neutral,
            "target": self.spec.target,
            "num_seeds": self.num_seeds,
            "attempted": self.attempted,
            "succeeded": self.succeeded,
            "skipped_already": self.skipped_already,
            "skipped_hidden": self.skipped_hidden,
            "failed": self.failed,
            "success": self.success,
            "preservation": self.preservation,
            "continuous_change": dict(self.continuous_change),
            "most_changed": [list(m) for m in self.most_changed],
            "misses": [list(m) for m in self.misses],
            "seconds_per_edit": self.seconds_per_edit,
            "skipped": self.skipped,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class EditReport:
    """Per-spec rows plus macro means (each spec with data weighs the same).

    Attributes:
        rows: one EditRow per spec, in the order given.
        seeds: the seeds used.
        success: mean of the rows' success (None when no row has one).
        preservation: mean of the rows' preservation.
        continuous_change: continuous attribute → mean of the rows' mean absolute change.
        label: free text naming the engine and its settings (shown by format_report).
    """

    rows: tuple[EditRow, ...]
    seeds: tuple[int, ...]
    success: float | None
    preservation: float | None
    continuous_change: dict[str, float]
    label: str = ""

    def row(self, name: str) -> EditRow:
        """The row of the spec called `name`; raises KeyError listing the names."""
        for r in self.rows:
            if r.spec.name == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {[r.spec.name for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "label": self.label,
            "seeds": list(self.seeds),
            "success": self.success,
            "preservation": self.preservation,
            "continuous_change": dict(self.continuous_change),
            "rows": [r.to_dict() for r in self.rows],
        }


# ------------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class _Reading:
    """The classifier's reading of a batch: discrete labels [N] (long), continuous values [N], visibility [N]."""

    labels: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    visible: dict[str, torch.Tensor]


def _read(classifier: AttributeClassifier, img: torch.Tensor, batch: int = 64) -> _Reading:
    """Classifies img [N, 3, H, W] (any device) in chunks of `batch`; the readings are on the CPU."""
    preds: dict[str, list[torch.Tensor]] = {}
    device = module_device(classifier)
    for i in range(0, img.shape[0], batch):
        for name, p in classifier.predict(img[i : i + batch].to(device)).items():
            preds.setdefault(name, []).append(p.cpu())
    kinds = {a.name: a.kind for a in ATTRIBUTES}
    labels, values = {}, {}
    for name, parts in preds.items():
        p = torch.cat(parts)
        if kinds.get(name) == "discrete":
            labels[name] = p.argmax(dim=1)  # [N]
        elif kinds.get(name) == "continuous":
            values[name] = p.float()  # [N]
    return _Reading(labels, values, _visible(labels, img.shape[0]))


def _visible(labels: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """renderer.observable applied to predicted labels: name → bool [N]."""
    visible = {name: torch.ones(n, dtype=torch.bool) for name in labels}
    hidden_by_glasses = torch.zeros(n, dtype=torch.bool)
    if "glasses" in labels:
        hidden_by_glasses = labels["glasses"] == attribute("glasses").index("sunglasses")
    closed = torch.zeros(n, dtype=torch.bool)
    if "eyes" in labels:
        closed = labels["eyes"] == attribute("eyes").index("closed")
        visible["eyes"] = ~hidden_by_glasses
    if "eye_color" in labels:
        visible["eye_color"] = ~hidden_by_glasses & ~closed
    return visible


def _take(reading: _Reading, index: list[int]) -> _Reading:
    idx = torch.as_tensor(index, dtype=torch.long)
    return _Reading(
        {k: v[idx] for k, v in reading.labels.items()},
        {k: v[idx] for k, v in reading.values.items()},
        {k: v[idx] for k, v in reading.visible.items()},
    )


# ------------------------------------------------------------------------------------------------- benchmark
def model_source_fn(loaded: LoadedModel) -> SourceFn:
    """The source image of a seed as the app renders it: synthesis of `loaded.source_w_plus(seed)` → [1, 3, R, R]."""

    def source(seed: int) -> torch.Tensor:
        with torch.inference_mode():
            return loaded.generator.synthesis_w_plus(loaded.source_w_plus(seed))

    return source


def evaluate_edits(
    loaded_model: LoadedModel | None,
    classifier: AttributeClassifier,
    edit_fn: EditFn,
    specs: Sequence[EditSpec] = BENCHMARK_EDITS,
    seeds: Sequence[int] = tuple(range(50)),
    *,
    source_fn: SourceFn | None = None,
    label: str = "",
    progress: Callable[[int, int, str], None] | None = None,
) -> EditReport:
    """Runs `edit_fn` over specs × seeds and scores the results with the classifier.

    Args:
        loaded_model: the model whose seeds are edited; only used for the default `source_fn`.
        classifier: the attribute classifier (toyfaces.classifier.load_classifier()).
        edit_fn: edit_fn(spec, seed) -> img float [1, 3, R, R] in [-1, 1]; called only for seeds counted for
            success. It may raise EditFailed (a failure, noted), and may have `supports(spec) -> bool` (False
            skips the spec) and `describe(spec) -> str` (noted).
        specs: the edits, default BENCHMARK_EDITS.
        seeds: source seeds (the app's convention: numpy RandomState(seed) z at the bundle's truncation).
        source_fn: source_fn(seed) -> img [1, 3, R, R]; default `model_source_fn(loaded_model)`.
        label: text naming the engine and its settings, kept in the report.
        progress: progress(done, total, stage) after each edit_fn call; total is specs × seeds (an upper bound).

    Returns:
        EditReport with one row per spec and macro means.

    Raises:
        ValueError: no seeds, duplicate seeds, or neither a model nor a source_fn.
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("evaluate_edits needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"evaluate_edits got duplicate seeds: {seeds}")
    if source_fn is None:
        if loaded_model is None:
            raise ValueError("evaluate_edits needs a loaded model or a source_fn")
        source_fn = model_source_fn(loaded_model)
    sources = _read(
        classifier, torch.cat([source_fn(s).detach().float() for s in seeds])
    )  # [S, 3, R, R] read
    supports = getattr(edit_fn, "supports", None)
    describe = getattr(edit_fn, "describe", None)
    total, done = len(specs) * len(seeds), 0
    rows = []
    for spec in specs:
        if supports is not None and not supports(spec):
            rows.append(
                EditRow(spec, len(seeds), skipped=True, notes=("not supported by this edit function",))
            )
            continue
        target = torch.as_tensor(spec.target_indices)
        already = torch.isin(sources.labels[spec.attribute], target)
        shown = sources.visible[spec.attribute]
        todo = [i for i in range(len(seeds)) if shown[i] and not already[i]]
        notes: Counter[str] = Counter()
        edited_idx, imgs, seconds = [], [], []
        for i in todo:
            t0 = time.perf_counter()
            try:
                img = edit_fn(spec, seeds[i])
            except EditFailed as exc:
                notes[f"failed: {exc}"] += 1
            else:
                if img.dim() != 4 or img.shape[:2] != (1, 3):
                    raise ValueError(
                        f"edit_fn must return img [1, 3, R, R], got {tuple(img.shape)} for "
                        f"{spec.name!r}, seed {seeds[i]}"
                    )
                edited_idx.append(i)
                imgs.append(img.detach().float())
            seconds.append(time.perf_counter() - t0)
            done += 1
            if progress is not None:
                progress(done, total, f"{spec.name} seed {seeds[i]}")
        if describe is not None:
            notes[str(describe(spec))] += 1
        rows.append(
            _score(
                spec,
                len(seeds),
                sources,
                todo,
                edited_idx,
                imgs,
                classifier,
                seconds,
                notes,
                skipped_already=int((already & shown).sum()),
                skipped_hidden=int((~shown).sum()),
            )
        )
    return _summarise(tuple(rows), seeds, label)


def _score(
    spec: EditSpec,
    num_seeds: int,
    sources: _Reading,
    todo: list[int],
    edited_idx: list[int],
    imgs: list[torch.Tensor],
    classifier: AttributeClassifier,
    seconds: list[float],
    notes: Counter[str],
    skipped_already: int,
    skipped_hidden: int,
) -> EditRow:
    note_list = tuple(f"{msg} (x{n})" if n > 1 else msg for msg, n in notes.items())
    common = {
        "spec": spec,
        "num_seeds": num_seeds,
        "attempted": len(todo),
        "skipped_already": skipped_already,
        "skipped_hidden": skipped_hidden,
        "failed": len(todo) - len(edited_idx),
        "seconds_per_edit": sum(seconds) / len(seconds) if seconds else None,
        "notes": note_list,
    }
    if not edited_idx:
        return EditRow(**common, success=0.0 if todo else None)
    src, out = _take(sources, edited_idx), _read(classifier, torch.cat(imgs))
    target = torch.as_tensor(spec.target_indices)
    hit = torch.isin(out.labels[spec.attribute], target) & out.visible[spec.attribute]
    succeeded = int(hit.sum())
    others = [name for name in src.labels if name != spec.attribute]
    kept = torch.zeros(len(edited_idx))
    scored = torch.zeros(len(edited_idx))
    changed: dict[str, float] = {}
    for name in others:
        both = src.visible[name] & out.visible[name]  # [E]
        same = (src.labels[name] == out.labels[name]) & both
        kept += same.float()
        scored += both.float()
        if both.any():
            changed[name] = float((~same & both).sum()) / float(both.sum())
    per_seed = kept[scored > 0] / scored[scored > 0]
    most = sorted(((n, f) for n, f in changed.items() if f > 0), key=lambda nf: (-nf[1], nf[0]))[
        :_MOST_CHANGED
    ]
    return EditRow(
        **common,
        misses=_misses(spec, src, out, hit),
        succeeded=succeeded,
        success=succeeded / len(todo),
        preservation=float(per_seed.mean()) if per_seed.numel() else None,
        continuous_change={
            name: float((out.values[name] - src.values[name]).abs().mean()) for name in src.values
        },
        most_changed=tuple(most),
    )


def _misses(spec: EditSpec, src: _Reading, out: _Reading, hit: torch.Tensor) -> tuple[tuple[str, int], ...]:
    """(value, count) of the edited attribute on the seeds that missed the target (see EditRow.misses)."""
    values = attribute(spec.attribute).values
    landed: Counter[str] = Counter()
    for i in torch.nonzero(~hit).flatten().tolist():
        if not bool(out.visible[spec.attribute][i]):
            landed["hidden"] += 1
        elif int(out.labels[spec.attribute][i]) == int(src.labels[spec.attribute][i]):
            landed["unchanged"] += 1
        else:
            landed[values[int(out.labels[spec.attribute][i])]] += 1
    return tuple(sorted(landed.items(), key=lambda vc: (-vc[1], vc[0])))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _summarise(rows: tuple[EditRow, ...], seeds: tuple[int, ...], label: str) -> EditReport:
    names = sorted({n for r in rows for n in r.continuous_change})
    return EditReport(
        rows,
        seeds,
        success=_mean([r.success for r in rows if r.success is not None]),
        preservation=_mean([r.preservation for r in rows if r.preservation is not None]),
        continuous_change={
            n: sum(v) / len(v)
            for n in names
            if (v := [r.continuous_change[n] for r in rows if n in r.continuous_change])
        },
        label=label,
    )


# ------------------------------------------------------------------------------------------------- edit functions
class _GlobalDirectionsEdit:
    """edit_fn for global directions: s_of_seed + alpha·Δs(beta), beta from auto_beta when None."""

    def __init__(self, loaded: LoadedModel, alpha: float, beta: float | None,
                 source_s: Callable[[int], torch.Tensor] | None = None,
                 relevance_shrinkage: float | None | str = MODEL_DEFAULT, auto_beta_floor: int | None = None):
        from .engines.global_directions import GlobalDirections

        self.loaded, self.alpha, self.beta = loaded, float(alpha), beta
        self.auto_beta_floor = loaded.bundle.auto_beta_floor if auto_beta_floor is None else int(auto_beta_floor)
        self.source_s = source_s or loaded.s_of_seed
        self.engine = loaded.engine()  # raises MissingStatisticsError (a ValueError) before any work
        if relevance_shrinkage != MODEL_DEFAULT and relevance_shrinkage != self.engine.relevance_shrinkage:
            self.engine = GlobalDirections(loaded.generator, loaded.clip, self.engine.stats,
                                           relevance_shrinkage=relevance_shrinkage)

    def beta_for(self, spec: EditSpec) -> float:
        if self.beta is not None:
            return float(self.beta)
        return self.engine.auto_beta(spec.neutral, spec.target, self.auto_beta_floor)

    def __call__(self, spec: EditSpec, seed: int) -> torch.Tensor:
        from .engines.global_directions import NoChannelsError

        beta = self.beta_for(spec)
        try:
            return self.engine.edit(self.source_s(seed), spec.neutral, spec.target, self.alpha, beta).img
        except NoChannelsError as exc:
            raise EditFailed(
                f"no channel passes beta={beta:.2f} (suggested {exc.suggested_beta:.2f})"
            ) from None

    def describe(self, spec: EditSpec) -> str:
        from .engines.global_directions import NoChannelsError

        beta = self.beta_for(spec)
        try:
            channels = self.engine.direction(spec.neutral, spec.target, beta).num_channels
        except NoChannelsError:
            channels = 0
        return f"beta={beta:.2f}, {channels} channels"


def global_directions_edit(loaded: LoadedModel, alpha: float = 4.1, beta: float | None = None,
                           source_s: Callable[[int], torch.Tensor] | None = None,
                           relevance_shrinkage: float | None | str = MODEL_DEFAULT,
                           auto_beta_floor: int | None = None) -> EditFn:
    """edit_fn for the global-direction engine.

    Args:
        loaded: the model (its precomputed statistics must exist).
        alpha: strength (the app's default 4.1).
        beta: disentanglement threshold; None picks it per text pair with the engine's auto_beta and the bundle's
            channel floor, as the app does.
        source_s: source_s(seed) -> the flat S code [1, s_dim] to edit; default the seed's generated face
            (`loaded.s_of_seed`). Inverted photos pass their own.
        relevance_shrinkage: the relevance metric (None: the official cosine; a number: whitened with that
            shrinkage); by default the bundle's, as the app.
        auto_beta_floor: the channel count auto-beta keeps; None → the bundle's, as the app.

    Returns:
        edit_fn(spec, seed) -> img [1, 3, R, R]; a pair with no channel at beta raises EditFailed.
    """
    return _GlobalDirectionsEdit(loaded, alpha, beta, source_s, relevance_shrinkage, auto_beta_floor)


class _MapperEdit:
    """edit_fn for latent mappers, one per spec name: W+ mappers (w_plus + strength·0.1·M(w_plus)) or channel
    mappers (S + strength·Δs(w) on their channels)."""

    def __init__(self, loaded: LoadedModel, mapper_paths: dict[str, str | Path], strength: float,
                 groups: Sequence[str] | None = None):
        if not math.isfinite(float(strength)):
            raise ValueError(f"strength must be a finite number, got {strength}")
        self.loaded, self.strength = loaded, float(strength)
        self.groups = None if groups is None else tuple(groups)
        self.paths = {name: Path(p) for name, p in mapper_paths.items()}
        self._mappers: dict[str, torch.nn.Module] = {}

    def supports(self, spec: EditSpec) -> bool:
        return spec.name in self.paths

    def __call__(self, spec: EditSpec, seed: int) -> torch.Tensor:
        from .engines.channel_mapper import load_any_mapper, mapped_s

        if spec.name not in self.paths:
            raise EditFailed(f"no mapper for {spec.name!r}")
        mapper = self._mappers.get(spec.name)
        if mapper is None:
            mapper = self._mappers[spec.name] = load_any_mapper(self.paths[spec.name], self.loaded.generator)
        generator, w_plus = self.loaded.generator, self.loaded.source_w_plus(seed)
        with torch.inference_mode():
            return generator.synthesis(generator.flat_to_s(mapped_s(mapper, generator, w_plus, self.strength,
                                                                    self.groups)))

    def describe(self, spec: EditSpec) -> str:
        groups = "" if self.groups is None else f", groups {'+'.join(self.groups) or 'none'}"
        return f"mapper {self.paths[spec.name].name}, strength {self.strength:g}{groups}"


def mapper_edit(loaded: LoadedModel, mapper_paths: dict[str, str | Path], strength: float = 1.0,
                groups: Sequence[str] | None = None) -> EditFn:
    """edit_fn for latent mappers.

    Args:
        loaded: the model the mappers were trained for.
        mapper_paths: spec name → mapper file (a W+ mapper, ours or official, or a channel mapper); specs
            without one are skipped.
        strength: residual scale (1 is the trained edit).
        groups: apply only these W+ groups' part of each edit (`apply_mapper`); None: the whole edit.

    Returns:
        edit_fn(spec, seed) -> img [1, 3, R, R]; mappers are loaded on first use (MapperCheckpointError, a
        ValueError, for a bad file).
    """
    return _MapperEdit(loaded, mapper_paths, strength, groups)


def mapper_paths_in(directory: str | Path, specs: Sequence[EditSpec] = BENCHMARK_EDITS) -> dict[str, Path]:
    """Mapper files for specs in a folder: spec name → <directory>/<name with spaces as underscores>.pt if present."""
    directory = Path(directory)
    found = {spec.name: directory / f"{spec.name.replace(' ', '_')}.pt" for spec in specs}
    return {name: path for name, path in found.items() if path.is_file()}


class _OptimizationEdit:
    """edit_fn for latent optimization of the seed's w_plus toward spec.target."""

    def __init__(self, loaded: LoadedModel, steps: int | None, l2_lambda: float | None, id_lambda: float | None,
                 space: str = "w_plus", clip_views: int = 1, dir_lambda: float | None = None,
                 lr: float | None = None):
        from .engines.optimization import DEFAULTS
        from .studio import optimization_dir_lambda, optimization_steps, optimization_weights

        self.loaded, self.space, self.clip_views = loaded, space, int(clip_views)
        self.default_lr = DEFAULTS["lr"]
        self.lr = self.default_lr if lr is None else float(lr)
        self.dir_lambda = optimization_dir_lambda(loaded, dir_lambda)
        self.steps = optimization_steps(loaded, steps)
        self.l2_lambda, self.id_lambda, self.identity = optimization_weights(loaded, l2_lambda, id_lambda)

    def __call__(self, spec: EditSpec, seed: int) -> torch.Tensor:
        from .engines.optimization import optimize

        result = optimize(
            self.loaded.generator,
            self.loaded.clip,
            spec.target,
            self.loaded.source_w_plus(seed),
            steps=self.steps,
            lr=self.lr,
            l2_lambda=self.l2_lambda,
            id_lambda=self.id_lambda,
            identity=self.identity,
            space=self.space,
            clip_views=self.clip_views,
            dir_lambda=self.dir_lambda,
            neutral=spec.neutral,
        )
        return result.img.detach()

    def describe(self, spec: EditSpec) -> str:
        text = f"{self.steps} steps, l2 {self.l2_lambda:g}" + (f", id {self.id_lambda:g}" if self.id_lambda else "")
        text += "" if self.clip_views == 1 else f", {self.clip_views} CLIP views"
        text += f", directional {self.dir_lambda:g} from “{spec.neutral}”" if self.dir_lambda else ""
        text += "" if self.lr == self.default_lr else f", lr {self.lr:g}"
        return text + ("" if self.space == "w_plus" else f", space {self.space}")


def optimization_edit(loaded: LoadedModel, steps: int | None = None, l2_lambda: float | None = None,
                      id_lambda: float | None = None, space: str = "w_plus", clip_views: int = 1,
                      dir_lambda: float | None = None, lr: float | None = None) -> EditFn:
    """edit_fn for latent optimization (W+ or "s"); the steps and weights default to the model's, as the app and
    CLI use them (`ModelBundle.opt_steps`, `studio.optimization_weights`, `studio.optimization_dir_lambda`); the
    directional loss starts from each spec's neutral text; lr None is the engine's default (the official 0.1).

    Returns:
        edit_fn(spec, seed) -> img [1, 3, R, R] optimised toward `spec.target`.
    """
    return _OptimizationEdit(loaded, steps, l2_lambda, id_lambda, space, clip_views, dir_lambda, lr)


# ------------------------------------------------------------------------------------------------- formatting
def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def format_report(report: EditReport) -> str:
    """A markdown table: one line per spec, then the macro means."""
    cont = sorted({n for r in report.rows for n in r.continuous_change})
    head = (
        [
            "edit",
            "attribute → value",
            "edited",
            "skipped (had it / hidden)",
            "failed",
            "success",
            "preservation",
        ]
        + [f"Δ{n}" for n in cont]
        + ["missed → landed on", "most changed", "s/edit", "notes"]
    )
    lines = []
    if report.label:
        lines.append(f"**{report.label}** — {len(report.seeds)} seeds")
        lines.append("")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report.rows:
        values = "/".join(r.spec.target_values)
        if r.skipped:
            cells = [r.spec.name, f"{r.spec.attribute} → {values}", "–", "–", "–", "skipped", "–"]
            cells += ["–"] * len(cont) + ["–", "–", "–", "; ".join(r.notes)]
        else:
            cells = [
                r.spec.name,
                f"{r.spec.attribute} → {values}",
                str(r.attempted),
                f"{r.skipped_already} / {r.skipped_hidden}",
                str(r.failed),
                _pct(r.success),
                _pct(r.preservation),
            ]
            cells += [f"{r.continuous_change[n]:.3f}" if n in r.continuous_change else "–" for n in cont]
            cells += [
                ", ".join(f"{v} {n}" for v, n in r.misses) or "–",
                ", ".join(f"{n} {100 * f:.0f}%" for n, f in r.most_changed) or "–",
                "–" if r.seconds_per_edit is None else f"{r.seconds_per_edit:.3f}",
                "; ".join(r.notes),
            ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    mean = ["**mean**", "", "", "", "", _pct(report.success), _pct(report.preservation)]
    mean += [f"{report.continuous_change[n]:.3f}" if n in report.continuous_change else "–" for n in cont]
    lines.append("| " + " | ".join(mean + ["", "", ""]) + " |")
    return "\n".join(lines)
