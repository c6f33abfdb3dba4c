"""The rendered course site (`make site`): a two-notebook build (00 and 06) with the network blocked, its pages and
student copies, the link check, and the pages in a real browser."""
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course import grading, site

ROOT = Path(__file__).resolve().parent.parent

# every Python process of the build (the builder and the kernels it starts) refuses any connection that leaves the
# machine; loopback stays open (the kernels talk to the builder through it)
OFFLINE_SITECUSTOMIZE = '''
import socket
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
def _local(host):
    return str(host) in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "") or str(host).startswith("127.")
def _guarded_connect(self, address):
    if isinstance(address, tuple) and not _local(address[0]):
        raise OSError(f"network blocked by the site test: {address}")
    return _connect(self, address)
def _guarded_getaddrinfo(host, *args, **kwargs):
    if host is not None and not _local(host):
        raise OSError(f"network blocked by the site test: {host}")
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect = _guarded_connect
socket.getaddrinfo = _guarded_getaddrinfo
'''


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`python -m course.site --only 06` (00 comes too: the index is made from it), the network blocked."""
    work = tmp_path_factory.mktemp("site")
    (work / "offline").mkdir()
    (work / "offline" / "sitecustomize.py").write_text(OFFLINE_SITECUSTOMIZE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(work / "offline"), os.environ.get("PYTHONPATH", "")]))
    out = work / "site"
    result = subprocess.run([sys.executable, "-m", "course.site", "--only", "06", "--out", str(out)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=900)
    return {"out": out, "executed": work / "site-executed", "result": result, "work": work}


def test_the_offline_guard_really_blocks():
    code = "import socket\ntry:\n    socket.create_connection(('example.com', 80), timeout=2)\nexcept OSError as e:\n" \
           "    print('blocked' if 'network blocked' in str(e) else 'other: ' + str(e))\n"
    here = Path(__file__).parent / "_offline_probe"
    here.mkdir(exist_ok=True)
    try:
        (here / "sitecustomize.py").write_text(OFFLINE_SITECUSTOMIZE)
        out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(here)),
                             capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(here)
    assert out.stdout.strip() == "blocked", out


def test_two_notebook_site_builds_offline(built):
    result = built["result"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"06_cfg\s+[\d.]+ s\s+ok", result.stdout) and re.search(r"00_start_here\s+[\d.]+ s\s+ok",
                                                                           result.stdout)
    assert "site: 3 pages" in result.stdout
    assert sorted(p.name for p in built["out"].glob("*.html")) == ["00_start_here.html", "06_cfg.html", "index.html"]


def test_the_link_check_passes_on_the_built_site(built):
    assert site.check_site(built["out"]) == []


def test_the_link_check_catches_broken_links_and_network_resources(built, tmp_path):
    copy = tmp_path / "site"
    shutil.copytree(built["out"], copy, ignore=shutil.ignore_patterns("_static"))
    (copy / "_static").mkdir()
    index = copy / "index.html"
    index.write_text(index.read_text().replace("</body>", '<a href="13_missing.html">x</a>'
                                               '<img src="figures/gone.png">'
                                               '<script src="https://cdn.example.com/x.js"></script></body>'))
    problems = site.check_site(copy)
    assert any("13_missing.html" in p and "no such file" in p for p in problems)
    assert any("figures/gone.png" in p for p in problems)
    assert any("cdn.example.com" in p and "network" in p for p in problems)
    assert any("MathJax.js" in p for p in problems)  # the pages' MathJax is gone too
    (copy / "06_cfg.html").unlink()
    assert any("06_cfg.html" in p for p in site.check_site(copy))


def test_pages_hold_figures_maths_and_a_static_widget(built):
    page = (built["out"] / "06_cfg.html").read_text()
    assert page.count("data:image/png;base64,") >= 10  # the notebook's figures, embedded
    assert site.MATHJAX_URL.split("?")[0] in page and "cdnjs" not in page and "require.min.js" not in page
    assert "course-static-widget" in page and "Interactive in a kernel" in page  # the guidance explorer, static
    assert 'href="student/06_cfg.ipynb"' in page and 'href="index.html"' in page
    index = (built["out"] / "index.html").read_text()
    assert 'href="06_cfg.html"' in index and 'href="00_start_here.html"' in index
    assert "which notebook builds on which" in index and "not in this build" in index  # 01 ... 12 were not built
    assert "03, 05" in index  # 06 builds on 03 and 05: 00's map, joined to the README's table


def test_exercises_show_the_student_view_with_the_pass_message(built):
    instructor = nbformat.read(ROOT / "notebooks" / "06_cfg.ipynb", as_version=4)
    solutions = [c for c in instructor.cells if grading.is_solution_cell(c) and grading.has_solution_block(c.source)]
    assert solutions
    everything = "".join(p.read_text(errors="ignore") for p in built["out"].rglob("*") if p.is_file()
                         and p.suffix in (".html", ".ipynb"))
    assert grading.BEGIN not in everything and grading.HIDDEN_BEGIN not in everything
    for cell in solutions:
        answer = cell.source.split(grading.BEGIN)[1].split(grading.END)[0]
        for line in (line.strip() for line in answer.splitlines()):
            if len(line) > 25:  # a distinctive line of the course's answer is nowhere in the site
                assert line not in everything and json.dumps(line)[1:-1] not in everything, line
    page = (built["out"] / "06_cfg.html").read_text()
    assert page.count("NotImplementedError") >= len(solutions) and "celltag_exercise" in page
    assert page.count("✔") >= len(grading.check_cells(instructor))  # every check's pass message, on the reference
    student = nbformat.read(built["out"] / "student" / "06_cfg.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")
    assert grading.BEGIN in (built["executed"] / "06_cfg.ipynb").read_text()  # the instructor copy stays outside


def test_student_view_of_a_small_notebook():
    nb = new_notebook(cells=[
        new_markdown_cell("# 99 · Demo"),
        new_code_cell("def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
                      metadata={"nbgrader": {"solution": True, "grade": False, "grade_id": "f", "locked": False,
                                             "schema_version": 3}}),
        new_code_cell("check(f)\n### BEGIN HIDDEN TESTS\nassert f(2) == 4\n### END HIDDEN TESTS",
                      metadata={"nbgrader": {"solution": False, "grade": True, "grade_id": "check_f", "points": 1,
                                             "locked": True, "schema_version": 3}}),
        new_code_cell("bar")])
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="solution output")]
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="✔ f: all 3 cases pass")]
    nb.cells[3].outputs = [nbformat.v4.new_output("display_data", data={
        site.WIDGET_MIME: {"model_id": "x"}, "text/plain": "HBox(children=...)"})]
    nb.cells.append(new_code_cell("train()"))
    nb.cells[4].outputs = [nbformat.v4.new_output("display_data", data={
        site.WIDGET_MIME: {"model_id": "y"}, "text/plain": "training:  40%|####      | 4/10 [00:01<00:01, 4.0it/s]"})]
    assert site.dropped_widgets(nb) == [3]  # the explorer's .widget is named; a tqdm bar is not
    view = site.student_view(nb)
    assert [c.cell_type for c in view.cells] == ["markdown", "markdown", "code", "code", "code", "code"]
    assert "Exercise <code>f</code>" in view.cells[1].source
    assert "return 2 * x" not in view.cells[2].source and "NotImplementedError" in view.cells[2].source
    assert view.cells[2].outputs == [] and view.cells[2].metadata.tags == ["exercise"]
    assert "assert f(2)" not in view.cells[3].source and view.cells[3].outputs[0]["text"].startswith("✔")
    assert view.cells[4].outputs == [] and view.cells[5].outputs == []  # live widgets with no static form: dropped
    assert "return 2 * x" in nb.cells[1].source  # the instructor notebook is left as it was
    html = site.render_page(view, "99_demo", site.nav_html("99_demo", ["99_demo"], {"99_demo": "99 · Demo"}))
    assert "NotImplementedError" in html and "return 2 * x" not in html and "celltag_exercise" in html


def test_unknown_notebook_is_a_clear_error():
    result = subprocess.run([sys.executable, "-m", "course.site", "--only", "42", "--out", "/tmp/never"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no notebook '42'" in result.stderr and "06_cfg" in result.stderr


# --------------------------------------------------------------------------- in the browser

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(folder: Path):
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _mathjax_font_probe(text: str, url: str) -> bool:
    """MathJax 2.7 declares @font-face rules it never needs here: its blank probe font (``about:blank``, which
    Chromium refuses to load) and two TeX fonts of a MathML stylesheet (jupyter-server-mathjax ships STIX-Web only,
    which the HTML-CSS output uses). Chromium logs each as an error; the maths renders the same."""
    return "about:blank" in text or url == "about:blank" or "/_static/mathjax/fonts/HTML-CSS/TeX/otf/" in url


@pytest.mark.slow
def test_site_in_the_browser(built):
    sys.path.insert(0, str(Path(__file__).parent))
    from jupyterlab_server import chromium_missing, launch_browser

    missing = chromium_missing()
    if missing and os.environ.get("CI"):
        raise RuntimeError(f"the site's browser test cannot run on CI: {missing}")
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    server = _serve(built["out"])
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with sync_playwright() as playwright:
            browser = launch_browser(playwright)
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            errors, outside = [], []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" and not _mathjax_font_probe(
                m.text, m.location.get("url", "")) else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((base, "data:", "about:blank")) else None)
            page.goto(base + "index.html")
            assert page.locator("table.course-index tr").count() >= 13  # a row per notebook, and the heading
            assert page.eval_on_selector("img[alt='which notebook builds on which']", "i => i.naturalWidth") > 300
            page.click("a[href='06_cfg.html']")
            page.wait_for_load_state("load")
            assert "06" in page.title()
            page.wait_for_function("() => document.querySelectorAll('.MathJax, .MathJax_Display').length > 5",
                                   timeout=60_000)  # the maths, typeset by the site's own MathJax
            loaded = page.evaluate("() => [...document.querySelectorAll('.jp-OutputArea-output img')]"
                                   ".filter(i => i.complete && i.naturalWidth > 50).length")
            assert loaded >= 10, loaded  # the figures
            widget = page.locator(".course-static-widget").first
            widget.scroll_into_view_if_needed()
            assert widget.locator("img").count() >= 1 and "Interactive in a kernel" in widget.inner_text()
            assert widget.locator("img").first.evaluate("i => i.naturalWidth") > 100
            page.goto(base + "00_start_here.html")  # 00's scrubber, static: its frames swap in the page
            scrubber = page.locator(".course-static-scrubber").first
            scrubber.scroll_into_view_if_needed()
            visible = "b => [...b.querySelectorAll('img')].filter(i => i.checkVisibility()).map(i => i.alt)"
            assert scrubber.evaluate(visible) == ["t t = 0"]
            scrubber.locator("input[type=range]").focus()
            page.keyboard.press("ArrowRight")
            assert scrubber.evaluate(visible) == ["t t = 50"] and scrubber.locator("output").inner_text() == "t = 50"
            assert errors == [] and outside == [], (errors, outside)
            shots = os.environ.get("BROWSER_SHOTS")
            if shots:
                widget.screenshot(path=str(Path(shots) / "site_06_widget.png"))
            browser.close()
    finally:
        server.shutdown()
