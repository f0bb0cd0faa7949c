from __future__ import annotations

import json

from deltalens import Experiment
from deltalens.report.html import build_report


def test_report_escapes_model_text_and_embeds_figures(tmp_path):
    exp = Experiment(tmp_path / "exp")
    exp.save_config({"name": "x<y>", "models": {"base": "tiny"}})
    g = {
        "index": 0,
        "question": "Say <b>hi</b>",
        "response": "<script>alert('x')</script> & done",
        "response_ids": [1, 2],
    }
    exp.generations_path("demo").parent.mkdir(parents=True)
    exp.generations_path("demo").write_text(json.dumps(g) + "\n")
    path = build_report(exp)
    html = path.read_text()
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; done" in html
    assert "Say &lt;b&gt;hi&lt;/b&gt;" in html
    assert "x&lt;y&gt;" in html and html.count("<script>") == 1  # only the table-sorting script
    assert path.stat().st_mode & 0o044, "report must be readable by others like any file"


def test_features_and_circuits_do_not_import_the_report():
    """The figures live in deltalens.plots (core level): no features ↔ report import cycle."""
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    code = (
        "import sys, deltalens.features, deltalens.circuits, deltalens.features.evolution, deltalens.circuits.pipeline; "
        "bad = sorted(m for m in sys.modules if m.startswith('deltalens.report')); assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": src})
    assert r.returncode == 0, r.stderr
