"""Screenshot the first screen of an experiment's report with headless Chromium.

    python examples/report_screenshot.py experiments/demo/report/index.html docs/figures/report/findings.png

Needs Debian's ``chromium`` and ``chromium-driver`` (``make browser``) and selenium (dev extra).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def screenshot(report: Path, out: Path, width: int = 1400, height: int = 900) -> Path:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    opts.add_argument(f"--window-size={width},{height}")
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=opts)
    try:
        d.get(report.resolve().as_uri())
        out.parent.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(out))
    finally:
        d.quit()
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=900)
    a = ap.parse_args()
    print(screenshot(a.report, a.out, a.width, a.height))
