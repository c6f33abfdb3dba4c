"""The widgets in a real browser: JupyterLab in headless Chromium (Debian's, driven by Playwright).

One JupyterLab server and one browser for the module. The gallery notebook (tests/browser/widget_gallery.ipynb)
builds every widget class of course.widgets cheaply; each test moves one widget's main slider from the keyboard and
checks that its image changed, that it rendered as controls (not as its plain-text repr) and that the console shows
no error. A page served with the widget manager disabled must be caught by the same check, and `make demo`
(Voila) must serve notebook 06 with its code hidden and a working widget.
"""
import hashlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jupyterlab_server import (GALLERY, GALLERY_WIDGETS, ROOT, ConsoleErrors, LabServer, chromium_missing,
                               disable_extensions_in_page_config, launch_browser, move_control, open_notebook,
                               output_problems, run_all_and_wait, run_cells_and_wait)

pytestmark = pytest.mark.slow

MISSING = chromium_missing()
if MISSING and os.environ.get("CI"):
    raise RuntimeError(f"browser tests cannot run on CI: {MISSING}")  # .ci/run installs Chromium: never skip there
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

SHOTS = Path(os.environ.get("BROWSER_SHOTS", "")) if os.environ.get("BROWSER_SHOTS") else None


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def lab():
    with LabServer() as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def gallery(lab, browser):
    """The gallery open in JupyterLab after Run All: (page, console errors, seconds of Run All)."""
    before = digest(ROOT / GALLERY)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = ConsoleErrors(page)
    open_notebook(page, lab)
    seconds = run_all_and_wait(page)
    if SHOTS:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "gallery.png"))
    yield page, errors, seconds
    page.close()
    assert digest(ROOT / GALLERY) == before, "running the gallery changed the tracked file (autosave is off)"


def test_the_gallery_holds_every_widget_class():
    from course import widgets

    classes = {name for name, obj in vars(widgets).items() if inspect.isclass(obj) and obj.__module__.startswith(
        "course.widgets")}
    assert classes == {cls for cls, _ in GALLERY_WIDGETS.values()}, "a widget class is missing from the gallery"
    source = "\n".join("".join(c["source"]) for c in json.loads((ROOT / GALLERY).read_text())["cells"])
    for name in GALLERY_WIDGETS:
        assert f'add_class("gallery-{name}")' in source, name


@pytest.mark.parametrize("name", list(GALLERY_WIDGETS))
def test_widget_renders_and_its_image_follows_the_keyboard(gallery, name):
    page, errors, _ = gallery
    box = f".gallery-{name}"
    assert output_problems(page, box) == []
    page.locator(box).scroll_into_view_if_needed()
    assert page.locator(f"{box} .widget-image, {box} img").count() >= 1
    move_control(page, box, key=GALLERY_WIDGETS[name][1], timeout_ms=120_000)
    if SHOTS:
        page.locator(box).screenshot(path=str(SHOTS / f"{name}.png"))
    assert output_problems(page, box) == []
    assert errors == [], errors


def test_a_page_without_the_widget_manager_is_caught(lab, browser, gallery):
    """The check above on a page whose widget extension is disabled: the widgets show as plain text and it says so."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    disable_extensions_in_page_config(page)
    open_notebook(page, lab)
    assert page.evaluate("() => window.jupyterapp.hasPlugin('@jupyter-widgets/jupyterlab-manager:plugin')") is False
    run_cells_and_wait(page, [1, 2])  # the set-up and the scrubber
    if SHOTS:
        page.screenshot(path=str(SHOTS / "no_widget_manager.png"))
    problems = output_problems(page, ".gallery-scrubber")
    page.close()
    assert any("widget as plain text" in p for p in problems), problems
    assert any("no rendered widget matches" in p for p in problems), problems


def demo_copy(folder):
    """Notebook 06 cut to its title, its set-up cell and its explorer (the whole notebook runs its experiments
    first: about a minute on 2 idle cores, four on a loaded machine), in ``folder``."""
    nb = json.loads((ROOT / "notebooks" / "06_cfg.ipynb").read_text())
    cells = nb["cells"]
    first_code = next(i for i, c in enumerate(cells) if c["cell_type"] == "code")
    explorer = next(i for i, c in enumerate(cells) if "widgets.GuidanceExplorer(" in "".join(c["source"]))
    nb["cells"] = [cells[0], cells[first_code], cells[explorer - 1], cells[explorer]]
    path = Path(folder) / "06_cfg_demo.ipynb"
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return path


def test_make_demo_serves_notebook_06_with_its_code_hidden(browser, tmp_path):
    venv = Path(sys.prefix)
    if not (venv / ".installed").exists():
        pytest.skip(f"make demo needs the environment made by `make venv`; {venv} is another one")
    notebook = demo_copy(tmp_path)
    command = ["make", "--no-print-directory", "demo", f"NB={notebook}", f"VENV={venv}", "NO_BROWSER=1"]
    with LabServer(command=command, ready_log=r"Voil. is running at") as demo:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors, failed = ConsoleErrors(page), []
        page.on("requestfailed", lambda request: failed.append(request.url))
        page.goto(f"http://127.0.0.1:{demo.port}/?token={demo.token}", timeout=600_000, wait_until="commit")
        page.locator(".widget-slider .noUi-handle").first.wait_for(timeout=600_000)  # the notebook has run
        box = ".jp-OutputArea-output:has(.widget-slider)"
        page.locator(box).scroll_into_view_if_needed()
        if SHOTS:
            page.screenshot(path=str(SHOTS / "demo_06.png"))
        code = page.evaluate("() => [...document.querySelectorAll('.jp-CodeCell .jp-InputArea, .cm-content, .jp-CodeCell .jp-InputPrompt')]"
                             ".map(e => e.textContent.trim()).filter(t => t)")
        assert code == [], code
        body = page.locator("body").text_content()
        assert "Classifier guidance and classifier-free guidance" in body  # the markdown is shown
        assert "GuidanceExplorer(" not in body and "load_digits_unet" not in body
        move_control(page, box, "ArrowRight", timeout_ms=120_000)
        # the readout is a second message after the image: wait for it rather than read it at once
        page.locator(box, has_text="w = 0.5 (lambda = 1.5)").wait_for(timeout=60_000)
        if SHOTS:
            page.locator(box).screenshot(path=str(SHOTS / "demo_06_moved.png"))
        # Voila's template links Font Awesome's CSS on a CDN, which an offline machine cannot reach (icons only)
        assert all("@fortawesome/fontawesome-free" in url for url in failed), failed
        assert [e for e in errors if "net::ERR_NAME_NOT_RESOLVED" not in e] == [], errors
        page.close()
