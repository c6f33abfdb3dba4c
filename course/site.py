"""The rendered course site: every notebook executed, with its figures, readable without running anything.

    python -m course.site [--out site] [--only 06_cfg ...] [--jobs N] [--timeout 900]   (what `make site` runs)
    python -m course.site --check site                                                  (the link check alone)

Each notebook runs in its own kernel, ``--jobs`` at a time (the usable CPUs by default), each kernel pinned to
``cores // jobs`` torch threads, with ``COURSE_STATIC_WIDGETS=1`` so that widgets display as static HTML
(:mod:`course.widgets.display`): a scrubber keeps every frame and a range input; an explorer shows its first setting.
The pages are rendered with nbconvert's lab template; their maths with the MathJax 2.7 that ``jupyter-server-mathjax``
ships (copied into ``_static/``; it holds the STIX-Web fonts only, as classic Jupyter used, so the HTML-CSS output is
chosen over native MathML, whose TeX fonts it lacks): nothing is fetched, at build time or when the pages are read.

The site holds ``index.html`` (the README's table of notebooks and notebook 00's map and dependency figure), one page
per notebook (exercises as the student sees them: the solution replaced by the placeholder, the check's output as it
ran on the reference solution) and ``student/NAME.ipynb`` (the student copies). The executed instructor notebooks,
solutions and all, go beside it (``site-executed/``), never into it. 00 is always built: the index is made from it.
"""
from __future__ import annotations

import argparse
import copy
import html
import os
import re
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from html.parser import HTMLParser
from multiprocessing import get_context
from pathlib import Path

from . import device, grading

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
README = ROOT / "README.md"
INDEX_NOTEBOOK = "00_start_here"
MATHJAX_URL = "_static/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
EXERCISE_TAG = "exercise"

PAGE_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}<link rel="icon" href="data:,">{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}
<script type="text/x-mathjax-config">
MathJax.Hub.Config({MMLorHTML: {prefer: "HTML"},
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null}});
</script>
{{ super() }}
{%- endblock html_head_js_mathjax -%}
{% block extra_css %}<style type="text/css">{{ resources.course_css }}</style>{% endblock extra_css %}
{%- block body_header -%}
{{ super() }}
{{ resources.course_nav }}
{%- endblock body_header -%}
{% block body_footer %}
{{ resources.course_nav }}
{{ super() }}
{% endblock body_footer %}
"""

CSS = """
nav.course-nav { font-family: var(--jp-ui-font-family, sans-serif); padding: 8px 16px; margin: 0 0 8px 0;
  background: #f3f6fa; border-bottom: 1px solid #d0d7e2; display: flex; gap: 18px; flex-wrap: wrap; }
nav.course-nav a { text-decoration: none; color: #1f5fa8; }
.jp-Cell.celltag_exercise { border-left: 4px solid #e3a008; padding-left: 4px; }
.course-exercise-note { background: #fff8e6; border-left: 4px solid #e3a008; padding: 6px 10px; margin: 4px 0; }
.course-widget-note { color: #555; font-size: 90%; }
.course-static-widget, .course-static-scrubber { border: 1px solid #d0d7e2; padding: 6px; border-radius: 4px; }
table.course-index { border-collapse: collapse; margin: 12px 0; }
table.course-index td, table.course-index th { border: 1px solid #d0d7e2; padding: 4px 8px; vertical-align: top; }
"""


# --------------------------------------------------------------------------- executing

def usable_jobs() -> int:
    return max(1, device.usable_cpus()[0])


def execute(name: str, executed_dir: str, threads: int, timeout: int) -> dict:
    """Run notebooks/NAME.ipynb top to bottom in a fresh kernel; write it to EXECUTED_DIR/NAME.ipynb.

    Runs in a worker process; returns {"notebook", "seconds", "error"} (error None when every cell ran)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = NOTEBOOKS / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    env = dict(os.environ, COURSE_STATIC_WIDGETS="1", COURSE_NUM_THREADS=str(threads), TQDM_DISABLE="1",
               OMP_NUM_THREADS=str(threads), MPLBACKEND="module://matplotlib_inline.backend_inline")
    client = NotebookClient(nb, timeout=timeout, kernel_name=nb.metadata.get("kernelspec", {}).get("name", "python3"),
                            resources={"metadata": {"path": str(NOTEBOOKS)}}, store_widget_state=False)
    start, error = time.perf_counter(), None
    try:
        client.execute(env=env)
    except CellExecutionError as err:
        error = str(err).strip().splitlines()[-1][:400]
    except Exception as err:  # a kernel that cannot start (no such kernel, a dead kernel): say so, do not hang
        error = f"{type(err).__name__}: {err}"[:400]
    Path(executed_dir).mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, Path(executed_dir) / f"{name}.ipynb")
    return {"notebook": name, "seconds": round(time.perf_counter() - start, 1), "error": error}


def execute_all(names: list[str], executed_dir: Path, jobs: int, timeout: int) -> list[dict]:
    """Execute the notebooks ``jobs`` at a time (longest first), each kernel with cores // jobs torch threads."""
    jobs = max(1, min(jobs, len(names)))
    threads = max(1, device.usable_cpus()[0] // jobs)
    print(f"executing {len(names)} notebooks, {jobs} at a time, {threads} torch thread(s) each", flush=True)
    reports = []
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(execute, name, str(executed_dir), threads, timeout) for name in names]
        for future in futures:
            report = future.result()
            reports.append(report)
            status = "ok" if report["error"] is None else f"FAILED: {report['error']}"
            print(f"  {report['notebook']:<24} {report['seconds']:6.1f} s  {status}", flush=True)
    return reports


# --------------------------------------------------------------------------- pages

def student_view(nb):
    """An executed instructor notebook as a student sees it: each solution replaced by the placeholder (its outputs
    cleared) and marked as an exercise, hidden tests removed from the checks, whose outputs (the pass message on the
    reference solution) stay; widget outputs with no static form dropped (they need a kernel)."""
    import nbformat

    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if WIDGET_MIME not in o.get("data", {})]
        if grading.is_solution_cell(cell) and grading.has_solution_block(cell.source):
            exercise = cell.metadata.get("nbgrader", {}).get("grade_id", "")
            cells.append(nbformat.v4.new_markdown_cell(
                f"<div class='course-exercise-note'><b>Exercise <code>{html.escape(exercise)}</code></b>: in the "
                "notebook you write this cell (the course's answer is not on this page). The check below it shows "
                "what it printed on the course's reference answer.</div>"))
            cell.source = grading.strip_solution(cell.source)
            cell.outputs = []
            _tag(cell, EXERCISE_TAG)
        elif grading.is_check_cell(cell):
            cell.source = grading.strip_hidden_tests(cell.source)
            _tag(cell, EXERCISE_TAG)
        cells.append(cell)
    nb.cells = cells
    nb.metadata.pop("widgets", None)
    return nb


def _tag(cell, tag: str):
    tags = list(cell.metadata.get("tags", []))
    cell.metadata["tags"] = tags + [tag] if tag not in tags else tags


def dropped_widgets(nb) -> list[int]:
    """Cells whose live widget has no static form (not a tqdm bar): a cell that displays ``explorer.widget``
    instead of the explorer itself, say. The page shows nothing there; the build names them."""
    cells = []
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            text = "".join(output.get("data", {}).get("text/plain", ""))
            if WIDGET_MIME in output.get("data", {}) and not re.search(r"\d+%\|", text):
                cells.append(i)
    return cells


def title_of(nb, name: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            match = re.search(r"^#\s+(.+)$", cell.source, re.M)
            if match:
                return match.group(1).strip()
    return name


def nav_html(name: str, names: list[str], titles: dict) -> str:
    i = names.index(name)
    links = ['<a href="index.html">&#8962; all notebooks</a>']
    if i > 0:
        links.append(f'<a href="{names[i - 1]}.html">&larr; {html.escape(titles[names[i - 1]])}</a>')
    if i + 1 < len(names):
        links.append(f'<a href="{names[i + 1]}.html">{html.escape(titles[names[i + 1]])} &rarr;</a>')
    links.append(f'<a href="student/{name}.ipynb" download>download the student copy (.ipynb)</a>')
    return f'<nav class="course-nav">{"".join(links)}</nav>'


def exporter():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab", extra_loaders=[DictLoader({"course_page.html.j2": PAGE_TEMPLATE})],
                        template_file="course_page.html.j2", mathjax_url=MATHJAX_URL)


def render_page(nb, name: str, nav: str, html_exporter=None) -> str:
    body, _ = (html_exporter or exporter()).from_notebook_node(
        nb, resources={"metadata": {"name": name}, "course_nav": nav, "course_css": CSS})
    return body


# --------------------------------------------------------------------------- the index

def markdown_table(text: str, heading_row: str) -> list[list[str]]:
    """The rows of the first markdown table whose heading row starts with ``heading_row``, as lists of cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.replace(" ", "").startswith(heading_row.replace(" ", "")))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))])
    return rows


def dependency_figure(executed_00) -> str | None:
    """Notebook 00's dependency figure (the first PNG of its executed cells), base64."""
    for cell in executed_00.cells:
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                return output["data"]["image/png"]
    return None


def index_html(names: list[str], titles: dict, executed_00, built: set) -> str:
    """The index page: the README's notebooks table joined with 00's map ("builds on"), the figure, the links."""
    from nbconvert.filters import markdown2html

    readme = {row[0].strip("`"): row[1] for row in markdown_table(README.read_text(), "| notebook | topic | status")}
    builds_on = {row[0]: row[2] for row in markdown_table(executed_00.cells[0].source, "| notebook | topic | builds on")}
    rows = []
    for name in sorted(readme):
        number = name[:2]
        page = (f'<a href="{name}.html">{html.escape(titles.get(name, name))}</a>' if name in built
                else f"{html.escape(name)} <span class='course-widget-note'>(not in this build)</span>")
        student = f'<a href="student/{name}.ipynb" download>{name}.ipynb</a>' if name in built else ""
        rows.append(f"<tr><td>{page}</td><td>{markdown2html(readme[name])}</td>"
                    f"<td>{html.escape(builds_on.get(number, ''))}</td><td>{student}</td></tr>")
    figure = dependency_figure(executed_00)
    figure_html = (f'<img src="data:image/png;base64,{figure}" alt="which notebook builds on which" '
                   'style="max-width: 100%">' if figure else "")
    intro = markdown2html(executed_00.cells[0].source.split("## The map")[0].split("\n", 1)[1])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>Diffusion models: a workbook</title><link rel="icon" href="data:,"><style type="text/css">{CSS}
body {{ font-family: sans-serif; max-width: 1100px; margin: 0 auto; padding: 0 16px 40px; line-height: 1.45; }}
</style></head><body>
<h1>Diffusion models: a workbook</h1>
{intro}
<p>Every page below is a notebook run top to bottom, with its outputs and figures. To run them yourself, clone the
repository and run <code>make lab</code>; each page links its <em>student copy</em>, the notebook as a course hands it
out (exercises to write, checked by the course's checkers).</p>
<h2>The notebooks</h2>
<table class="course-index"><thead><tr><th>notebook</th><th>topic</th><th>builds on</th><th>student copy</th></tr>
</thead><tbody>
{''.join(rows)}
</tbody></table>
<h2>The map</h2>
{figure_html}
</body></html>
"""


# --------------------------------------------------------------------------- the link check

class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)

    def handle_starttag(self, tag, attrs):
        for attribute, value in attrs:
            if value and ((attribute == "href" and tag in ("a", "link")) or
                          (attribute == "src" and tag in ("img", "script", "iframe", "source"))):
                self.links.append((tag, attribute, value))


def check_site(site: Path) -> list[str]:
    """Every broken internal link or image, and every resource a page would fetch from the network."""
    site = Path(site)
    problems = []
    pages = sorted(site.rglob("*.html"))
    if not (site / "index.html").exists():
        problems.append("index.html is missing")
    for page in pages:
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        for tag, attribute, value in parser.links:
            where = f"{page.relative_to(site)}: <{tag} {attribute}={value[:80]!r}>"
            if value.startswith(("data:", "mailto:", "#", "javascript:")):
                if value.startswith("data:image") and len(value) < 40:
                    problems.append(f"{where}: an empty image")
                continue
            if re.match(r"^[a-z]+://|^//", value):
                if tag != "a":
                    problems.append(f"{where}: fetched from the network")
                continue
            target = (page.parent / value.split("#")[0].split("?")[0]).resolve()
            if not target.exists():
                problems.append(f"{where}: no such file")
    return problems


# --------------------------------------------------------------------------- the build

def copy_mathjax(out: Path):
    import jupyter_server_mathjax

    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    target = out / "_static" / "mathjax"
    if not target.exists():
        shutil.copytree(source, target)


def notebook_names(only: list[str] | None = None) -> list[str]:
    available = [p.stem for p in sorted(NOTEBOOKS.glob("*.ipynb"))]
    if not only:
        return available
    wanted = []
    for item in only:
        matches = [name for name in available if name == item or name.startswith(item + "_") or name[:2] == item]
        if not matches:
            raise ValueError(f"no notebook {item!r}; the notebooks are: {', '.join(available)}")
        wanted += matches
    return sorted(set(wanted) | {INDEX_NOTEBOOK})


def build(out: Path = ROOT / "site", only: list[str] | None = None, jobs: int | None = None,
          timeout: int = 900, executed_dir: Path | None = None, reuse_executed: bool = False) -> dict:
    """Execute and render the site into ``out``; returns a report (seconds, per-notebook times, size, problems).

    The executed instructor notebooks (solutions in them) go to ``executed_dir`` (default ``OUT-executed/``), never
    into the site."""
    import nbformat

    start = time.perf_counter()
    out = Path(out)
    names = notebook_names(only)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    sources = {name: nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4) for name in names}
    order = sorted(names, key=lambda name: -len(nbformat.writes(sources[name])))  # the longest notebooks first
    executed_dir = Path(executed_dir or out.with_name(out.name + "-executed"))
    if reuse_executed and all((executed_dir / f"{name}.ipynb").exists() for name in names):
        reports = [{"notebook": name, "seconds": 0.0, "error": None, "reused": True} for name in order]
    else:
        reports = execute_all(order, executed_dir, jobs or usable_jobs(), timeout)
    failed = [r for r in reports if r["error"]]
    executed = {name: nbformat.read(executed_dir / f"{name}.ipynb", as_version=4) for name in names}
    titles = {name: title_of(executed[name], name) for name in names}
    (out / "student").mkdir()
    html_exporter = exporter()
    for name in names:
        for i in dropped_widgets(executed[name]):
            print(f"warning: {name} cell {i} displays a live widget with no static form (display the workbook's "
                  "explorer object itself, whose static form the site shows): its page shows nothing there")
        nbformat.write(grading.release_notebook(sources[name]), out / "student" / f"{name}.ipynb")
        page = render_page(student_view(executed[name]), name, nav_html(name, names, titles), html_exporter)
        (out / f"{name}.html").write_text(page, encoding="utf-8")
    (out / "index.html").write_text(index_html(names, titles, executed[INDEX_NOTEBOOK], set(names)), encoding="utf-8")
    copy_mathjax(out)
    problems = check_site(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    report = {"seconds": round(time.perf_counter() - start, 1), "notebooks": reports, "size_bytes": size,
              "pages": len(names) + 1, "failed": [r["notebook"] for r in failed], "link_problems": problems}
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course.site", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "site", help="the site's folder (default: site/)")
    parser.add_argument("--only", nargs="+", help="notebooks to build (names or numbers: 06 or 06_cfg); 00 always")
    parser.add_argument("--jobs", type=int, help="notebooks executed at once (default: the usable CPUs)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds a cell may run")
    parser.add_argument("--reuse-executed", action="store_true",
                        help="render from the last build's executed notebooks (after a change to the pages only)")
    parser.add_argument("--check", type=Path, metavar="SITE", help="only check SITE's links and images")
    args = parser.parse_args(argv)
    if args.check:
        problems = check_site(args.check)
        print("\n".join(problems) or f"{args.check}: no broken link or image, nothing fetched from the network")
        return 1 if problems else 0
    try:
        report = build(args.out, args.only, args.jobs, args.timeout, reuse_executed=args.reuse_executed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"site: {report['pages']} pages in {args.out}, {report['size_bytes'] / 1e6:.1f} MB, "
          f"built in {report['seconds']:.0f} s")
    for problem in report["link_problems"]:
        print(f"link check: {problem}")
    for name in report["failed"]:
        print(f"error: {name} did not run to the end (its page shows where it stopped)", file=sys.stderr)
    return 1 if report["failed"] or report["link_problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
