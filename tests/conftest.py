"""Shared fixtures: tiny random-weight generators and checkpoints in the official formats."""

from __future__ import annotations

import os

import pytest
import torch

from styleclip.models.generator import Generator
from styleclip.models.generator_io import save_generator
from styleclip.toyfaces.renderer import FaceParams

torch.set_num_threads(2)
# The suite's figures and tolerances are the CPU's, also on a machine with a GPU; the `gpu` tests name their device.
os.environ.setdefault("STYLECLIP_DEVICE", "cpu")

# A plain toyface that tests change one attribute at a time.
BASE_FACE = FaceParams(
    hair_color="brown",
    hair_style="short",
    skin_tone="light",
    eye_color="blue",
    eyes="open",
    mouth="neutral",
    glasses="none",
    hat="none",
    facial_hair="none",
    earrings="none",
    lipstick="none",
    blush="none",
    nose="small",
    age="young",
    background="blue",
    face_width=0.5,
)

# A CLIP small enough for unit tests: the clip package's own classes, the real tokenizer, random weights.
TINY_CLIP = dict(embed_dim=64, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
                 transformer_width=64, transformer_heads=1, transformer_layers=2)


def make_tiny_clip():
    """A one-layer CLIP (the `clip` package's model class) at 32 px with 64-d embeddings, wrapped; seeded."""
    from styleclip.models.clip_model import ClipModel, build_small_clip

    model = build_small_clip(embed_dim=64, image_resolution=32, vision_layers=1, vision_width=64,
                             vision_patch_size=8, transformer_width=64, transformer_heads=1, transformer_layers=1,
                             seed=0)
    return ClipModel.from_model(model)


def make_tiny_generator(size: int = 32, style_dim: int = 32, seed: int = 0, nonzero: bool = True) -> Generator:
    """A small random generator; `nonzero` gives noise strengths and biases non-zero values so that tests
    exercise every term (fresh StyleGAN2 layers start them at 0)."""
    torch.manual_seed(seed)
    g = Generator(size, style_dim=style_dim, n_mlp=2, channel_max=16)
    if nonzero:
        with torch.no_grad():
            for name, p in g.named_parameters():
                if name.endswith("noise.weight"):
                    p.fill_(0.3)
                elif name.endswith("activate.bias") or name.endswith("bias") and "to_rgb" in name:
                    p.normal_(0, 0.2)
    g.latent_avg.copy_(g.mean_latent(256))
    return g.eval()


@pytest.fixture
def tiny_generator() -> Generator:
    return make_tiny_generator()


@pytest.fixture
def tiny_generator_file(tmp_path, tiny_generator):
    path = tmp_path / "tiny_g.pt"
    save_generator(tiny_generator, path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread for a module (the session default is 2): for modules whose long optimizations share the
    test machine's cores with background jobs. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
