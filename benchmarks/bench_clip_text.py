"""Times one text pair through the 79 ImageNet templates (158 prompts) on a random ViT-B/32-sized CLIP.

Compares (a) the plain clip-package way (`model.encode_text` on the full 77-token context), (a2) the same
batch cut to its longest prompt (a padded baseline), (b) `ClipModel.encode_text_templates_batch` cold (caches
cleared) and (c) warm (cached). Prints one JSON line of medians in seconds. (Random weights: same cost.)

    python benchmarks/bench_clip_text.py [--reps-plain 3] [--reps 7] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore", category=UserWarning, module="clip")

import clip  # noqa: E402
from clip.model import CLIP  # noqa: E402

from styleclip.models.clip_model import IMAGENET_TEMPLATES, ClipModel  # noqa: E402

TARGET, NEUTRAL = "face with blue eyes", "face with eyes"  # the StyleCLIP notebook's example pair


def build_vit_b32() -> CLIP:
    """ViT-B/32's architecture (clip.load would infer these from the official state dict), random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIP(
            embed_dim=512,
            image_resolution=224,
            vision_layers=12,
            vision_width=768,
            vision_patch_size=32,
            context_length=77,
            vocab_size=49408,
            transformer_width=512,
            transformer_heads=8,
            transformer_layers=12,
        )
    return model.float().eval()


def plain_full_context(model: CLIP, prompts: list[str]) -> torch.Tensor:
    """What StyleCLIP's zeroshot_classifier does: tokenize to 77 and run the whole context."""
    with torch.inference_mode():
        return F.normalize(model.encode_text(clip.tokenize(prompts)), dim=-1)


def padded_cut(model: CLIP, prompts: list[str]) -> torch.Tensor:
    """Baseline: the batch cut to its longest prompt, with the causal mask cut to match."""
    with torch.inference_mode():
        tokens = clip.tokenize(prompts)
        ends = tokens.argmax(dim=-1)
        n_ctx = int(ends.max()) + 1
        mask = model.build_attention_mask()[:n_ctx, :n_ctx]
        x = model.token_embedding(tokens[:, :n_ctx]) + model.positional_embedding[:n_ctx]
        x = x.permute(1, 0, 2)  # NLD -> LND
        for block in model.transformer.resblocks:
            h = block.ln_1(x)
            x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
            x = x + block.mlp(block.ln_2(x))
        x = model.ln_final(x.permute(1, 0, 2))
        return F.normalize(x[torch.arange(len(prompts)), ends] @ model.text_projection, dim=-1)


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps-plain", type=int, default=3, help="repetitions of the slow plain way")
    parser.add_argument("--reps", type=int, default=7, help="repetitions of the other ways")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    model = build_vit_b32()
    wrapper = ClipModel.from_model(model)
    prompts = [t.format(text) for text in (TARGET, NEUTRAL) for t in IMAGENET_TEMPLATES]

    def cold() -> torch.Tensor:
        wrapper.clear_cache()
        return wrapper.encode_text_templates_batch([TARGET, NEUTRAL])

    def cold_two_calls() -> torch.Tensor:
        # One call per text: the texts cannot share template prefixes (~1200 tree nodes instead of ~900).
        wrapper.clear_cache()
        return wrapper.encode_text_templates(TARGET) - wrapper.encode_text_templates(NEUTRAL)

    # Warm-up (first-call allocations, tokenizer caches), then check the fast path agrees with the plain one.
    reference = plain_full_context(model, prompts)
    fast = wrapper.encode_text(prompts)
    max_abs_diff = float((reference - fast).abs().max())
    padded_cut(model, prompts)
    cold()

    plain_s = median_time(lambda: plain_full_context(model, prompts), args.reps_plain)
    padded_s = median_time(lambda: padded_cut(model, prompts), args.reps)
    cold_s = median_time(cold, args.reps)
    cold_two_s = median_time(cold_two_calls, args.reps)
    forwards_before = wrapper.text_forward_calls
    warm_s = median_time(lambda: wrapper.encode_text_templates_batch([TARGET, NEUTRAL]), args.reps * 10)
    assert wrapper.text_forward_calls == forwards_before, "the warm path ran the model"

    print(
        json.dumps(
            {
                "benchmark": "clip_text_template_pair",
                "prompts": len(prompts),
                "torch_threads": torch.get_num_threads(),
                "a_plain_full_context_s": round(plain_s, 4),
                "a2_padded_cut_to_longest_s": round(padded_s, 4),
                "b_wrapper_cold_s": round(cold_s, 4),
                "b2_wrapper_cold_one_call_per_text_s": round(cold_two_s, 4),
                "c_wrapper_warm_s": round(warm_s, 6),
                "speedup_cold_vs_plain": round(plain_s / cold_s, 1),
                "max_abs_diff_vs_plain": max_abs_diff,
                "max_tree_nodes": wrapper.max_tree_nodes,
            }
        )
    )


if __name__ == "__main__":
    main()
