"""Figures of the inverse stages: the interactive cluster map, progress plot, token heatmaps.

Model text is hostile here on purpose (``</script>``, tags, quotes): the pages must carry it as
data, never as markup.
"""

from __future__ import annotations

import json
import re

from deltalens.inverse.cluster import ClusterConfig, cluster_latents
from deltalens.inverse.explain import ExplainResult
from deltalens.inverse.optimize import OptimizeResult
from deltalens.inverse.viz import cluster_map_html, progress_figure, token_heatmap_html, visualize
from test_inverse_cluster import planted_collection

EVIL = "</script><script>alert('x')</script>"


class Tok:
    """A tokenizer whose every token is hostile text (decode is all the map needs)."""

    def decode(self, ids):
        return f"{EVIL}{ids[0]}"


def _opt(latent: int) -> OptimizeResult:
    hist = [
        {"step": s, "best_activation": 1.0 + s, "ce_at_best": 5.0 - 0.1 * s, "evaluated": 10 * (s + 1)}
        for s in range(5)
    ]
    best = {
        "text": "a<b>c", "tokens": ["a", "<b>", "c"], "per_position": [0.0, 2.0, 1.0],
        "activation": 2.0, "ce": 4.5, "survives": True,
    }  # fmt: skip
    return OptimizeResult(
        f"latent {latent}", latent, "epo", best, [], hist, 50, 1.0, {},
        {"collection_max": 1.5, "collection_ce_p90": 4.8},
    )  # fmt: skip


def test_cluster_map_is_interactive_and_escapes_model_text(tmp_path):
    coll = planted_collection()
    res = cluster_latents(coll, None, ClusterConfig())
    expl = ExplainResult(
        [{"index": 3, "description": EVIL, "simulation": {"r": None}, "source": "offline"}], "s", "x", {}
    )
    page = cluster_map_html(
        res, tmp_path / "m.html", collection=coll, tokenizer=Tok(), explanations=expl
    ).read_text()
    assert "<script>alert" not in page and page.count("</script>") == 3  # pts, palette, code
    blob = re.search(r"<script type='application/json' id=pts>(.*?)</script>", page, re.S).group(1)
    pts = json.loads(blob)
    assert [p["latent"] for p in pts] == res.latents and [p["cluster"] for p in pts] == res.labels
    p3 = next(p for p in pts if p["latent"] == 3)
    assert p3["explanation"] == EVIL and p3["tokens"][0].startswith(EVIL)  # intact as data
    assert p3["tokens"][0] == Tok().decode([3])  # latent 3's mass: planted on token 3
    assert "textContent" in page and "innerHTML" not in page and "mouseenter" in page


def test_heatmaps_progress_and_visualize(tmp_path):
    runs = [_opt(1), _opt(2)]
    page = token_heatmap_html(runs, tmp_path / "h.html").read_text()
    assert "&lt;b&gt;" in page and "<b>c" not in page.replace("<b>latent", "")
    assert "rgba(255,140,0,1.00)'>&lt;b&gt;</span>" in page  # the peak token is darkest
    png = progress_figure(runs, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = visualize(tmp_path / "viz", clustering=cluster_latents(planted_collection(), None), optimized=runs)
    assert sorted(out) == [
        "acceptance_png",
        "cluster_map_html",
        "cluster_map_png",
        "heatmaps_html",
        "progress_png",
    ]
    assert all(p.is_file() for p in out.values())
