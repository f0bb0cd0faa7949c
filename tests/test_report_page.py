"""The report page: findings computed from saved results, tables as HTML, and (marked ``browser``)
the page opened in headless Chromium — no console errors, every image decodes, hover shows a value,
clicking a header re-sorts, the filter hides rows, links resolve, nothing is fetched over the
network, and model text with markup stays inert."""

from __future__ import annotations

import html as html_mod
import json
import re
import shutil

import pytest

from deltalens import Experiment
from deltalens.diff.activations import DifferenceLens
from deltalens.diff.lens import topic_hits
from deltalens.report.findings import collect
from deltalens.report.html import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def small(tmp_path_factory, worker_id):
    """Built once per test session: pytest-xdist workers share it (the documented pattern: the
    base temp directory's parent is common to the workers; a file lock orders them)."""
    from filelock import FileLock

    from report_helpers import build_small_experiment, load_small_experiment

    shared = (
        tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    )
    root = shared / "report_small_experiment"
    with FileLock(str(root) + ".lock"):
        if (root / "built.json").is_file():
            s = load_small_experiment(root)
        else:
            s = build_small_experiment(root)
    return s


def test_findings_are_computed_from_saved_results(small):
    exp = Experiment(small.root)
    found = {f.analysis: f for f in collect(exp)}
    # the planted embedding shift points at the unembedding rows of the five topic words
    lens = found["model diff · activations"]
    assert "5/20 topic tokens" in lens.headline
    null = DifferenceLens.load(exp.activation_diff_dir("null_organism"))
    n_null = len(topic_hits(null.summary_max["pos"][:20], small.topic_words))
    assert lens.control == f"null organism null_organism: {n_null}/20" and n_null <= 1
    # only the embedding matrix and one down projection changed
    assert found["model diff · weights"].headline.startswith("organism vs base: 2/39 tensors changed")
    ev = json.loads((exp.sae_eval_dir("planted") / "eval.json").read_text())
    sae = found["SAE"]
    assert f"CE recovered {ev['loss']['ce_recovered_zero']:.3f} / {ev['loss']['ce_recovered_mean']:.3f}" in (
        sae.headline
    )
    assert f"clean {ev['loss']['ce_clean']:.3f}" in sae.control
    assert found["SAE features"].control is None  # rendered as "no control: …"
    html = small.report.read_text()
    assert html.index("<h2>Findings</h2>") < html.index("<h2>Overview</h2>")
    assert "no control: descriptive statistics" in html
    for f in found.values():  # every link points at an anchor of the page
        assert f"id='{f.href[1:]}'" in html, f.href


def test_token_tables_are_html_not_images(small):
    html = small.report.read_text()
    assert (small.root / "diff/weights/organism/logit_lens.png").is_file()
    assert (small.root / "diff/activations/organism/activation_lens.png").is_file()
    assert "alt='logit lens'" not in html and "alt='activation lens'" not in html
    assert "weight logit lens at layer" in html and "activation-difference lens: top tokens" in html
    # the planted topic words are cells of both lens tables of the organism
    for kind, caption in (
        ("activations", "activation-difference lens: top tokens"),
        ("weights", "weight logit lens at layer"),
    ):
        start = html.index(f"id='diff-{kind}-organism'")
        block = re.search(re.escape(caption) + r".*?</table>", html[start:], re.S).group(0)
        cells = [html_mod.unescape(c).strip("' ") for c in re.findall(r"<td>([^<]*)</td>", block)]
        assert {w for w in small.topic_words if w in cells} == set(small.topic_words), (caption, cells)
    # self-contained: nothing refers to another file or host
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:|//|file:)", html)


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


@pytest.fixture(scope="module")
def page(small):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed (make test installs them)")
    d = _driver()
    d.get(small.report.resolve().as_uri())
    yield d
    d.quit()


def _column(table, i: int) -> list[str]:
    return [
        r.find_elements("tag name", "td")[i].text for r in table.find_elements("css selector", "tbody tr")
    ]


@pytest.mark.browser
def test_page_in_chromium(page, small):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    d = page
    errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    # model text with markup is inert: no payload ran, and it reads as text
    assert d.execute_script("return window.__pwned === undefined"), d.execute_script("return window.__pwned")
    assert d.execute_script("return document.scripts.length") == 1
    assert not d.find_elements("css selector", "main img[onerror], main [onerror]")
    body = d.find_element("tag name", "body").text
    assert "<script>window.__pwned='script'</script>" in body and 'onerror="window.__pwned' in body
    # every image decodes; nothing was fetched
    imgs = d.find_elements("css selector", "img")
    assert len(imgs) >= 3
    for img in imgs:
        ok = d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
        assert ok, img.get_attribute("alt")
    assert d.execute_script("return performance.getEntriesByType('resource').length") == 0

    # the first section is the findings, and its links land on their sections
    first = d.find_element("css selector", "main section")
    assert first.get_attribute("id") == "sec-findings"
    for a in first.find_elements("css selector", "a"):
        target = a.get_attribute("href").split("#", 1)[1]
        assert d.execute_script("return !!document.getElementById(arguments[0])", target), target

    # hover on a dashboard token shows its value from the dashboard file
    rec = json.loads((small.dashboard_index.parent / "features" / "4.json").read_text())
    ex = rec["activations"][0]
    j = max(range(len(ex["values"])), key=lambda k: ex["values"][k])
    span = d.find_elements("css selector", "#latent-4 .ex")[0].find_elements("css selector", ".tok")[j]
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", span)
    ActionChains(d).move_to_element(span).perform()
    tip = d.find_element("id", "tip")
    WebDriverWait(d, 5).until(lambda _: tip.is_displayed())
    shown = float(tip.text.rsplit(": ", 1)[1])
    assert shown == pytest.approx(ex["values"][j], rel=1e-3) and ex["values"][j] > 0

    # clicking a header re-sorts numerically, twice reverses; the filter hides non-matching rows
    table = next(
        t
        for t in d.find_elements("css selector", "table.sortable")
        if "markup.jsonl" in t.text.split("\n")[0]
    )
    th = [h for h in table.find_elements("css selector", "th") if h.text.startswith("tokens")][0]
    expected = sorted(r["tokens"] for r in small.generations)
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", th)
    th.click()
    assert [int(x) for x in _column(table, 3)] == expected
    th.click()
    assert [int(x) for x in _column(table, 3)] == expected[::-1]
    box = table.find_element("xpath", "preceding-sibling::input[@class='filter']")
    box.send_keys("question 1")
    visible = [r for r in table.find_elements("css selector", "tbody tr") if r.is_displayed()]
    assert len(visible) == sum("question 1" in r["question"] for r in small.generations) == 11


def test_circuit_finding_reads_the_saved_faithfulness_curve(tmp_path):
    from deltalens.circuits.faithfulness import FaithfulnessCurve

    exp = Experiment(tmp_path / "exp")
    exp.save_config({"name": "c"})
    # F(model) = 2, F(empty) = 0: faithfulness = F_circuit / 2, completeness = F_complement / 2
    curve = FaithfulnessCurve("sites", [1, 2, 5], 40, 2.0, 0.0, [0.4, 1.7, 1.9], [1.5, 0.2, 0.1], 0.0, {})
    curve.save(exp.circuits_dir("task", "attribution_denoising"))
    [f] = [f for f in collect(exp) if f.analysis == "circuits"]
    # the smallest k reaching faithfulness 0.8 is k = 2 (1.7 / 2 = 0.85), its complement 0.2 / 2
    assert "top 2 of 40 sites nodes recover faithfulness 0.85" in f.headline
    assert f.control.startswith("complement (model minus circuit) 0.10")
    curve = FaithfulnessCurve("sites", [1, 2], 40, 2.0, 0.0, [0.4, 1.0], [1.5, 1.0], 0.0, {})
    curve.save(exp.circuits_dir("task", "attribution_denoising"))
    [f] = [f for f in collect(exp) if f.analysis == "circuits"]
    assert "faithfulness 0.50 (best; 0.8 not reached)" in f.headline


def test_a_broken_result_gives_one_finding_row_and_the_rest_renders(small, tmp_path):
    exp = Experiment(tmp_path / "exp")
    shutil.copytree(small.root / "diff", exp.root / "diff")
    shutil.copytree(
        small.root / "models", exp.root / "models", ignore=shutil.ignore_patterns("*.safetensors")
    )
    exp.save_config({"name": "broken"})
    (exp.activation_diff_dir("organism") / "activation_lens.json").write_text("{not json")
    found = collect(exp)
    broken = [f for f in found if f.headline.startswith("could not read")]
    assert len(broken) == 1 and "activation_lens.json" in broken[0].headline
    assert any(f.analysis == "model diff · weights" for f in found)
    assert "could not read" in build_report(exp).read_text()


def test_embedded_figures_are_palette_pngs_that_look_the_same(small):
    import io

    import numpy as np
    from PIL import Image

    from deltalens.report.html import png_bytes

    for p in sorted(small.root.rglob("*.png"))[:6]:
        small_png = png_bytes(p)
        assert len(small_png) <= p.stat().st_size
        a = np.asarray(Image.open(p).convert("RGB"), dtype=float)
        b = np.asarray(Image.open(io.BytesIO(small_png)).convert("RGB"), dtype=float)
        assert a.shape == b.shape and np.abs(a - b).mean() < 2.0, p.name  # of 255
