"""How the workbook's widgets show themselves: live in a kernel, or as static HTML for the rendered site.

Every explorer's ``_ipython_display_`` calls ``show(explorer)``. In Jupyter that displays the live ipywidget. When the
site is built (``python -m course.site``, which sets ``COURSE_STATIC_WIDGETS=1`` in the kernels it starts) it displays
plain HTML instead, which needs no kernel and no widget JavaScript: a scrubber keeps all its frames and a range input
that swaps them in the page; an explorer that computes each new setting shows its first setting and says that moving
it needs a kernel.

``settle()`` ends an explorer's warm-up: it runs the garbage collection that the warm-up's figures made due, which
would otherwise fall on the first move after Run All (a full collection costs about half a second in a kernel that
has imported torch and matplotlib).
"""
from __future__ import annotations

import base64
import gc
import html
import json
import os

STATIC_ENV = "COURSE_STATIC_WIDGETS"


def static_mode() -> bool:
    """True while the site is built: widgets display as static HTML."""
    return os.environ.get(STATIC_ENV, "") not in ("", "0")


def settle():
    """Collect the garbage of a widget's warm-up now, at build time, rather than on its first move."""
    gc.collect()


def show(explorer):
    """Display ``explorer.widget`` live, or its static HTML while the site is built."""
    from IPython.display import HTML, display

    if static_mode():
        display(HTML(static_html(explorer)))
    else:
        display(explorer.widget)


def _png_src(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _controls(widget) -> list[str]:
    """'description = value' of every control in a widget tree, in order."""
    import ipywidgets as widgets

    found = []
    if isinstance(widget, widgets.Box):
        for child in widget.children:
            found += _controls(child)
    elif isinstance(widget, (widgets.ValueWidget,)) and not isinstance(widget, (widgets.Image, widgets.Label,
                                                                                 widgets.HTML, widgets.Play)):
        label = getattr(widget, "label", None)  # selection widgets: the chosen option's text
        value = label if isinstance(label, str) else widget.value
        found.append(f"{widget.description or 'setting'} = {value}")
    return found


def _images_and_text(widget) -> list[tuple[str, object]]:
    """("img", png bytes) and ("text", str) of a widget tree's images and labels, in order (shown children only)."""
    import ipywidgets as widgets

    found = []
    if isinstance(widget, widgets.Stack):
        index = widget.selected_index or 0
        if widget.children:
            found += _images_and_text(widget.children[index])
    elif isinstance(widget, widgets.Box):
        for child in widget.children:
            found += _images_and_text(child)
    elif isinstance(widget, widgets.Image) and widget.value:
        found.append(("img", bytes(widget.value)))
    elif isinstance(widget, (widgets.Label, widgets.HTML)) and widget.value:
        found.append(("text", widget.value))
    return found


def static_html(explorer) -> str:
    """A page fragment for ``explorer``: its own ``static_html()`` if it has one (the scrubbers), else the first
    setting's images and readouts with a line saying what moving it needs."""
    own = getattr(explorer, "static_html", None)
    if callable(own):
        return own()
    parts = []
    for kind, value in _images_and_text(explorer.widget):
        if kind == "img":
            parts.append(f'<img src="{_png_src(value)}" alt="{html.escape(type(explorer).__name__)}" '
                         'style="max-width: 100%">')
        else:
            parts.append(f"<div><code>{html.escape(value)}</code></div>")
    controls = ", ".join(_controls(explorer.widget))
    note = (f"<p class='course-widget-note'><b>Interactive in a kernel:</b> {html.escape(type(explorer).__name__)} "
            f"computes each new setting when you move it. Shown here: {html.escape(controls) or 'its first setting'}. "
            "Open the notebook in JupyterLab (<code>make lab</code>) to move it.</p>")
    return f"<div class='course-static-widget'>{note}{''.join(parts)}</div>"


def static_scrubber_html(pngs: list[bytes], labels: list[str] | None, description: str) -> str:
    """All frames in the page and a range input that shows one: a scrubber that works without a kernel."""
    labels = labels or [str(i) for i in range(len(pngs))]
    images = "".join(f'<img src="{_png_src(png)}" alt="{html.escape(description)} {html.escape(labels[i])}" '
                     f'style="max-width: 100%;{"" if i == 0 else " display: none"}">' for i, png in enumerate(pngs))
    swap = ("const box = this.closest('.course-static-scrubber'); const i = +this.value;"
            "box.querySelectorAll('img').forEach((img, j) => { img.style.display = j === i ? '' : 'none'; });"
            "box.querySelector('output').textContent = JSON.parse(box.dataset.labels)[i];")
    return (f"<div class='course-static-scrubber' data-labels='{html.escape(json.dumps(labels))}'>"
            f"<label>{html.escape(description)} <input type='range' min='0' max='{len(pngs) - 1}' value='0' "
            f"step='1' oninput=\"{html.escape(swap)}\" aria-label='{html.escape(description)}'></label> "
            f"<output>{html.escape(labels[0])}</output>"
            "<span class='course-widget-note'> (all frames are in this page: drag the slider)</span>"
            f"<div>{images}</div></div>")
