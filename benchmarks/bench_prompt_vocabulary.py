"""How the embedded CLIP reads each benchmark edit's target text: the cosine of its text direction ("face" →
target) with the mean direction of each value's training phrases ("face" → "face with <phrase>", or
"<adjective> face"). A target that points at another value than its own is a vocabulary problem of the CLIP, not
of the engines. Prints one JSON line per edit, values sorted by cosine.

    python benchmarks/bench_prompt_vocabulary.py [--model toyfaces] [--text "face with a hat"] [--attribute hat]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.engines.global_directions import text_direction  # noqa: E402
from styleclip.evaluation import BENCHMARK_EDITS  # noqa: E402
from styleclip.studio import Studio  # noqa: E402
from styleclip.toyfaces.captions import PHRASES, is_adjective  # noqa: E402


def value_cosines(clip_model, neutral: str, target: str, attribute: str) -> dict[str, float]:
    """Cosine of the target's direction with each value's mean training-phrase direction, highest first."""
    dt, _ = text_direction(clip_model, neutral, target)
    out = {}
    for value, phrases in PHRASES[attribute].items():
        texts = [f"{p} {neutral}" if is_adjective(p) else f"{neutral} with {p}" for p in phrases]
        mean = torch.stack([text_direction(clip_model, neutral, t)[0] for t in texts]).mean(0)
        out[value] = round(float(dt @ mean / mean.norm()), 3)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toyfaces")
    p.add_argument("--text", help="one target text instead of the benchmark edits (needs --attribute)")
    p.add_argument("--attribute")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    clip_model = Studio().model(args.model).clip
    cases = ([("face", args.text, args.attribute, args.text)] if args.text else
             [(s.neutral, s.target, s.attribute, s.name) for s in BENCHMARK_EDITS])
    for neutral, target, attribute, name in cases:
        print(json.dumps({"edit": name, "target": target,
                          "cosine_with_values": value_cosines(clip_model, neutral, target, attribute)}))


if __name__ == "__main__":
    main()
