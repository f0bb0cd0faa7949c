"""The experiment report: one self-contained ``report/index.html`` per experiment.

:func:`build_report` walks an experiment directory and renders every section that
has artifacts: each area registers a section function with :func:`section`
(``fn(exp) -> str | None``; ``None`` when the experiment has nothing of that kind).
Figures are embedded as base64 PNG, so the file can be mailed or attached as is; tables
are sortable by clicking a header and long ones filterable, token strips show their values on
hover (a few lines of inline JavaScript, no network requests; without JavaScript the page reads as
static tables). The first section, "Findings" (:mod:`.findings`), states each analysis's
headline result next to its control, computed from the saved results.

Every string that comes from a model or a dataset goes through :func:`esc`
(``html.escape`` with quotes) — generated text can contain anything, including
``<script>``.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._version import __version__
from ..experiment import Experiment
from ..io import atomic_write, now_iso


def esc(x: Any) -> str:
    """HTML-escape anything (quotes included)."""
    return html.escape(str(x), quote=True)


def fmt(x: Any) -> str:
    if isinstance(x, float):
        if x != x:  # nan
            return "–"
        return f"{x:.4g}"
    if x is None:
        return "–"
    return str(x)


def slug(title: str) -> str:
    """The anchor id of a section title: ``"Model diff"`` → ``"sec-model-diff"``."""
    return "sec-" + "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")


FILTER_ROWS = 15  # tables longer than this get a filter box


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    caption: str | None = None,
    max_rows: int = 200,
    filterable: bool | None = None,
) -> str:
    """An HTML table, sortable by clicking a header; every cell escaped.

    Numeric cells carry their full value in ``data-v`` so sorting is numeric (the shown text is
    rounded); tables with more than :data:`FILTER_ROWS` rows get a filter box (rows whose text
    does not contain the query are hidden). Both are inline JavaScript; without it the table reads
    as a plain table."""
    rows = list(rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for r in rows[:max_rows]:
        cells = []
        for v in r:
            num = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
            if num:
                cells.append(f"<td class=num data-v='{float(v)!r}'>{esc(fmt(v))}</td>")
            else:
                cells.append(f"<td>{esc(fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = (
        f"<p class=note>{len(rows) - max_rows} more rows in the JSON files.</p>"
        if len(rows) > max_rows
        else ""
    )
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    if filterable is None:
        filterable = len(body) > FILTER_ROWS
    filt = (
        f"<input class=filter type=search placeholder='filter {len(body)} rows' aria-label='filter rows'>"
        if filterable
        else ""
    )
    return (
        f"<div class=tbl>{filt}<table class=sortable>{cap}<thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>{more}"
    )


def token_strip(tokens: Sequence[str], values: Sequence[float] | None, vmax: float) -> str:
    """Tokens as spans shaded by ``value / vmax`` (clipped to [0, 1]); hovering a token shows its
    value (``data-tip``, also the ``title`` for a static fallback). Tokens are escaped."""
    spans = []
    for i, t in enumerate(tokens):
        v = float(values[i]) if values else 0.0
        a = 0.0 if vmax <= 0 else max(0.0, min(1.0, v / vmax))
        tip = esc(f"{t!r}: {fmt(v)}")
        spans.append(
            f"<span class=tok data-tip='{tip}' title='{tip}' style='background:rgba(255,140,0,{a:.2f})'>"
            f"{esc(str(t).replace(chr(10), '⏎'))}</span>"
        )
    return "<code>" + "".join(spans) + "</code>"


def bars_svg(
    labels: Sequence[Any], heights: Sequence[float], title: str, width: int = 260, height: int = 80
) -> str:
    """A small inline SVG bar chart (no image file, no script): one bar per value, each with its
    label and value on hover (``data-tip`` and an SVG ``<title>``)."""
    n = len(heights)
    if not n:
        return ""
    top = max(abs(float(h)) for h in heights) or 1.0
    w = width / n
    neg = any(float(h) < 0 for h in heights)
    base = height / 2 if neg else height
    scale = (height / 2 if neg else height) / top
    rects = []
    for i, (lab, h) in enumerate(zip(labels, heights)):
        h = float(h)
        y, hh = (base - h * scale, h * scale) if h >= 0 else (base, -h * scale)
        tip = esc(f"{lab}: {fmt(h)}")
        rects.append(
            f"<rect x='{i * w:.1f}' y='{y:.1f}' width='{max(w - 1, 1):.1f}' height='{max(hh, 0.5):.1f}' "
            f"fill='#4c72b0' data-tip='{tip}'><title>{tip}</title></rect>"
        )
    return (
        f"<div class=bars><div class=note>{esc(title)}</div><svg width='{width}' height='{height}' "
        f"role=img aria-label='{esc(title)}'>{''.join(rects)}</svg></div>"
    )


def png_bytes(path: Path, colours: int = 256) -> bytes:
    """The PNG at ``path`` for embedding: re-encoded with an adaptive palette of ``colours``
    colours (plots have few colours; heatmaps lose at most the difference between neighbouring
    palette entries) when that is smaller, else the file as it is."""
    raw = path.read_bytes()
    try:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(raw)) as im:
            rgb = im.convert("RGB")
        buf = io.BytesIO()
        rgb.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
        small = buf.getvalue()
    except Exception:  # noqa: BLE001 - not a PNG Pillow can read: embed as is (the browser decides)
        return raw
    return small if len(small) < len(raw) else raw


def figure(path: str | Path, caption: str = "") -> str:
    """Embed a PNG (base64) with a caption; missing files render as a note."""
    p = Path(path)
    if not p.is_file():
        return f"<p class=note>missing figure {esc(p.name)}</p>"
    data = base64.b64encode(png_bytes(p)).decode()
    return f"<figure><img alt='{esc(caption or p.stem)}' src='data:image/png;base64,{data}'><figcaption>{esc(caption or p.stem)}</figcaption></figure>"  # noqa: E501


def figures(paths: Iterable[Path], captions: dict[str, str] | None = None) -> str:
    items = [figure(p, (captions or {}).get(p.name, p.stem.replace("_", " "))) for p in sorted(paths)]
    return f"<div class=figs>{''.join(items)}</div>" if items else ""


def json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def jsonl_file(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue
                if limit is not None and len(out) >= limit:
                    break
    except OSError:
        pass
    return out


@dataclass(frozen=True)
class Section:
    order: int
    title: str
    render: Callable[[Experiment], str | None]


_SECTIONS: list[Section] = []


def section(
    order: int, title: str
) -> Callable[[Callable[[Experiment], str | None]], Callable[[Experiment], str | None]]:
    """Register a report section (decorator). Lower ``order`` renders first."""

    def deco(fn: Callable[[Experiment], str | None]) -> Callable[[Experiment], str | None]:
        _SECTIONS[:] = [s for s in _SECTIONS if s.title != title]
        _SECTIONS.append(Section(order, title, fn))
        return fn

    return deco


def _load_sections() -> list[Section]:
    import importlib
    import pkgutil

    from .. import report

    for mod in pkgutil.iter_modules(report.__path__):
        if mod.name.startswith("sections") or mod.name == "findings":
            importlib.import_module(f"{report.__name__}.{mod.name}")
    return sorted(_SECTIONS, key=lambda s: s.order)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#b8c0cc}
nav{padding:8px 32px;background:#fff;border-bottom:1px solid #dde1e7;position:sticky;top:0;z-index:2}
nav a{margin-right:16px;color:#2457c5;text-decoration:none;font-weight:500}
main{padding:8px 32px 48px;max-width:1280px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:12px 20px;margin:18px 0}
h2{font-size:18px;margin:6px 0 10px}h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px;max-width:100%}
caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border-bottom:1px solid #e6e9ee;padding:4px 10px;text-align:left;vertical-align:top;max-width:560px;overflow-wrap:anywhere}
th{background:#f0f2f5;cursor:pointer;user-select:none;position:sticky;top:38px}td.num{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:14px}figure{margin:0;max-width:600px}figure img{max-width:100%;border:1px solid #e6e9ee}
figcaption{font-size:12px;color:#5b6472}.note{color:#5b6472;font-size:12px}.kv td:first-child{font-weight:600}
code{background:#f0f2f5;padding:1px 4px;border-radius:3px}
th[data-asc='1']::after{content:' ▲'}th[data-asc='0']::after{content:' ▼'}
input.filter{font:inherit;font-size:12px;padding:2px 6px;margin:6px 0 0;width:220px}
.findings td:first-child{white-space:nowrap}.findings .ctl{color:#5b6472}.findings .noctl{color:#a15c00}
.tok{white-space:pre-wrap;border-radius:2px}.tok:hover{outline:1px solid #1d2330}
#tip{position:fixed;display:none;background:#1d2330;color:#fff;font-size:12px;padding:2px 6px;border-radius:3px;
pointer-events:none;z-index:9}
.card{border-top:1px solid #e6e9ee;margin-top:8px}.card .ex{margin:3px 0}
.bars{display:inline-block;margin:4px 18px 4px 0;vertical-align:top}
.bars svg rect:hover{fill:#d9480f}
"""

JS = """
(function(){
function val(c){return c.dataset.v!==undefined?parseFloat(c.dataset.v):NaN;}
document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',function(){
var t=th.closest('table'),b=t.tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th),a=th.dataset.asc!=='1';
var rows=Array.prototype.slice.call(b.rows);rows.sort(function(x,y){var m=val(x.cells[i]),n=val(y.cells[i]);
var r=(!isNaN(m)&&!isNaN(n))?m-n:x.cells[i].textContent.localeCompare(y.cells[i].textContent);return a?r:-r;});
rows.forEach(function(r){b.appendChild(r);});t.querySelectorAll('th').forEach(function(h){delete h.dataset.asc;});
th.dataset.asc=a?'1':'0';});});
document.querySelectorAll('input.filter').forEach(function(inp){inp.addEventListener('input',function(){
var q=inp.value.toLowerCase(),t=inp.parentNode.querySelector('table');
Array.prototype.forEach.call(t.tBodies[0].rows,function(r){r.style.display=r.textContent.toLowerCase().indexOf(q)<0?'none':'';});});});
var tip=document.getElementById('tip');
document.addEventListener('mouseover',function(e){var el=e.target.closest?e.target.closest('[data-tip]'):null;
if(!el){tip.style.display='none';return;}tip.textContent=el.getAttribute('data-tip');tip.style.display='block';});
document.addEventListener('mousemove',function(e){tip.style.left=(e.clientX+12)+'px';tip.style.top=(e.clientY+12)+'px';});
})();
"""


def render_report(exp: Experiment) -> str:
    """The HTML text of the report for ``exp``."""
    parts, nav = [], []
    for sec in _load_sections():
        try:
            body = sec.render(exp)
        except Exception as exc:  # a broken artifact must not hide the rest of the report
            body = f"<p class=note>could not render this section: {esc(type(exc).__name__)}: {esc(exc)}</p>"
        if not body:
            continue
        anchor = slug(sec.title)
        nav.append(f"<a href='#{anchor}'>{esc(sec.title)}</a>")
        parts.append(f"<section id='{anchor}'><h2>{esc(sec.title)}</h2>{body}</section>")
    cfg = exp.load_config()
    title = f"deltalens report — {cfg.get('name', exp.name)}"
    if not parts:
        parts.append("<section><p>This experiment has no artifacts yet.</p></section>")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(exp.root.resolve())} · generated {esc(now_iso())} · deltalens {esc(__version__)}</p></header>"  # noqa: E501
        f"<nav>{''.join(nav)}</nav><main>{''.join(parts)}</main><div id=tip role=tooltip></div>"
        f"<script>{JS}</script></body></html>"
    )


def build_report(exp: Experiment | str | Path) -> Path:
    """Write ``<experiment>/report/index.html`` (atomically) and return its path."""
    if not isinstance(exp, Experiment):
        exp = Experiment(exp) if Path(exp).exists() else Experiment.named(str(exp))
    if not exp.root.is_dir():
        from ..errors import ConfigError

        raise ConfigError(f"experiment directory not found: {exp.root}")
    path = exp.report_dir() / "index.html"
    atomic_write(path, render_report(exp))
    return path
