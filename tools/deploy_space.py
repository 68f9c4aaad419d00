"""Stage the app as a Hugging Face Space (Gradio SDK), and optionally create or update the Space.

    python tools/deploy_space.py --out build/space                        # stage only (inspect it, or run
                                                                          # `python app.py` inside it)
    python tools/deploy_space.py --out build/space --repo-id USER/NAME    # stage, then upload (needs a token:
                                                                          # `hf auth login` or HF_TOKEN)

The Space holds what the app needs at run time and nothing else: `app.py`, `styleclip/`, `ops/`, `assets/` and
`precomputed/` (git's tracked files, as they are in the working tree); a `requirements.txt` without the test tools
and without gradio, which the Space installs itself at the SDK version its README names; and a README whose YAML
header configures the Space (SDK and Python versions are the ones this checkout runs and was tested with).
huggingface_hub uploads the weights as LFS files. On CPU hardware the Space runs the embedded model as this
machine does; on GPU hardware every model runs on the GPU (README, "GPU").
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What the app reads at run time (app.py imports styleclip and ops; the models and statistics ship in the others).
RUNTIME_PATHS = ("app.py", "styleclip", "ops", "assets", "precomputed")
# Tools of the test suite, and gradio itself: the Space installs gradio at its README's sdk_version.
NOT_FOR_THE_SPACE = {"gradio", "gradio-client", "pytest", "selenium"}
SHORT_DESCRIPTION = "Edit faces with text: StyleCLIP's three engines, live"  # the Hub allows 60 characters


def runtime_files(root: Path = REPO) -> list[str]:
    """The tracked files under RUNTIME_PATHS, relative to `root` (git's index; the working tree's contents)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", *RUNTIME_PATHS], cwd=root, check=True,
                                capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"error: {root} must be a git checkout of the project ({exc})") from None
    files = [name for name in listed.decode().split("\0") if name]
    missing = [name for name in files if not (root / name).is_file()]
    if missing:
        raise SystemExit(f"error: tracked files missing from the working tree: {', '.join(missing[:5])}")
    return files


def space_requirements(text: str) -> str:
    """requirements.txt for the Space: the project's, without the lines of NOT_FOR_THE_SPACE."""
    kept = []
    for line in text.splitlines():
        name = re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
        if name and not line.lstrip().startswith("#") and name in NOT_FOR_THE_SPACE:
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def space_readme(gradio_version: str, python_version: str) -> str:
    """The Space's README.md: the YAML header the Hub reads (spaces-config-reference), then a short text."""
    header = {
        "title": "StyleCLIP Studio", "emoji": "🎭", "colorFrom": "indigo", "colorTo": "pink", "sdk": "gradio",
        "sdk_version": gradio_version, "python_version": python_version, "app_file": "app.py", "pinned": False,
        "short_description": SHORT_DESCRIPTION,
    }
    # JSON scalars are YAML scalars: quoted strings stay strings (a version "3.10" is not the number 3.1, and a
    # colon inside the description does not start a mapping).
    lines = ["---", *(f"{key}: {json.dumps(value, ensure_ascii=False)}" for key, value in header.items()), "---", ""]
    body = """# StyleCLIP Studio

Pick a face, type a neutral and a target description ("face" → "smiling face"), drag the strength (alpha) and
disentanglement (beta) sliders, and watch the StyleGAN2 image change. The three engines of StyleCLIP (Patashnik et
al., ICCV 2021) on one generator and one CLIP: global directions (real time), the latent mapper and latent
optimization; photos can be uploaded and inverted.

This Space runs the project's embedded model, *toyfaces*: a small StyleGAN2 and a small CLIP trained on cartoon
faces that the project renders itself, so it works on CPU hardware. The API endpoint `global_edit` takes (model,
seed, neutral, target, alpha, beta) and returns (image, info).
"""
    return "\n".join(lines) + body


def stage(out: Path, root: Path = REPO) -> list[str]:
    """Writes the Space into `out` (emptied first); returns the files copied from `root`."""
    import gradio  # the version the Space should install is the one this checkout runs

    files = runtime_files(root)
    if out.exists():
        if not (out / "app.py").is_file() and any(out.iterdir()):
            raise SystemExit(f"error: {out} is neither empty nor a staged Space; pick another folder")
        shutil.rmtree(out)
    for name in files:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    (out / "requirements.txt").write_text(space_requirements((root / "requirements.txt").read_text()))
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    (out / "README.md").write_text(space_readme(gradio.__version__, python_version))
    return files


def upload(out: Path, repo_id: str, private: bool = False, api=None) -> str:
    """Creates the Space if needed and uploads the staged folder as one commit; returns the Space's URL."""
    if api is None:
        from huggingface_hub import HfApi  # only the upload needs the Hub client

        api = HfApi()
    url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=str(out),
                      commit_message="StyleCLIP Studio: staged by tools/deploy_space.py",
                      delete_patterns=["*"])  # files the app no longer ships leave the Space too
    return str(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to stage the Space in (replaced)")
    parser.add_argument("--repo-id", help="USER/NAME of the Space to create or update; without it, stage only")
    parser.add_argument("--private", action="store_true", help="create the Space as private")
    args = parser.parse_args(argv)
    files = stage(args.out)
    size = sum((args.out / name).stat().st_size for name in files)
    print(f"staged {len(files)} files ({size / 2 ** 20:.1f} MiB) in {args.out}")
    if args.repo_id:
        print(f"uploaded: {upload(args.out, args.repo_id, args.private)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
