"""A JupyterLab (or Voila) server for browser tests and the browser latency benchmark, and the page helpers both use.

``LabServer`` starts JupyterLab on a free loopback port with a random token and its own temporary settings
(autosave off, checkpoints, workspaces and runtime files in a temporary folder, the workbook's kernel declared
there), so a test never writes into the tracked notebooks or the user's Jupyter folders. The page helpers drive
JupyterLab through ``window.jupyterapp`` (exposed by ``--LabApp.expose_app_in_browser``) and wait on conditions,
never on sleeps. Playwright drives Debian's Chromium (``CHROMIUM``); it never downloads a browser of its own.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GALLERY = "tests/browser/widget_gallery.ipynb"
KERNEL_NAME = "diffusion-workbook"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
WIDGET_MANAGER = "@jupyter-widgets/jupyterlab-manager"
# every widget class of course.widgets, by its gallery cell's CSS class (gallery-<name>), with its class and the key
# that moves its main slider from the keyboard (DDIM's step slider starts at the end: ArrowLeft)
GALLERY_WIDGETS = {
    "scrubber": ("TimestepScrubber", "ArrowRight"), "attention": ("AttentionExplorer", "ArrowRight"),
    "ddim": ("DDIMExplorer", "ArrowLeft"), "guidance": ("GuidanceExplorer", "ArrowRight"),
    "pag": ("PAGExplorer", "ArrowRight"), "ldm": ("TextToImageExplorer", "ArrowRight"),
    "controlnet": ("ControlNetExplorer", "ArrowRight"), "lora": ("LoRAScaleExplorer", "ArrowRight"),
}
SETTINGS = {  # JupyterLab user settings for a test server
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"checkForUpdates": False,
                                                                        "fetchNews": "false"},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "defer"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None: Chromium or Playwright absent."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found: `apt-get install -y chromium` (.ci/run does it)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed: `make venv` installs requirements.txt"
    return None


def isolated_env(folder: Path, **extra) -> dict:
    """Environment of a server whose settings, data, runtime files and kernel spec all live in ``folder``."""
    share = folder / "share"
    spec = share / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Diffusion workbook (.venv)", "language": "python"}))
    settings = folder / "settings"
    for name, values in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "PYTEST"))}
    env.update(JUPYTER_PATH=str(share), JUPYTER_CONFIG_DIR=str(folder / "config"),
               JUPYTER_DATA_DIR=str(folder / "data"), JUPYTER_RUNTIME_DIR=str(folder / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(folder / "workspaces"),
               IPYTHONDIR=str(folder / "ipython"), JUPYTER_PLATFORM_DIRS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class LabServer:
    """``with LabServer() as lab: page.goto(lab.url(GALLERY))``; ``env`` adds variables (the kernels inherit them).

    ``command`` replaces the jupyter lab command line (``make demo`` for Voila); it must serve on ``self.port``
    with ``self.token``, which it finds in the PORT and LAB_TOKEN variables.
    """

    def __init__(self, env: dict | None = None, command: list[str] | None = None, start_timeout: float = 180,
                 ready_log: str | None = None):
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.folder = Path(tempfile.mkdtemp(prefix="workbook-lab-"))
        self.env = isolated_env(self.folder, PORT=str(self.port), LAB_TOKEN=self.token, **(env or {}))
        self.command = command or [
            sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}", "--ServerApp.ip=127.0.0.1",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={ROOT}",
            "--LabApp.expose_app_in_browser=True", f"--FileCheckpoints.root_dir={self.folder / 'checkpoints'}",
            "--ServerApp.allow_root=True"]
        self.start_timeout, self.proc, self.log = start_timeout, None, self.folder / "server.log"
        self.ready_log = ready_log  # a regex of the log that says the server is up (else /api/status answers)

    def url(self, path: str = "", app: str = "lab/tree/") -> str:
        return f"http://127.0.0.1:{self.port}/{app}{path}?token={self.token}"

    def __enter__(self):
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + self.start_timeout
        while True:
            if self.ready_log is not None:
                if re.search(self.ready_log, self.log.read_text(errors="replace")):
                    return self
            else:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/status?token={self.token}",
                                                timeout=5) as response:
                        if response.status == 200:
                            return self
                except OSError:
                    pass
            if self.proc.poll() is not None or time.time() > deadline:
                log = self.log.read_text(errors="replace")[-3000:]
                self.__exit__(None, None, None)
                raise RuntimeError(f"the server did not start: {log}")
            time.sleep(0.5)  # polling a port that is not yet open: there is no event to wait on

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(timeout=wait)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
        shutil.rmtree(self.folder, ignore_errors=True)


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                            # a page served through page.route counts as outside the loopback
                                            "--disable-features=LocalNetworkAccessChecks"])


class ConsoleErrors(list):
    """Console errors and uncaught exceptions of a page, as text."""

    def __init__(self, page):
        super().__init__()
        page.on("console", lambda msg: self.append(f"console: {msg.text}") if msg.type == "error" else None)
        page.on("pageerror", lambda err: self.append(f"pageerror: {err}"))


def disable_extensions_in_page_config(page, names=(WIDGET_MANAGER,)):
    """Serve JupyterLab's page with these extensions disabled in its page config (as `jupyter labextension disable`
    would), for this page only: the test that proves a missing widget manager is detected."""
    def handle(route):
        response = route.fetch()
        html = response.text()

        def patch(match):
            config = json.loads(match.group(2))
            config["disabledExtensions"] = list(config.get("disabledExtensions") or []) + list(names)
            return match.group(1) + json.dumps(config) + match.group(3)

        html = re.sub(r'(<script id="jupyter-config-data" type="application/json">)(.*?)(</script>)', patch, html,
                      flags=re.S)
        route.fulfill(response=response, body=html)

    page.route(re.compile(r".*/lab(/tree/[^?]*)?\?.*"), handle)


def open_notebook(page, lab: LabServer, path: str = GALLERY, timeout_ms: float = 120_000):
    """Open ``path`` in JupyterLab and wait until its kernel is idle."""
    page.goto(lab.url(path) + "&reset", wait_until="domcontentloaded")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget && "
                           "window.jupyterapp.shell.currentWidget.sessionContext && "
                           "window.jupyterapp.shell.currentWidget.sessionContext.session && "
                           "window.jupyterapp.shell.currentWidget.sessionContext.session.kernel && "
                           "window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
                           timeout=timeout_ms)


def run_all_and_wait(page, timeout_ms: float = 600_000, cells: str = "notebook:run-all-cells") -> float:
    """Run every cell (JupyterLab's Run All) and wait until each code cell has run and the kernel is idle;
    returns the seconds it took."""
    start = time.perf_counter()
    page.evaluate(f"() => {{ window.__ran = window.jupyterapp.commands.execute('{cells}'); }}")
    page.wait_for_function("""() => {
        const panel = window.jupyterapp.shell.currentWidget;
        const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
        const cells = panel.content.widgets.filter(c => c.model.type === 'code');
        return kernel && kernel.status === 'idle' && cells.every(c => c.model.executionCount !== null);
    }""", timeout=timeout_ms, polling=250)
    return time.perf_counter() - start


def run_cells_and_wait(page, indices, timeout_ms: float = 300_000):
    """Run the cells at these indices (counted from 0) one after the other, waiting until each has run."""
    for index in indices:
        page.evaluate("""(index) => {
            const panel = window.jupyterapp.shell.currentWidget;
            panel.content.activeCellIndex = index;
            window.jupyterapp.commands.execute('notebook:run-cell');
        }""", index)
        page.wait_for_function("""(index) => {
            const panel = window.jupyterapp.shell.currentWidget;
            const kernel = panel.sessionContext.session.kernel;
            return kernel.status === 'idle' && panel.content.widgets[index].model.executionCount !== null;
        }""", arg=index, timeout=timeout_ms, polling=250)


def output_problems(page, box_selector: str) -> list[str]:
    """What is wrong with the outputs of the cell holding ``box_selector`` (or of every cell when the box is missing):
    errors, and widgets shown as their plain-text repr (``VBox(children=...)``) because no widget manager rendered
    them. Reads textContent, which off-screen (lazily painted) cells have too."""
    return page.evaluate("""(selector) => {
        const problems = [];
        const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
        const box = document.querySelector(selector);
        const scope = box ? [box.closest('.jp-CodeCell')] : cells;
        for (const cell of scope) {
            for (const out of cell.querySelectorAll('.jp-OutputArea-output')) {
                const text = out.textContent || '';
                if (out.querySelector('.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]') &&
                    /Traceback|Error/.test(text)) problems.push('error output: ' + text.slice(0, 300));
                if (/^\\s*(VBox|HBox|Box|IntSlider|FloatSlider|Image|Dropdown)\\(/.test(text) ||
                    /Error displaying widget|model not found|Loading widget/.test(text))
                    problems.push('widget as plain text: ' + text.slice(0, 200));
            }
        }
        if (!box) problems.push('no rendered widget matches ' + selector);
        return problems;
    }""", box_selector)


# the images a box shows: a scrubber keeps every frame in the page, in a Stack that hides all but one
VISIBLE_IMAGES = "[...document.querySelectorAll(selector + ' img')].filter(img => img.checkVisibility())"


def image_sources(page, box_selector: str) -> list[str]:
    return page.evaluate(f"(selector) => {VISIBLE_IMAGES}.map(i => i.src)", box_selector)


def arm_latency_probe(page, box_selector: str, before: list[str]):
    """Record, on the page, the time of the next key press and of the first animation frame that shows an image the
    box did not show before, fully loaded (a swap by the kernel loads a new src; a scrubber's swap in the page shows
    an image it already had). The page checks every frame itself, so a swap faster than a round trip to Playwright
    is timed too."""
    page.evaluate(f"""([selector, before]) => {{
        const probe = window.__probe = {{key: null, shown: null}};
        document.addEventListener('keydown', () => {{ if (probe.key === null) probe.key = performance.now(); }},
                                  {{capture: true, once: true}});
        const check = () => {{
            const shown = {VISIBLE_IMAGES};
            if (shown.some((img, i) => img.src !== before[i]) && shown.every(img => img.complete))
                probe.shown = performance.now();
            else if (window.__probe === probe) requestAnimationFrame(check);
        }};
        requestAnimationFrame(check);
    }}""", [box_selector, before])


def wait_for_new_image(page, box_selector: str, before: list[str], timeout_ms: float):
    """Wait until the box shows an image it did not show before, fully loaded."""
    page.wait_for_function(f"""([selector, before]) => {{
        const shown = {VISIBLE_IMAGES};
        return shown.some((img, i) => img.src !== before[i]) && shown.every(img => img.complete);
    }}""", arg=[box_selector, before], timeout=timeout_ms, polling="raf")


def move_control(page, box_selector: str, key: str = "ArrowRight", timeout_ms: float = 120_000,
                 probe: bool = False, select: str | None = None) -> float | None:
    """Move the box's first slider from the keyboard (its handle takes the arrow keys; a click on the track is
    unreliable), or choose option ``select`` of its first drop-down, and wait until it shows a new image;
    returns the milliseconds from the input event to the first frame showing the new image, loaded, when ``probe``."""
    before = image_sources(page, box_selector)
    control = page.locator(f"{box_selector} " + ("select" if select is not None else ".noUi-handle")).first
    control.scroll_into_view_if_needed()
    control.focus()
    if probe:
        arm_latency_probe(page, box_selector, before)
    if select is not None:
        page.evaluate("() => { if (window.__probe && window.__probe.key === null) "
                      "window.__probe.key = performance.now(); }")
        control.select_option(select)
    else:
        control.press(key)
    wait_for_new_image(page, box_selector, before, timeout_ms)
    if probe:
        page.wait_for_function("() => window.__probe.shown !== null", timeout=timeout_ms, polling="raf")
        return page.evaluate("() => window.__probe.shown - window.__probe.key")
    return None
