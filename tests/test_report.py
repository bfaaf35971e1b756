"""`loadforge report`: the HTML renders in a real headless Chromium with data in every chart,
no script errors, and a screenshot with drawn pixels. Skipped only without chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest
from servers import http_server, loadforge

from loadforge.engine import histogram as hist
from loadforge.present import report

RUN = ("--rate", "200", "--duration", "2s", "--connections", "16", "--workers", "1", "--quiet")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two runs to overlay: a clean one, and one where every 10th response is a 500."""
    out = tmp_path_factory.mktemp("runs")
    paths = []
    with http_server(0.001) as url:
        for name, path in (("clean", "/"), ("flaky", "/flaky")):
            summary = out / f"{name}.json"
            proc = loadforge("run", "--target", url + path, *RUN, "--out", str(out),
                             "--label", f"variant={name}", "--summary-json", str(summary))
            assert proc.returncode == 0, proc.stderr
            paths.append(json.loads(summary.read_text())["result"])
    return paths


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=60)


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and unfiltered rows of an 8-bit RGB/RGBA PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and color in (2, 6)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line if bpp == 3 else bytes(v for j, v in enumerate(line) if j % 4 != 3)))
        prev = line
    return width, height, rows


def test_spectrum_walks_percentiles_to_the_max() -> None:
    h = hist.new_histogram()
    for v in range(1, 10_001):
        h.record_value(v)
    points = report.spectrum(h)
    assert points[0][0] == 1.0 and points[-1][0] == pytest.approx(1e5)
    values = [y for _, y in points]
    assert values == sorted(values)
    assert values[-1] == h.get_max_value()
    # 90% sits at x = 10.
    at_90 = next(y for x, y in points if x == pytest.approx(10))
    assert at_90 == h.get_value_at_percentile(90)
    assert report.spectrum(hist.new_histogram()) == []


def test_html_is_self_contained(runs: list[str], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    proc = loadforge("report", *runs, "--html", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "<script src" not in text and "<link" not in text
    assert not re.search(r"(src|href)=\"?https?://", text)
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', text, re.S).group(1))  # type: ignore[union-attr]
    clean, flaky = data["runs"]
    assert clean["title"] == "variant=clean" and flaky["title"] == "variant=flaky"
    assert sum(flaky["errors_per_s"]["5xx"]) > 0 and not clean["errors_per_s"]
    assert clean["spectra"]["steady"] and len(clean["t"]) >= 2


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_chromium_with_data_in_every_chart(runs: list[str],
                                                             tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert loadforge("report", *runs, "--html", str(out)).returncode == 0
    url = out.resolve().as_uri()

    dom = chromium("--dump-dom", "--enable-logging=stderr", "--v=0", url)
    assert dom.returncode == 0, dom.stderr
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stdout[:2000]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    assert "data-errors" not in attrs, attrs.get("data-errors")
    # rate, latency over time, errors by kind, one spectrum for the one stage
    assert attrs.get("data-charts") == "4"
    assert attrs.get("data-ready") == attrs.get("data-charts")
    assert "[4/4 charts]" in dom.stdout
    assert not re.search(r"CONSOLE.*(Uncaught|Error)", dom.stderr), dom.stderr
    assert len(re.findall(r'<canvas[^>]*data-points="[1-9]', dom.stdout)) == 4

    shot = tmp_path / "report.png"
    proc = chromium(f"--screenshot={shot}", "--window-size=1400,2400", url)
    assert proc.returncode == 0 and shot.exists(), proc.stderr
    assert os.path.getsize(shot) > 20_000
    width, height, rows = png_pixels(shot)
    assert (width, height) == (1400, 2400)
    # Non-white pixels, and saturated ones (the series' colors, not just grey text and axes).
    ink = colored = 0
    for row in rows[::4]:
        for i in range(0, len(row), 3 * 4):
            r, g, b = row[i], row[i + 1], row[i + 2]
            ink += (r, g, b) != (255, 255, 255)
            colored += max(r, g, b) - min(r, g, b) > 80
    assert ink > 2000 and colored > 200, (ink, colored)


def test_bad_input_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    proc = loadforge("report", str(bad), "--html", str(tmp_path / "r.html"))
    assert proc.returncode == 2 and "bad.parquet" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r.html").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_of_groups_shows_intervals_and_the_trend(tmp_path: Path) -> None:
    from test_compare_noise import archive

    archive(tmp_path, {"main": [1000, 1010, 990, 1005, 995],
                       "slow": [1200, 1210, 1190, 1205, 1195]})
    out = tmp_path / "groups.html"
    proc = loadforge("report", str(tmp_path), "--group-by", "build", "--baseline", "build=main",
                     "--html", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', out.read_text(), re.S)[1])
    stage = data["comparison"]["stages"][0]
    assert stage["noise"][1]["p50"]["p"] < 0.05
    assert data["trend"]["metrics"]["p50"]["shifts"] == [5]     # main, then slow from run 6
    dom = chromium("--dump-dom", out.resolve().as_uri())
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', re.search(r"<body([^>]*)>", dom.stdout)[1]))
    assert "data-errors" not in attrs, attrs.get("data-errors")
    # rate, latency, errors, one spectrum, and the two trend charts
    assert attrs.get("data-charts") == attrs.get("data-ready") == "6"
    assert 'class="sig"' in dom.stdout and "[+" in dom.stdout
    bad = loadforge("report", str(tmp_path), "--baseline", "build=main", "--html",
                    str(tmp_path / "x.html"))
    assert bad.returncode == 2 and "--group-by" in bad.stderr
