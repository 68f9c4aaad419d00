"""Latency of what a person waits for in the global-directions tab, on the embedded default model.

In process (the library call behind every UI event): a new text pair (cold: text encoding + relevance + Δs +
synthesis), an alpha move (cached Δs: one multiply-add and one synthesis) and a beta move (new Δs, no text
encoding). With `--url`, an alpha move through a running app's API `/global_edit`: as one plain HTTP request
(POST /gradio_api/run/global_edit, then GET of the returned image) and through gradio_client (which adds its own
protocol round trips and the download). Prints one JSON line of medians in milliseconds.

    python benchmarks/bench_app_latency.py [--reps 20] [--url http://127.0.0.1:7860/]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.studio import Studio  # noqa: E402


def _median_ms(fn, reps: int) -> float:
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--url", default=None, help="also time a running app's /global_edit API")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    studio = Studio()
    studio.global_edit(args.model, 0, "face", "smiling face", 4.1, 0.15)  # load + warm up
    alphas = [round(-5 + 0.5 * i, 1) for i in range(21)]
    result = {
        "model": studio.model(args.model).name, "threads": args.threads,
        "new_text_pair_ms": _median_ms(lambda i: studio.global_edit(
            args.model, 0, "face", f"face number {i} with a hat", 4.1, 0.15), max(3, args.reps // 4)),
        "alpha_move_ms": _median_ms(lambda i: studio.global_edit(
            args.model, 0, "face", "smiling face", alphas[i % len(alphas)], 0.15), args.reps),
        "beta_move_ms": _median_ms(lambda i: studio.global_edit(
            args.model, 0, "face", "smiling face", 4.1, 0.08 + 0.005 * (i % 8)), args.reps),
    }
    if args.url:
        from gradio_client import Client
        client = Client(args.url, verbose=False)
        client.predict("", 0, "face", "smiling face", 4.1, 0.15, api_name="/global_edit")
        result["gradio_client_alpha_move_ms"] = _median_ms(lambda i: client.predict(
            "", 0, "face", "smiling face", alphas[i % len(alphas)], 0.15, api_name="/global_edit"), args.reps)
        # The same endpoint as one plain HTTP request (it is served outside the queue), image fetched too.
        import httpx
        with httpx.Client(timeout=30) as http:
            def raw(i):
                response = http.post(args.url.rstrip("/") + "/gradio_api/run/global_edit",
                                     json={"data": ["", 0, "face", "smiling face", alphas[i % len(alphas)], 0.15]})
                response.raise_for_status()
                http.get(response.json()["data"][0]["url"]).raise_for_status()
            result["http_alpha_move_ms"] = _median_ms(raw, args.reps)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
