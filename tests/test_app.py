"""End-to-end tests of app.py: the real app in a subprocess, driven through its API and through a real browser."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.app_process import running_app

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with running_app(REPO, tmp_path_factory.mktemp("app") / "app.log") as url:
        yield url


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client
    return Client(app_url, verbose=False)


def _call(client, *args):
    image_path, info = client.predict(*args, api_name="/global_edit")
    return np.asarray(Image.open(image_path).convert("RGB")), info


def test_global_edit_api_edits_the_seed(client):
    source, info0 = _call(client, "", 3, "face", "smiling face", 0.0, 0.15)
    edited, info = _call(client, "", 3, "face", "smiling face", 6.0, 0.1)
    assert source.shape == edited.shape and source.shape[2] == 3
    assert info["channels"] > 0 and info["model"] == "toyfaces" and info["seed"] == 3
    assert np.abs(edited.astype(int) - source.astype(int)).mean() > 1.0, "a strong edit must change the image"
    same, _ = _call(client, "toyfaces", 3, "face", "smiling face", 6.0, 0.1)
    np.testing.assert_array_equal(same, edited)  # "" is the default model, and edits are deterministic


@pytest.mark.parametrize("args, message", [
    (("", 1, "face", "", 4.0, 0.15), "target text is empty"),
    (("", 1, "face", "smiling face", 40.0, 0.15), "must be between -10.0 and 10.0"),
    (("", 1, "face", "smiling face", 4.0, 0.9), "must be between 0.08 and 0.3"),
    (("", -5, "face", "smiling face", 4.0, 0.15), "seed must be a whole number"),
    (("no-such-model", 1, "face", "smiling face", 4.0, 0.15), "no-such-model"),
    (("", 1, "smiling face", "smiling face", 4.0, 0.15), "texts are the same"),
    (("", 1, "face", "a smiling face " * 30, 4.0, 0.15), "too long"),
])
def test_global_edit_api_gives_plain_errors(client, args, message):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError) as err:
        client.predict(*args, api_name="/global_edit")
    assert message in str(err.value) and "Traceback" not in str(err.value)


def test_no_channel_beta_is_explained(client):
    """A beta that keeps no channel gives a message with the beta that would work, never a NaN image."""
    from gradio_client.exceptions import AppError
    try:
        _, info = _call(client, "", 1, "face", "face with a hat", 4.0, 0.3)
    except AppError as exc:
        assert "beta" in str(exc) and "channels" in str(exc)
    else:
        assert info["channels"] > 0


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


needs_browser = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and "
                                   "chromium-driver (.ci/run installs them)")


@pytest.fixture
def browser(app_url, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.get(app_url)
        yield driver
    finally:
        driver.quit()


def _text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By
    found = driver.find_elements(By.ID, element_id)
    return found[0].text if found else ""


def _img_src(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By
    found = driver.find_elements(By.CSS_SELECTOR, f"#{element_id} img")
    return found[0].get_attribute("src") if found else ""


@needs_browser
def test_browser_live_sliders_and_text(browser):
    """A person's path: the page loads with an edit shown, a new target re-renders, the alpha slider re-renders."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 180)
    wait.until(lambda d: "channels moved" in _text(d, "edit-info") and _img_src(d, "edited-image"))
    assert "alpha +4.10" in _text(browser, "edit-info")
    assert "“face” → “smiling face”" in _text(browser, "edit-info")
    first_src = _img_src(browser, "edited-image")

    target = browser.find_element(By.CSS_SELECTOR, "#target-text input, #target-text textarea")
    target.clear()
    target.send_keys("face with blond hair", Keys.ENTER)
    wait.until(lambda d: "“face with blond hair”" in _text(d, "edit-info"))
    wait.until(lambda d: _img_src(d, "edited-image") != first_src)

    slider = browser.find_element(By.CSS_SELECTOR, "#alpha-slider input[type='range']")
    before = _img_src(browser, "edited-image")
    browser.execute_script(
        "const s = arguments[0]; s.value = -3; s.dispatchEvent(new Event('input', {bubbles: true}));"
        "s.dispatchEvent(new Event('change', {bubbles: true}));", slider)
    wait.until(lambda d: "alpha -3.00" in _text(d, "edit-info"))
    wait.until(lambda d: _img_src(d, "edited-image") != before)
    assert "Traceback" not in browser.page_source


def test_global_edit_api_names_words_the_embedded_clip_never_saw(client):
    _, info = _call(client, "", 2, "face", "grinning face", 4.1, 0.15)
    assert info["unknown_words"] == ["grinning"]
    _, info = _call(client, "", 2, "face", "face with blond hair", 4.1, 0.15)
    assert info["unknown_words"] == []


@needs_browser
def test_browser_example_edits_and_the_unknown_word_notice(browser):
    """Clicking an example edit fills both texts and renders it; a word the CLIP never saw gets a plain notice."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 180)
    wait.until(lambda d: "channels moved" in _text(d, "edit-info") and _img_src(d, "edited-image"))
    before = _img_src(browser, "edited-image")
    example = next(e for e in browser.find_elements(By.CSS_SELECTOR, "#edit-examples button, #edit-examples tr")
                   if "face with sunglasses" in e.text)
    example.click()
    wait.until(lambda d: "“face” → “face with sunglasses”" in _text(d, "edit-info"))
    wait.until(lambda d: _img_src(d, "edited-image") != before)
    target = browser.find_element(By.CSS_SELECTOR, "#target-text input, #target-text textarea")
    assert target.get_attribute("value") == "face with sunglasses"
    assert "never saw" not in _text(browser, "edit-info")

    target.clear()
    target.send_keys("grinning face", Keys.ENTER)
    wait.until(lambda d: "never saw “grinning”" in _text(d, "edit-info"))
    assert "Traceback" not in browser.page_source


@needs_browser
def test_browser_latent_optimization_tab(browser):
    """The optimization tab runs for real: live status, a result image and a final summary with the losses."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 180)
    wait.until(lambda d: "channels moved" in _text(d, "edit-info"))
    tab = next(b for b in browser.find_elements(By.CSS_SELECTOR, "button[role='tab']")
               if "optimization" in b.text.lower())
    tab.click()
    # the model's identity network is named under the slider, and its default weights are set
    wait.until(lambda d: "identity network: toyfaces-identity" in d.find_element(By.TAG_NAME, "body").text)
    # the API-only inputs stay hidden (they used to show as bare "Textbox"/"Number" fields at the bottom)
    labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "[data-testid='block-info']")]
    assert not {"Textbox", "Number", "File"} & set(labels), labels
    steps = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#opt-steps input[type='number']"))
    steps.clear()
    steps.send_keys("6")
    browser.find_element(By.ID, "opt-run").click()
    wait.until(lambda d: _text(d, "opt-info").startswith("Done"))
    assert "CLIP loss" in _text(browser, "opt-info") and _img_src(browser, "opt-image")


@needs_browser
def test_browser_mapper_train_then_apply(browser):
    """Train a mapper for a few steps from the page, then apply it to a batch of seeds."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 240)
    wait.until(lambda d: "channels moved" in _text(d, "edit-info"))
    next(b for b in browser.find_elements(By.CSS_SELECTOR, "button[role='tab']") if "mapper" in b.text.lower()).click()
    wait.until(lambda d: any("Train a new mapper" in b.text for b in d.find_elements(By.TAG_NAME, "button")))
    next(b for b in browser.find_elements(By.TAG_NAME, "button") if "Train a new mapper" in b.text).click()
    steps = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#train-steps input[type='number']"))
    steps.clear()
    steps.send_keys("4")
    coarse = next(label for label in browser.find_elements(By.CSS_SELECTOR, "#train-groups label")
                  if label.text.strip() == "coarse")
    coarse.click()  # train the medium and fine rows only
    browser.find_element(By.ID, "train-run").click()
    wait.until(lambda d: _text(d, "train-status").startswith("Trained"))
    assert "medium and fine layers only" in _text(browser, "train-status")
    seeds = browser.find_element(By.CSS_SELECTOR, "#mapper-seeds input, #mapper-seeds textarea")
    seeds.send_keys("0-2")
    browser.find_element(By.ID, "mapper-apply").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#mapper-gallery img")) >= 6)
    assert "Traceback" not in browser.page_source


@needs_browser
def test_browser_channel_mapper_train_then_apply(browser):
    """The channel-mapper kind: its neutral box appears (the W+ L2 and layer switches go), it trains from the page
    and its result applies like any mapper."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 240)
    wait.until(lambda d: "channels moved" in _text(d, "edit-info"))
    next(b for b in browser.find_elements(By.CSS_SELECTOR, "button[role='tab']") if "mapper" in b.text.lower()).click()
    wait.until(lambda d: any("Train a new mapper" in b.text for b in d.find_elements(By.TAG_NAME, "button")))
    next(b for b in browser.find_elements(By.TAG_NAME, "button") if "Train a new mapper" in b.text).click()
    assert not browser.find_elements(By.ID, "train-neutral") or not browser.find_element(
        By.ID, "train-neutral").is_displayed()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#train-kind label"))
    next(label for label in browser.find_elements(By.CSS_SELECTOR, "#train-kind label")
         if "channel mapper" in label.text).click()
    wait.until(lambda d: d.find_elements(By.ID, "train-neutral") and d.find_element(By.ID, "train-neutral").is_displayed())
    assert not browser.find_elements(By.ID, "train-groups") or not browser.find_element(
        By.ID, "train-groups").is_displayed()
    text = browser.find_element(By.CSS_SELECTOR, "#train-text input, #train-text textarea")
    text.clear()
    text.send_keys("face with a hat")
    steps = browser.find_element(By.CSS_SELECTOR, "#train-steps input[type='number']")
    steps.clear()
    steps.send_keys("3")
    browser.find_element(By.ID, "train-run").click()
    wait.until(lambda d: _text(d, "train-status").startswith("Trained"))
    assert "face → face with a hat (channels)" in _text(browser, "train-status")
    assert "style channels" in _text(browser, "train-status")
    browser.find_element(By.ID, "mapper-apply").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#mapper-gallery img")) >= 2)
    assert "Traceback" not in browser.page_source


def test_optimize_api_runs_and_refuses_bad_input(client):
    from gradio_client.exceptions import AppError
    image_path, info = client.predict("", 2, "smiling face", 3, 0.008, 0.0, "edit", "w_plus", api_name="/optimize")
    assert np.asarray(Image.open(image_path)).ndim == 3
    assert info["steps"] == 3 and info["seed"] == 2 and np.isfinite(info["clip_loss_end"])
    _, free = client.predict("", 2, "smiling face", 2, 0.008, 0.0, "free", "s", api_name="/optimize")
    assert free["mode"] == "free" and free["space"] == "s"
    for args, message in [(("", 2, "", 3, 0.008, 0.0, "edit", "w_plus"), "text is empty"),
                          (("", 2, "smiling face", 5000, 0.008, 0.0, "edit", "w_plus"), "steps must be between"),
                          (("", 2, "smiling face", 3, 0.008, 0.0, "sideways", "w_plus"), "mode must be one of")]:
        with pytest.raises(AppError, match=message):
            client.predict(*args, api_name="/optimize")


def test_apply_mapper_api_refuses_unknown_mappers(client):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="Unknown mapper"):
        client.predict("", "../../etc/passwd", 0, 1.0, api_name="/apply_mapper")


def test_apply_mapper_api_serves_both_kinds_of_shipped_mapper(client):
    from styleclip.studio import Studio

    studio = Studio()
    kinds = {"smiling": "w_plus", "smiling (channels)": "channels"}
    expected = {name: studio.apply_mapper("toyfaces", studio.shipped_mappers("toyfaces")[name], [4], 1.0)[0][2]
                for name in kinds}
    for name, kind in kinds.items():
        image_path, info = client.predict("", name, 4, 1.0, api_name="/apply_mapper")
        assert info["kind"] == kind and info["seed"] == 4
        served = np.asarray(Image.open(image_path).convert("RGB")).astype(int)  # the API sends lossy WebP
        errors = {other: np.abs(served - image).mean() for other, image in expected.items()}
        assert errors[name] < 4 and errors[name] < min(v for k, v in errors.items() if k != name), errors


def test_invert_photo_api_reconstructs_a_fresh_render(client, tmp_path):
    """The upload flow through the API: a renderer face the generator never drew is inverted with a PSNR."""
    from gradio_client import handle_file
    from styleclip.studio import Studio

    photo = tmp_path / "face.png"
    Image.fromarray(Studio().fresh_render("", 5)).save(photo)
    recon_path, info = client.predict("", handle_file(str(photo)), 15, api_name="/invert_photo")
    recon = np.asarray(Image.open(recon_path).convert("RGB"))
    assert recon.shape[:2] == np.asarray(Image.open(photo)).shape[:2]
    assert info["steps"] == 15 and info["psnr"] > 8 and "centre" in info["alignment"]


@pytest.mark.parametrize("content, message", [(b"not an image at all", "not an image Pillow can read"),
                                              (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "")])
def test_invert_photo_api_refuses_non_images(client, tmp_path, content, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    with pytest.raises(AppError) as err:
        client.predict("", handle_file(str(bad)), 15, api_name="/invert_photo")
    assert message in str(err.value) and "Traceback" not in str(err.value)


@needs_browser
def test_browser_photo_upload_flow(browser):
    """Render a fresh toyface as the 'photo', align and invert it; the reconstruction becomes the edited source."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 240)
    wait.until(lambda d: "channels moved" in _text(d, "edit-info"))
    next(b for b in browser.find_elements(By.TAG_NAME, "button") if "Use your own photo" in b.text).click()
    wait.until(lambda d: d.find_element(By.ID, "photo-fresh").is_displayed())
    browser.find_element(By.ID, "photo-fresh").click()
    wait.until(lambda d: _img_src(d, "photo-in"))
    browser.find_element(By.ID, "photo-run").click()
    wait.until(lambda d: _text(d, "photo-status").startswith("Inverted"))
    assert "PSNR" in _text(browser, "photo-status") and _img_src(browser, "photo-recon")


def test_mapper_run_path_is_stable_and_names_the_identity_weight(monkeypatch):
    sys.path.insert(0, str(REPO))
    import app

    path, id_weight = app.mapper_run_path("toyfaces", "smiling face", 300, 0.8)
    assert id_weight == app.STUDIO.model("toyfaces").bundle.mapper_id_weight
    assert app.mapper_run_path("toyfaces", "smiling face", 300, 0.8) == (path, id_weight)
    assert app.mapper_run_path("toyfaces", "smiling face", 301, 0.8)[0] != path
    assert app.mapper_run_path("toyfaces", "smiling face", 300, 0.8, ("coarse", "medium", "fine"))[0] == path
    assert app.mapper_run_path("toyfaces", "smiling face", 300, 0.8, ("medium", "fine"))[0] != path
    # A run trained under another default identity weight must not be resumed as if it were this one.
    monkeypatch.setattr(app.STUDIO, "mapper_identity", lambda model: (None, 0.0, None))
    other_path, other_weight = app.mapper_run_path("toyfaces", "smiling face", 300, 0.8)
    assert other_weight == 0.0 and other_path != path and other_path.parent == path.parent


def test_missing_statistics_get_a_plain_message_and_the_compute_button_makes_them(monkeypatch, tmp_path):
    sys.path.insert(0, str(REPO))
    import functools

    import gradio as gr

    import app
    from styleclip.engines.precompute import precompute
    from styleclip.models import model_zoo
    from styleclip.studio import Studio

    monkeypatch.setattr(model_zoo, "PRECOMPUTED_ROOT", tmp_path)  # a checkout without precomputed/ files
    monkeypatch.setattr(app, "STUDIO", Studio())
    # The button's own handler and the library's precompute, on a smaller sample than the default's 100 images
    # (which take minutes here).
    monkeypatch.setattr(app, "precompute", functools.partial(precompute, n_stats=2000, n_images=2,
                                                             refine_channels=0))
    state = app.new_session("toyfaces", 3)
    with pytest.raises(gr.Error, match="Compute statistics"):
        app.on_edit(state, "face", "smiling face", 4.1, 0.15)
    reports = []
    message = app.on_compute_stats(state, progress=lambda share, desc: reports.append((share, desc)))
    assert str(tmp_path / "toyfaces") in message and (tmp_path / "toyfaces" / "fs3.npy").is_file()
    assert reports and reports[-1][0] == 1.0
    image, info, _ = app.on_edit(state, "face", "smiling face", 4.1, 0.15)
    assert "channels" in info.lower() and np.asarray(image).ndim == 3


def test_a_second_optimization_in_one_session_is_refused_while_other_sessions_run():
    sys.path.insert(0, str(REPO))
    from types import SimpleNamespace

    import gradio as gr

    import app

    def run(session: str, seed: int):
        return app.on_optimize(app.new_session("toyfaces", seed), "smiling face", 4, 0.05, 0.0, "edit", "w_plus",
                               request=SimpleNamespace(session_hash=session))

    first = run("s1", 0)
    next(first)  # the first run is going
    with pytest.raises(gr.Error, match="already running in this session"):
        next(run("s1", 1))
    other = [update for update in run("s2", 2)]  # another user is served meanwhile, to the end
    assert other and other[-1][0] is not None  # its last update carries the result image
    list(first)
    again = run("s1", 3)  # the session is free once its run has ended
    next(again)
    again.close()  # as Gradio cancels: the worker stops at its next step
    deadline = time.time() + 60
    while any(t.name == "studio-job" and t.is_alive() for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "studio-job" and t.is_alive() for t in threading.enumerate())
