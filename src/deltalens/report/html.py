"""The experiment report: one self-contained ``report/index.html`` per experiment.

:func:`build_report` walks an experiment directory and renders every section that
has artifacts: each area registers a section function with :func:`section`
(``fn(exp) -> str | None``; ``None`` when the experiment has nothing of that kind).
Figures are embedded as base64 PNG, so the file can be mailed or attached as is; tables
are sortable by clicking a header (a few lines of inline JavaScript, no network).

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


def table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], caption: str | None = None, max_rows: int = 200
) -> str:
    """A sortable HTML table; every cell escaped."""
    rows = list(rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for r in rows[:max_rows]:
        cells = []
        for v in r:
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f"<td{' class=num' if num else ''}>{esc(fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = (
        f"<p class=note>{len(rows) - max_rows} more rows in the JSON files.</p>"
        if len(rows) > max_rows
        else ""
    )
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table class=sortable>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def figure(path: str | Path, caption: str = "") -> str:
    """Embed a PNG (base64) with a caption; missing files render as a note."""
    p = Path(path)
    if not p.is_file():
        return f"<p class=note>missing figure {esc(p.name)}</p>"
    data = base64.b64encode(p.read_bytes()).decode()
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
        if mod.name.startswith("sections"):
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
"""

JS = """
document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',function(){
var t=th.closest('table'),b=t.tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th),a=th.dataset.asc!=='1';
var rows=Array.prototype.slice.call(b.rows);rows.sort(function(x,y){var p=x.cells[i].textContent,q=y.cells[i].textContent,
m=parseFloat(p),n=parseFloat(q);var r=(!isNaN(m)&&!isNaN(n))?m-n:p.localeCompare(q);return a?r:-r;});
rows.forEach(function(r){b.appendChild(r);});t.querySelectorAll('th').forEach(function(h){h.dataset.asc='';});th.dataset.asc=a?'1':'';});});
"""


def render_report(exp: Experiment) -> str:
    """The HTML text of the report for ``exp``."""
    parts, nav = [], []
    for i, sec in enumerate(_load_sections()):
        try:
            body = sec.render(exp)
        except Exception as exc:  # a broken artifact must not hide the rest of the report
            body = f"<p class=note>could not render this section: {esc(type(exc).__name__)}: {esc(exc)}</p>"
        if not body:
            continue
        anchor = f"s{i}"
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
        f"<nav>{''.join(nav)}</nav><main>{''.join(parts)}</main><script>{JS}</script></body></html>"
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
