"""report.html opens in a real headless browser (Debian's Chromium) and shows the table and the charts."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 2600


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium: apt-get install -y chromium")
def test_report_renders_in_headless_chromium(tmp_path, comparison):
    out, _, _ = comparison  # tfidf, a failed model and a tiny RoBERTa (conftest)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert '<table id="results">' in html and html.count("<tr") >= 3
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(images) == 6  # F1, training time, F1 against cost, two confusion matrices, precision-recall curves
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # self-contained: nothing fetched from elsewhere

    screenshot = tmp_path / "report.png"
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={screenshot}",
            f"--window-size={WIDTH},{HEIGHT}",
            (out / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    with Image.open(screenshot) as image:
        assert image.size == (WIDTH, HEIGHT)
        pixels = image.convert("RGB")
        colours = pixels.getcolors(maxcolors=WIDTH * HEIGHT)
        # a blank or failed page is one or two colours; text, table shading and charts give thousands
        assert len(colours) > 500
        white = max(count for count, colour in colours if colour == (255, 255, 255))
        assert white < 0.9 * WIDTH * HEIGHT
        # matplotlib's first bar colour (#1f77b4) is on screen: the chart images were decoded and drawn
        assert any(colour == (31, 119, 180) for _, colour in colours)
