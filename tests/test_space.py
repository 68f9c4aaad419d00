"""The Hugging Face Space that tools/deploy_space.py stages: its configuration, its contents, and that the staged
folder alone runs the app (the Hub itself is not reachable from the test machines)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import gradio
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.app_process import running_app

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("deploy_space", REPO / "tools" / "deploy_space.py")
deploy_space = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(deploy_space)


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("space") / "space"
    deploy_space.stage(out)
    return out


def _front_matter(readme: str) -> dict:
    head, sep, _ = readme.removeprefix("---\n").partition("\n---\n")
    assert readme.startswith("---\n") and sep, "the Hub reads the configuration from a leading YAML block"
    return yaml.safe_load(head)


def test_the_readme_configures_a_gradio_space(staged):
    config = _front_matter((staged / "README.md").read_text())
    assert config["sdk"] == "gradio" and config["app_file"] == "app.py" and (staged / "app.py").is_file()
    assert config["sdk_version"] == gradio.__version__  # the gradio this checkout was tested with
    assert config["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert isinstance(config["python_version"], str) and config["pinned"] is False
    assert 0 < len(config["short_description"]) <= 60


def test_the_space_holds_the_runtime_files_and_not_the_tests(staged):
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    shipped = [name for name in tracked if name.split("/")[0] in deploy_space.RUNTIME_PATHS]
    assert "assets/toyfaces/generator.pt" in shipped and "precomputed/toyfaces/fs3.npy" in shipped
    for name in shipped:
        assert (staged / name).read_bytes() == (REPO / name).read_bytes(), name
    on_disk = {str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file()}
    assert on_disk == {*shipped, "README.md", "requirements.txt"}  # no tests, benchmarks or training runs


def test_requirements_drop_gradio_and_the_test_tools_only():
    project = "torch==2.14.1\n# a comment naming pytest\ngradio\ngradio_client\nPytest>=8\nselenium ; python_version>'3'\nnumpy\n"
    assert deploy_space.space_requirements(project) == "torch==2.14.1\n# a comment naming pytest\nnumpy\n"
    staged = deploy_space.space_requirements((REPO / "requirements.txt").read_text())
    assert "torch==2.14.1" in staged and "clip-anytorch" in staged and "gradio" not in staged.lower()


def test_staging_refuses_a_folder_that_is_not_a_space(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="neither empty nor a staged Space"):
        deploy_space.stage(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_upload_creates_a_gradio_space_and_commits_the_staged_folder(staged):
    calls = []
    api = SimpleNamespace(create_repo=lambda *a, **k: calls.append(("create", a, k)) or "https://hf.co/spaces/u/s",
                          upload_folder=lambda **k: calls.append(("upload", (), k)))
    assert deploy_space.upload(staged, "u/s", api=api) == "https://hf.co/spaces/u/s"
    (_, args, create), (_, _, upload) = calls
    assert args == ("u/s",) and create["repo_type"] == "space" and create["space_sdk"] == "gradio"
    assert create["exist_ok"] is True
    assert upload["repo_type"] == "space" and Path(upload["folder_path"]) == staged and upload["repo_id"] == "u/s"


def test_the_staged_folder_alone_serves_the_app(staged, tmp_path):
    # No repository on the path: the Space must import and load everything from its own folder.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with running_app(staged, tmp_path / "space.log", env=env) as url:
        from gradio_client import Client

        image_path, info = Client(url, verbose=False).predict("", 3, "face", "smiling face", 4.1, 0.15,
                                                              api_name="/global_edit")
    image = np.asarray(Image.open(image_path).convert("RGB"))
    assert image.ndim == 3 and image.std() > 10 and info["channels"] > 0 and info["model"] == "toyfaces"
