"""The application's library façade: loads models once per process and serves edits to the UI, API and CLI.

Everything the app does goes through here; the UI only converts between widgets and these calls. Errors meant for
people are `ValueError`s (or subclasses) with plain messages, which the UI shows as they are.
"""

from __future__ import annotations

import importlib
import io
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .engines.global_directions import GlobalDirections, NoChannelsError
from .engines.mapper import GROUPS as MAPPER_GROUPS
from .engines.statistics import GlobalStatistics, StatisticsError, load_statistics
from .imaging import img_to_image, img_to_images
from .models import model_zoo, registry
from .models.clip_model import ClipModel
from .models.device import module_device, resolve_device
from .models.generator import Generator

__all__ = ["Studio", "LoadedModel", "ALPHA_RANGE", "BETA_RANGE", "MAX_TEXT_CHARS", "validate_text",
           "validate_range", "validate_seed", "seed_to_z", "MissingStatisticsError", "unknown_words",
           "unknown_words_note"]

ALPHA_RANGE = (-10.0, 10.0)
BETA_RANGE = (0.08, 0.3)
MAX_TEXT_CHARS = 300  # CLIP's 77-token context holds about this much English; longer is refused by token count
MAX_SEED = 2 ** 32 - 1
OPT_STEPS_RANGE = (1, 300)
OPT_MODES = ("edit", "free")
MAPPER_STEPS_RANGE = (1, 5000)
MAPPER_STEPS_DEFAULT = 300
# Where the directional CLIP loss's text change starts, in mapper training and optimization (the global tab's
# default neutral text).
DIRECTIONAL_NEUTRAL = "face"
MAPPER_STRENGTH_RANGE = (-3.0, 3.0)
# Channel mappers (engines/channel_mapper.py): the settings BENCHMARKS.md measures ("A mapper over the global
# direction's channels"): 300 steps of batch 4 from the global edit at alpha 4.1, identity weight 0.3.
CHANNEL_MAPPER_STEPS_DEFAULT = 300
CHANNEL_MAPPER_ALPHA = 4.1
CHANNEL_MAPPER_ID_WEIGHT = 0.3
CHANNEL_MAPPER_EXTRA_RANGE = (0, 5000)
MAX_BATCH_SEEDS = 16
INVERT_STEPS_RANGE = (1, 1000)
INVERT_STEPS_DEFAULT = 150
# S refinement after the W+ stage: with the lap1 pixel term it lifts attribute agreement of 50 fresh renders on the
# embedded model from 82% to 93% (BENCHMARKS.md, inversion); the result is an S code with no exact W+ preimage.
INVERT_S_STEPS_RANGE = (0, 1000)
INVERT_S_STEPS_DEFAULT = 150
INVERT_PIXEL_LOSS = "lap1"  # Laplacian-pyramid L1: sharper small parts than MSE at the same steps (BENCHMARKS.md)
PHOTO_SEED_OFFSET = 10_000_019  # fresh renders use other normals than the generator's seed of the same number


class MissingStatisticsError(StatisticsError):
    """The model has no precomputed statistics yet; the UI offers to compute them."""


def validate_text(text: str | None, what: str) -> str:
    text = (text or "").strip()
    if not text:
        raise ValueError(f"The {what} text is empty. Type a short description, e.g. 'face' or 'smiling face'.")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"The {what} text is too long ({len(text)} characters; at most {MAX_TEXT_CHARS}).")
    return text


def validate_range(value, name: str, lo: float, hi: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number between {lo} and {hi}, got {value!r}.") from None
    if not np.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}.")
    return value


def validate_groups(groups) -> tuple[str, ...]:
    """The mapper's W+ row groups in their canonical order; ValueError for none or an unknown name."""
    chosen = [str(g).strip().lower() for g in (groups or ())]
    unknown = sorted(set(chosen) - set(MAPPER_GROUPS))
    if unknown:
        raise ValueError(f"Unknown layer group(s) {unknown}; choose among {list(MAPPER_GROUPS)}.")
    if not chosen:
        raise ValueError("Pick at least one layer group (coarse, medium or fine) for the mapper to edit.")
    return tuple(g for g in MAPPER_GROUPS if g in chosen)


def validate_seed(seed) -> int:
    try:
        seed_f = float(seed)
    except (TypeError, ValueError):
        raise ValueError(f"The seed must be a whole number between 0 and {MAX_SEED}, got {seed!r}.") from None
    if not np.isfinite(seed_f) or seed_f != int(seed_f) or not 0 <= int(seed_f) <= MAX_SEED:
        raise ValueError(f"The seed must be a whole number between 0 and {MAX_SEED}, got {seed}.")
    return int(seed_f)


def seed_to_z(seed: int, z_dim: int) -> torch.Tensor:
    """The upstream seed convention: numpy RandomState(seed).randn(1, z_dim) as float32 → z [1, z_dim]."""
    return torch.from_numpy(np.random.RandomState(validate_seed(seed)).randn(1, z_dim).astype(np.float32))


@dataclass
class LoadedModel:
    """One bundle's networks, loaded once on one device and shared by every session.

    Codes handed to the app (`s_of_seed`) are on the CPU; the methods take codes on any device.
    """

    bundle: model_zoo.ModelBundle
    generator: Generator
    clip: ClipModel
    generator_sha256: str | None = None
    clip_sha256: str | None = None
    _engine: GlobalDirections | None = None
    _sources: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def device(self) -> torch.device:
        """Where the generator and CLIP run."""
        return module_device(self.generator)

    def engine(self) -> GlobalDirections:
        """The global-direction engine; raises MissingStatisticsError when precomputed files are absent."""
        if self._engine is None:
            directory = model_zoo.precomputed_dir(self.name)
            try:
                stats = load_statistics(directory, self.generator, self.generator_sha256, self.clip_sha256)
            except StatisticsError as exc:
                if "No precomputed statistics" in str(exc):
                    raise MissingStatisticsError(str(exc)) from None
                raise
            self.set_statistics(stats)
        return self._engine

    def set_statistics(self, stats: GlobalStatistics) -> None:
        self._engine = GlobalDirections(self.generator, self.clip, stats,
                                        relevance_shrinkage=self.bundle.relevance_shrinkage)

    def source_w_plus(self, seed: int) -> torch.Tensor:
        """w_plus [1, L, D] for a seed at the bundle's truncation, on the model's device (cached)."""
        seed = validate_seed(seed)
        with self._lock:
            if seed in self._sources:
                self._sources.move_to_end(seed)
                return self._sources[seed]
        with torch.inference_mode():
            z = seed_to_z(seed, self.generator.style_dim).to(self.device)
            w_plus = self.generator.z_to_w_plus(z, self.bundle.truncation)
        with self._lock:
            self._sources[seed] = w_plus
            while len(self._sources) > 256:
                self._sources.popitem(last=False)
        return w_plus

    @torch.inference_mode()
    def s_of_seed(self, seed: int) -> torch.Tensor:
        """Flat s [1, s_dim] of a seed's source image, on the CPU (the app's state holds it)."""
        return self.generator.s_to_flat(self.generator.w_plus_to_s(self.source_w_plus(seed))).cpu()

    @torch.inference_mode()
    def render_s(self, s: torch.Tensor) -> np.ndarray:
        """Flat s [1, s_dim] (any device) → uint8 image [R, R, 3]."""
        return img_to_image(self.generator.synthesis(self.generator.flat_to_s(s.to(self.device))))


# CLIP models trained in this repo on a closed vocabulary (registry name → module with `unknown_words(text)`);
# open-vocabulary CLIPs such as ViT-B/32 are not listed.
_CLOSED_VOCABULARY_CLIPS = {"toyfaces-clip": "styleclip.toyfaces.vocabulary"}


def unknown_words(loaded: LoadedModel, *texts: str) -> list[str]:
    """Words of `texts` that the model's CLIP never saw in training, each once ([] for an open vocabulary)."""
    module = _CLOSED_VOCABULARY_CLIPS.get(loaded.bundle.clip)
    if module is None:
        return []
    check = importlib.import_module(module).unknown_words
    out: list[str] = []
    for text in texts:
        out += [w for w in check(text) if w not in out]
    return out


def unknown_words_note(words: Sequence[str]) -> str | None:
    """One plain sentence about words the CLIP never saw, or None when there are none."""
    if not words:
        return None
    quoted = ", ".join(f"“{w}”" for w in words)
    return (f"This model's CLIP never saw {quoted} in training and reads "
            f"{'it' if len(words) == 1 else 'them'} as noise: rephrase with its words (see the example edits).")


def fresh_face_params(seed):
    """The renderer parameters of the app's "fresh face" number `seed` (a face the generator never drew)."""
    from .toyfaces.renderer import NUM_PARAMS, params_from_normal

    return params_from_normal(np.random.RandomState(validate_seed(seed) + PHOTO_SEED_OFFSET).randn(NUM_PARAMS))


def load_identity_network(loaded: LoadedModel) -> tuple[object, str | None]:
    """(the model's identity network or None, why it is missing: None when found or when the model has none)."""
    from .models.checkpoints import CheckpointError
    from .models.identity import identity_for_bundle

    try:
        return identity_for_bundle(loaded.name, loaded.device), None
    except (FileNotFoundError, CheckpointError) as exc:
        return None, str(exc).splitlines()[0]


def identity_term(loaded: LoadedModel, weight: float | None, default: float) -> tuple[object, float, str | None]:
    """The identity network and weight for a loss term.

    Args:
        weight: None → `default` when the model's identity network is on disk, else 0 (with a note); 0 → no
            term; > 0 → that weight (ValueError, saying what is missing, when the model has no network).

    Returns:
        (identity model or None, weight, note or None).
    """
    if weight is not None:
        weight = validate_range(weight, "identity weight", 0.0, 10.0)
        if weight == 0:
            return None, 0.0, None
    identity, problem = load_identity_network(loaded)
    if weight is None:
        if identity is None or default <= 0:
            return None, 0.0, problem and f"going without the identity loss: {problem}"
        return identity, float(default), None
    if problem is not None:
        raise ValueError(f"{problem} Or set the identity weight to 0.")
    if identity is None:
        raise ValueError(f"The model {loaded.name!r} has no identity network; set the identity weight to 0.")
    return identity, weight, None


def optimization_steps(loaded: LoadedModel, steps: int | None = None) -> int:
    """Adam steps for latent optimization; None → the model's default (`ModelBundle.opt_steps`)."""
    return loaded.bundle.opt_steps if steps is None else int(steps)


def optimization_weights(loaded: LoadedModel, l2_lambda: float | None = None, id_lambda: float | None = None
                         ) -> tuple[float, float, object]:
    """(L2 weight, identity weight, identity model or None) for latent optimization; None → the model's defaults
    (`ModelBundle.opt_l2_lambda`, and `opt_id_lambda` when its identity network is on disk)."""
    l2 = loaded.bundle.opt_l2_lambda if l2_lambda is None else validate_range(l2_lambda, "L2 weight", 0.0, 1.0)
    identity, weight, _ = identity_term(loaded, id_lambda, loaded.bundle.opt_id_lambda)
    return l2, weight, identity


def directional_weight(weight: float | None, model_default: float) -> float:
    """The directional CLIP loss's weight: `weight` checked, or the model's default when None."""
    if weight is None:
        return float(model_default)
    return validate_range(weight, "directional loss weight", 0.0, 100.0)


def optimization_dir_lambda(loaded: LoadedModel, dir_lambda: float | None = None) -> float:
    """The directional CLIP loss's weight for latent optimization; None → the model's `opt_dir_lambda`."""
    return directional_weight(dir_lambda, loaded.bundle.opt_dir_lambda)


class Studio:
    """Process-wide model cache plus the operations the app exposes.

    device: where every model runs ("auto": a CUDA GPU when there is one; see `models.device.resolve_device`).
    Tensors the methods return are on the CPU.
    """

    def __init__(self, device: str | torch.device | None = None):
        self.device = resolve_device(device)
        self._models: dict[str, LoadedModel] = {}
        self._mappers: dict[str, torch.nn.Module] = {}  # loaded or trained mappers by file path
        self._lock = threading.Lock()

    def model(self, name: str | None) -> LoadedModel:
        bundle = model_zoo.get_bundle(name or "")
        with self._lock:
            if bundle.name not in self._models:
                self._models[bundle.name] = self._load(bundle)
            return self._models[bundle.name]

    def _load(self, bundle: model_zoo.ModelBundle) -> LoadedModel:
        g_path = model_zoo.resolve_file(bundle.generator)
        c_path = model_zoo.resolve_file(bundle.clip)
        generator = model_zoo.load_generator_spec(str(g_path), self.device)
        clip_model = ClipModel.load(c_path, device=self.device)
        return LoadedModel(bundle, generator, clip_model, registry.sha256_file(g_path), registry.sha256_file(c_path))

    # -------------------------------------------------------------------------------- global directions
    def global_edit(self, model: str, seed, neutral: str, target: str, alpha, beta,
                    source_s: torch.Tensor | None = None) -> tuple[np.ndarray, dict]:
        """The `global_edit` API: returns (edited uint8 image, info with channels, beta, timings, params).

        `source_s` [1, s_dim] replaces the seed's code (a stacked edit or an inverted photo).
        """
        t0 = time.perf_counter()
        neutral, target = validate_text(neutral, "neutral"), validate_text(target, "target")
        alpha = validate_range(alpha, "alpha (strength)", *ALPHA_RANGE)
        beta = validate_range(beta, "beta (disentanglement)", *BETA_RANGE)
        loaded = self.model(model)
        seed = validate_seed(seed)
        s = source_s if source_s is not None else loaded.s_of_seed(seed)
        try:
            result = loaded.engine().edit(s, neutral, target, alpha, beta)
        except NoChannelsError as exc:  # never suggest a beta the slider (and this API) refuses
            raise NoChannelsError(exc.beta, exc.suggested_beta, exc.max_relevance, BETA_RANGE[0]) from None
        image = img_to_image(result.img)
        d = result.direction
        info = {
            "model": loaded.name, "seed": seed, "neutral": neutral, "target": target, "alpha": alpha,
            "beta": beta, "channels": d.num_channels, "device": str(loaded.device),
            "unknown_words": unknown_words(loaded, neutral, target), "relevance_metric": loaded.engine().relevance_metric,
            "text_direction_norm": round(d.text_norm, 4),
            "top_channels": [{"layer": n, "channel": c, "relevance": round(r, 4)} for n, c, r in d.top_channels],
            "timings_ms": {k: round(v * 1000, 1) for k, v in result.timings.items()}
                          | {"total": round((time.perf_counter() - t0) * 1000, 1)},
        }
        return image, info

    def auto_beta(self, model: str, neutral: str, target: str) -> float:
        """The official GUI's beta choice for a text pair (channel floor from the model bundle)."""
        loaded = self.model(model)
        neutral, target = validate_text(neutral, "neutral"), validate_text(target, "target")
        return loaded.engine().auto_beta(neutral, target, loaded.bundle.auto_beta_floor)

    def apply_edit(self, model: str, s: torch.Tensor, neutral: str, target: str, alpha, beta) -> torch.Tensor:
        """s + alpha·Δs as the new source code [1, s_dim] (for stacking edits)."""
        engine = self.model(model).engine()
        return engine.edit(s, neutral, target, float(alpha), float(beta)).s.cpu()

    def alpha_sweep_gif(self, model: str, s: torch.Tensor, neutral: str, target: str, alpha, beta,
                        frames: int = 16, size: int = 256) -> bytes:
        """A GIF sweeping alpha from -alpha to +alpha and back (bytes)."""
        loaded = self.model(model)
        engine = loaded.engine()
        direction = engine.direction(neutral, target, float(beta))
        alphas = np.concatenate([np.linspace(-alpha, alpha, frames), np.linspace(alpha, -alpha, frames)[1:-1]])
        with torch.inference_mode():
            batch = s + torch.from_numpy(alphas.astype(np.float32))[:, None] * direction.delta_s[None]
            imgs = engine.render_s(batch)
        pils = [Image.fromarray(img_to_image(i)).resize((size, size), Image.LANCZOS) for i in imgs]
        buf = io.BytesIO()
        pils[0].save(buf, format="GIF", save_all=True, append_images=pils[1:], duration=80, loop=0)
        return buf.getvalue()

    def export_npz(self, model: str, s: torch.Tensor, s_edit: torch.Tensor, neutral: str, target: str,
                   alpha, beta) -> bytes:
        """The source and edited S codes and the direction, as .npz bytes."""
        engine = self.model(model).engine()
        d = engine.direction(neutral, target, float(beta))
        buf = io.BytesIO()
        np.savez(buf, s_source=s.cpu().numpy(), s_edited=s_edit.cpu().numpy(), delta_s=d.delta_s.cpu().numpy(),
                 alpha=np.float32(alpha), beta=np.float32(beta), neutral=neutral, target=target,
                 num_channels=np.int32(d.num_channels), model=self.model(model).name,
                 relevance_metric=engine.relevance_metric)
        return buf.getvalue()

    # -------------------------------------------------------------------------------- latent optimization
    def mapper_identity(self, model: str, id_weight: float | None = None) -> tuple[object, float, str | None]:
        """The identity term for mapper training: `identity_term` with the model's `mapper_id_weight`.

        Returns:
            (identity model or None, weight, a note when the automatic choice had to go without one).
        """
        loaded = self.model(model)
        return identity_term(loaded, id_weight, loaded.bundle.mapper_id_weight)

    def mapper_direction_weight(self, model: str, weight: float | None = None) -> float:
        """The directional-loss weight for mapper training: `weight`, or the model's default when None."""
        return directional_weight(weight, self.model(model).bundle.mapper_direction_weight)

    def identity_status(self, model: str) -> tuple[bool, str]:
        """Whether `model` has an identity network for the identity loss, and a one-line note for the UI.

        Returns:
            (available, note): e.g. (True, "identity network: toyfaces-identity"), or (False, what is missing
            and where to put it).
        """
        loaded = self.model(model)
        identity, problem = load_identity_network(loaded)
        if problem is not None:
            return False, f"No identity network for {loaded.name!r}: {problem}"
        if identity is None:
            return False, f"The model {loaded.name!r} has no identity network."
        return True, f"identity network: {identity.kind}"

    def optimize(self, model: str, seed, text: str, steps=None, l2_lambda=None, id_lambda=None,
                 progress=None, should_stop=None, on_preview=None, preview_every: int = 5,
                 on_step=None, mode: str = "edit", space: str = "w_plus",
                 w_plus_source: torch.Tensor | None = None,
                 s_source: torch.Tensor | None = None, dir_lambda: float | None = None) -> tuple[np.ndarray, dict]:
        """Latent optimization of a seed's W+ toward `text` (the app's Optimization tab and the API).

        Args:
            steps: Adam steps; None → the model's default (`ModelBundle.opt_steps`).
            l2_lambda, id_lambda: loss weights; None → the model's defaults (`optimization_weights`).
            dir_lambda: the directional CLIP loss's weight (from DIRECTIONAL_NEUTRAL); None → the model's
                (`optimization_dir_lambda`).
            progress: progress(done, total, stage) after every step.
            should_stop: polled before every step; True ends the run with `OptimizationCancelled`, whose
                `.result` holds the latest latent.
            on_preview: on_preview(step, image uint8 [R, R, 3]) every `preview_every` steps and at the end.
            on_step: on_step(OptimizationStep) after every step (losses as floats).
            mode: "edit" starts from the seed's latent, "free" (free generation) from the mean latent.
            space: "w_plus" or "s" (conv style channels only).
            w_plus_source: [1, L, D] start latent for "edit" mode instead of the seed's (an inverted photo).
            s_source: [1, s_dim] flat S start for "edit" mode in space "s" (the photo's S-refined code); a W+
                run starts from w_plus_source.

        Returns:
            (edited image uint8 [R, R, 3], info with the losses, the settings and the timing).
        """
        from .engines.optimization import optimize

        t0 = time.perf_counter()
        text = validate_text(text, "target")
        loaded = self.model(model)
        steps = optimization_steps(loaded, None if steps is None else validate_range(steps, "steps", *OPT_STEPS_RANGE))
        l2_lambda, id_lambda, identity = optimization_weights(loaded, l2_lambda, id_lambda)
        dir_lambda = optimization_dir_lambda(loaded, dir_lambda)
        seed = validate_seed(seed)
        if mode not in OPT_MODES:
            raise ValueError(f"mode must be one of {', '.join(OPT_MODES)}, got {mode!r}.")
        if space not in ("w_plus", "s"):
            raise ValueError(f"space must be 'w_plus' or 's', got {space!r}.")
        preview = None if on_preview is None else (lambda step, img: on_preview(step, img_to_image(img[0])))
        if mode == "free":
            start = loaded.generator.w_to_w_plus(loaded.generator.latent_avg[None].clone())
        else:
            start = loaded.source_w_plus(seed) if w_plus_source is None else torch.as_tensor(w_plus_source)
        s_0 = None
        if mode == "edit" and space == "s" and s_source is not None:
            s_0 = loaded.generator.flat_to_s(torch.as_tensor(s_source).reshape(1, -1))
        result = optimize(loaded.generator, loaded.clip, text, start, steps=steps, space=space, s_0=s_0,
                          l2_lambda=l2_lambda, id_lambda=id_lambda, identity=identity, progress=progress,
                          should_stop=should_stop, preview_every=preview_every, on_preview=preview,
                          on_step=on_step, dir_lambda=dir_lambda, neutral=DIRECTIONAL_NEUTRAL)
        first = result.history[0]
        info = {"model": loaded.name, "device": str(loaded.device), "seed": seed, "text": text, "mode": mode,
                "space": space, "steps": steps, "unknown_words": unknown_words(loaded, text),
                "l2_lambda": l2_lambda, "dir_lambda": dir_lambda,
                "id_lambda": id_lambda, "clip_loss_start": round(first.clip_loss, 4),
                "clip_loss_end": round(result.final_clip_loss, 4),
                "seconds": round(time.perf_counter() - t0, 2)}
        latent = result.w_plus if space == "w_plus" else loaded.generator.s_to_flat(result.s)
        info["latent"] = latent.detach().cpu().numpy()  # w_plus [1, L, D] or flat s [1, s_dim]; not JSON
        return img_to_image(result.img[0]), info

    # -------------------------------------------------------------------------------- latent mapper
    def shipped_mappers(self, model: str) -> dict[str, Path]:
        """Shipped mapper files of a model: {name: path}; W+ mappers from assets/mappers/<model>/ ("smiling"), then
        channel mappers from its channels/ folder ("smiling (channels)")."""
        folder = model_zoo.mappers_dir(self.model(model).name)
        if not folder.is_dir():
            return {}
        found = {p.stem.replace("_", " "): p for p in sorted(folder.glob("*.pt"))}
        return found | {f"{p.stem.replace('_', ' ')} (channels)": p for p in sorted(folder.glob("channels/*.pt"))}

    def _mapper(self, loaded: LoadedModel, mapper_path: str | Path):
        """A mapper file of any kind for the model, loaded once per path and generator."""
        from .engines.channel_mapper import load_any_mapper

        key = f"{loaded.name}:{mapper_path}"
        with self._lock:
            mapper = self._mappers.get(key)
        if mapper is None:
            mapper = load_any_mapper(mapper_path, loaded.generator)
            with self._lock:
                self._mappers[key] = mapper
        return mapper

    def apply_mapper(self, model: str, mapper_path: str | Path, seeds, strength=1.0,
                     w_plus_source: torch.Tensor | None = None,
                     s_source: torch.Tensor | None = None) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Applies a mapper file to each seed: [(seed, source image, edited image)] (uint8 [R, R, 3]).

        `w_plus_source` [1, L, D] (an inverted photo) replaces the seeds; it is reported as seed -1. With it,
        `s_source` [1, s_dim] (the photo's S-refined code) keeps the refinement: the mapper's change in S (of the
        W+ code's edit for a W+ mapper, of its channels for a channel mapper) is added to s_source.
        """
        from .engines.channel_mapper import mapped_s

        loaded = self.model(model)
        strength = validate_range(strength, "strength", *MAPPER_STRENGTH_RANGE)
        seeds = [-1] if w_plus_source is not None else [validate_seed(s) for s in seeds]
        if not seeds or len(seeds) > MAX_BATCH_SEEDS:
            raise ValueError(f"Give between 1 and {MAX_BATCH_SEEDS} seeds.")
        mapper = self._mapper(loaded, mapper_path)
        with torch.inference_mode():
            w_plus = (torch.as_tensor(w_plus_source).to(loaded.device) if w_plus_source is not None
                      else torch.cat([loaded.source_w_plus(s) for s in seeds]))
            generator = loaded.generator
            s = generator.s_to_flat(generator.w_plus_to_s(w_plus))
            s_edit = mapped_s(mapper, generator, w_plus, strength)
            if w_plus_source is not None and s_source is not None:  # the edit moves onto the refined code
                s_refined = torch.as_tensor(s_source).to(s).reshape(1, -1)
                s, s_edit = s_refined, s_refined + (s_edit - s)
            imgs = generator.synthesis(generator.flat_to_s(torch.cat([s, s_edit])))
        images = img_to_images(imgs)
        return [(seed, images[i], images[len(seeds) + i]) for i, seed in enumerate(seeds)]

    def train_mapper(self, model: str, text: str, out_path: str | Path, steps=MAPPER_STEPS_DEFAULT,
                     l2_weight=0.8, progress=None, should_stop=None, on_preview=None, on_step=None,
                     preview_every: int = 25, id_weight: float | None = None,
                     groups: Sequence[str] = MAPPER_GROUPS, direction_weight: float | None = None) -> dict:
        """Trains a mapper for `text` into out_path (resumes if it exists).

        Args:
            id_weight: identity-loss weight; None → the model's default (`mapper_identity`).
            direction_weight: the directional CLIP loss's weight (from DIRECTIONAL_NEUTRAL); None → the model's
                default (`ModelBundle.mapper_direction_weight`).
            groups: the W+ row groups the mapper may change (the official --no_*_mapper switches); rows of the
                others stay as they are. At least one.
            progress: progress(done, total, stage) after each step.
            on_step: on_step({"step", "loss", "clip", "l2"}) after each step.
            on_preview: on_preview(step, [(source image, edited image)]) every `preview_every` steps.
            should_stop: polled before each step; True saves and raises `Cancelled`.

        Returns:
            info with the final losses, the settings and the timing.
        """
        from .engines.mapper import train_mapper

        t0 = time.perf_counter()
        text = validate_text(text, "mapper")
        groups = validate_groups(groups)
        steps = int(validate_range(steps, "steps", *MAPPER_STEPS_RANGE))
        l2_weight = validate_range(l2_weight, "L2 weight", 0.0, 2.0)
        loaded = self.model(model)
        identity, id_weight, _ = self.mapper_identity(model, id_weight)
        direction_weight = self.mapper_direction_weight(model, direction_weight)
        preview = None if on_preview is None else (lambda step, src, edit: on_preview(
            step, list(zip(img_to_images(src), img_to_images(edit)))))
        mapper, record = train_mapper(
            loaded.generator, loaded.clip, text, steps=steps, batch=2, lr=0.5, clip_weight=1.0,
            l2_weight=l2_weight, id_weight=id_weight, identity=identity, truncation=loaded.bundle.truncation, seed=0,
            groups=groups, progress=progress, on_step=on_step, direction_weight=direction_weight,
            neutral=DIRECTIONAL_NEUTRAL, should_stop=should_stop, checkpoint_path=out_path, preview_every=preview_every,
            on_preview=preview, meta={"model": loaded.name, "text": text})
        with self._lock:
            self._mappers[f"{loaded.name}:{out_path}"] = mapper
        last = record[-1] if record else {}
        return {"model": loaded.name, "text": text, "unknown_words": unknown_words(loaded, text), "steps": steps,
                "l2_weight": l2_weight, "id_weight": id_weight,
                "direction_weight": direction_weight, "groups": list(groups), "clip_loss_end": round(last.get("clip", float("nan")), 4),
                "seconds": round(time.perf_counter() - t0, 1), "path": str(out_path)}

    def train_channel_mapper(self, model: str, neutral: str, target: str, out_path: str | Path,
                             steps=CHANNEL_MAPPER_STEPS_DEFAULT, extra=None, progress=None, should_stop=None,
                             on_preview=None, on_step=None, preview_every: int = 25,
                             id_weight: float | None = None, seed: int = 0) -> dict:
        """Trains a channel mapper (engines/channel_mapper.py) for the text pair into out_path (resumes if it exists).

        It starts from the global edit at auto-beta and alpha `CHANNEL_MAPPER_ALPHA` and moves those channels plus
        `extra` more (None: `EXTRA_DEFAULT`), so the model needs its precomputed statistics
        (MissingStatisticsError otherwise). `seed` seeds the initialisation and the sampled faces. Callbacks as in
        `train_mapper`.

        Returns:
            info with the channel count, the final losses, the settings and the timing.
        """
        from .engines.channel_mapper import EXTRA_DEFAULT, channels_for_pair, train_channel_mapper

        t0 = time.perf_counter()
        neutral, target = validate_text(neutral, "neutral"), validate_text(target, "target")
        if neutral.lower() == target.lower():
            raise ValueError("The neutral and target texts are the same; the target should say what changes.")
        steps = int(validate_range(steps, "steps", *MAPPER_STEPS_RANGE))
        extra = EXTRA_DEFAULT if extra is None else int(validate_range(extra, "extra channels",
                                                                       *CHANNEL_MAPPER_EXTRA_RANGE))
        loaded = self.model(model)
        positions, base, scale, beta = channels_for_pair(loaded.engine(), neutral, target, CHANNEL_MAPPER_ALPHA, extra,
                                                         loaded.bundle.auto_beta_floor)
        identity, id_weight, identity_note = identity_term(loaded, id_weight, CHANNEL_MAPPER_ID_WEIGHT)
        preview = None if on_preview is None else (lambda step, src, edit: on_preview(
            step, list(zip(img_to_images(src), img_to_images(edit)))))
        mapper, record = train_channel_mapper(
            loaded.generator, loaded.clip, neutral, target, positions.to(loaded.device), base.to(loaded.device),
            scale.to(loaded.device), steps=steps, id_weight=id_weight, identity=identity, seed=int(seed),
            truncation=loaded.bundle.truncation, progress=progress, should_stop=should_stop, checkpoint_path=out_path,
            preview_every=preview_every, on_preview=preview, on_step=on_step,
            meta={"model": loaded.name, "beta": beta, "alpha": CHANNEL_MAPPER_ALPHA, "extra": extra})
        with self._lock:
            self._mappers[f"{loaded.name}:{out_path}"] = mapper
        last = record[-1] if record else {}
        return {"model": loaded.name, "kind": "channels", "neutral": neutral, "target": target,
                "unknown_words": unknown_words(loaded, neutral, target), "steps": steps, "beta": beta,
                "channels": int(positions.numel()), "extra": extra, "id_weight": id_weight, "seed": int(seed),
                "clip_loss_end": round(last.get("clip", float("nan")), 4),
                "seconds": round(time.perf_counter() - t0, 1), "path": str(out_path)} | (
                    {"note": identity_note} if identity_note else {})

    # -------------------------------------------------------------------------------- photos
    def align_photo(self, model: str, source, center_crop_if_no_face: bool = False) -> tuple[np.ndarray, str]:
        """An uploaded picture (path or bytes) → (aligned image uint8 [R, R, 3] at the generator's size, a note).

        FFHQ-like models get dlib's landmarks and the FFHQ crop; a domain aligned by construction (toyfaces)
        gets a centre crop. Raises ValueError subclasses with plain messages (not an image, too large, no face).
        """
        from .engines.alignment import NoFaceError, align_face, center_crop, load_image

        loaded = self.model(model)
        image = load_image(source)
        size = loaded.generator.size
        if loaded.bundle.alignment == "center":
            return center_crop(image, size), "centre-cropped (this model's domain is aligned by construction)"
        try:
            result = align_face(image, size)
        except NoFaceError:
            if not center_crop_if_no_face:
                raise
            return center_crop(image, size), "no face found: used the centre crop, as asked"
        return result.image, result.note

    def fresh_render(self, model: str, seed) -> np.ndarray:
        """A face drawn by the toyfaces renderer (never by the generator): a 'photo' of the embedded domain."""
        from .toyfaces.renderer import render

        loaded = self.model(model)
        if loaded.bundle.alignment != "center":
            raise ValueError("Fresh renders exist only for the embedded toyfaces model; upload a photo instead.")
        return render(fresh_face_params(seed), loaded.generator.size)

    def invert_photo(self, model: str, image: np.ndarray, steps=INVERT_STEPS_DEFAULT,
                     s_steps=INVERT_S_STEPS_DEFAULT, progress=None, should_stop=None, on_preview=None,
                     preview_every: int = 10, pixel_loss: str = INVERT_PIXEL_LOSS,
                     ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, dict]:
        """Inverts an aligned image (uint8 [R, R, 3]) into W+, then refines it in S for `s_steps` steps.

        Returns:
            (w_plus [1, L, D] of the W+ stage, flat s [1, s_dim] of the reconstruction (the refined S code, or
            the W+ code's when s_steps = 0), reconstruction uint8 [R, R, 3], info with PSNR and timing).
        """
        from .engines.inversion import invert

        t0 = time.perf_counter()
        steps = int(validate_range(steps, "steps", *INVERT_STEPS_RANGE))
        s_steps = int(validate_range(s_steps, "S refinement steps", *INVERT_S_STEPS_RANGE))
        loaded = self.model(model)
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
        preview = None if on_preview is None else (lambda step, im: on_preview(step, img_to_image(im[0])))
        result = invert(loaded.generator, loaded.clip, img, steps=steps, s_steps=s_steps,
                        pixel_loss=pixel_loss, progress=progress,
                        should_stop=should_stop, preview_every=preview_every, on_preview=preview)
        s_flat = result.flat_s(loaded.generator)
        info = {"model": loaded.name, "steps": steps, "s_steps": s_steps, "pixel_loss": pixel_loss,
                "psnr": round(float(result.psnr), 2),
                "seconds": round(time.perf_counter() - t0, 2)}
        return result.w_plus.detach().cpu(), s_flat.cpu(), img_to_image(result.img[0]), info
