"""The real app in a real browser: ``streamlit run app/main.py`` driven by Playwright + Chromium.

Opens every page (no exception box), trains a model and watches the live view change, types
into ``Text to inspect`` and sees the heatmaps change, presses ``Next token`` three times,
uploads a binary file, switches a head off and on by clicking the Ablation grid, and exports a
bundle and reads it back. Saves a screenshot of each page to ``docs/screenshots/`` (the README
shows them). Needs Debian's Chromium at /usr/bin/chromium: without it the test skips, except
under ``CI`` where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.pages import PAGES

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
# Screenshots go to the README's folder only when asked (LM_LENS_SCREENSHOTS=1): a test run never
# changes tracked files. Otherwise they land in a temporary folder (still taken: shooting
# exercises the full-height layout).
README_SHOTS = ROOT / "docs" / "screenshots"


def screenshot_dir(tmp_path: Path) -> Path:
    return README_SHOTS if os.environ.get("LM_LENS_SCREENSHOTS") == "1" else tmp_path / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]


def _need_browser():
    why = None
    if not Path(CHROMIUM).exists():
        why = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does it)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            why = "playwright is not installed (pip install -r requirements-dev.txt)"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run under CI: {why}")
        pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(env_extra: dict[str, str], port: int | None = None):
    """``streamlit run app/main.py`` on a free port; yields the base URL; always killed."""
    port = port or free_port()
    env = {**os.environ, **env_extra}
    cmd = [str(Path(sys.executable).with_name("streamlit")), "run", "app/main.py",
           "--server.headless", "true", "--server.fileWatcherType", "none", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--client.showErrorDetails", "full",
           "--browser.gatherUsageStats", "false"]
    log = open(env_extra.get("LM_LENS_SERVER_LOG", os.devnull), "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.time() - t0 > 60:
                raise RuntimeError("streamlit did not come up within 60 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


# -- page helpers (shared with bench/bench_ui.py) ----------------------------------------------------


# true when Streamlit reports no script run in progress (also used by bench/bench_live.py)
IDLE_JS = ("() => !document.querySelector('[data-testid=\"stStatusWidget\"]') || "
           "!document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')")


def wait_idle(page, timeout: float = 30.0) -> None:
    """Wait until Streamlit reports no script run in progress."""
    page.wait_for_function(IDLE_JS, timeout=timeout * 1000)


def open_page(page, url: str, charts: bool = True) -> None:
    """Go to ``url`` and wait until the page has drawn (its charts, when it has any)."""
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector('[data-testid="stSidebar"]')
    page.wait_for_selector(".js-plotly-plot" if charts else "[data-testid='stMainBlockContainer'] h1",
                           timeout=60_000)
    settle(page)


def settle(page, quiet_ms: int = 600, timeout: float = 30.0) -> None:
    """Wait until no script runs, no spinner shows and the number of drawn charts stops changing."""
    wait_idle(page, timeout)
    last, t0, stable_since = -1, time.time(), time.time()
    while time.time() - t0 < timeout:
        n = page.locator(".js-plotly-plot .main-svg").count()
        if page.locator("[data-testid='stSpinner']").count():
            n = -2  # a cached computation is still running: not settled
        if n != last:
            last, stable_since = n, time.time()
        elif (time.time() - stable_since) * 1000 >= quiet_ms:
            return
        time.sleep(0.1)


def plot_y(page, index: int = 0):
    """The y categories of the first trace of the index-th Plotly chart on the page."""
    return page.evaluate(
        "(i) => { const p = document.querySelectorAll('.js-plotly-plot')[i]; "
        "return p && p.data ? JSON.stringify(p.data[0].y) : null; }", index)


def shoot(page, path: Path) -> None:
    """Screenshot of the whole page: Streamlit scrolls inside its main block, so the viewport is
    made as tall as the content first."""
    size = page.viewport_size
    h = page.evaluate("() => { const m = document.querySelector('[data-testid=\"stMain\"]') || document.body; "
                      "return Math.max(m.scrollHeight, document.body.scrollHeight); }")
    page.set_viewport_size({"width": size["width"], "height": int(min(max(h, size["height"]), 6000))})
    settle(page, quiet_ms=400)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)


def click_cell(page, plot_index: int, x: float, y: float) -> None:
    """Click the point at data coordinates (x, y) of the plot_index-th Plotly chart."""
    pos = page.evaluate(
        """([i, x, y]) => { const p = document.querySelectorAll('.js-plotly-plot')[i];
            const fl = p._fullLayout, r = p.getBoundingClientRect();
            return [fl.xaxis.l2p(x) + fl.xaxis._offset + r.left, fl.yaxis.l2p(y) + fl.yaxis._offset + r.top]; }""",
        [plot_index, x, y])
    page.mouse.move(*pos)
    page.mouse.click(*pos)


def exceptions(page) -> list[str]:
    return page.locator('[data-testid="stException"]').all_inner_texts()


def progress_text(page) -> str:
    loc = page.locator('[data-testid="stProgress"]')
    return loc.first.inner_text() if loc.count() else ""


# every text Streamlit shortens with an ellipsis because it does not fit (button labels, metric
# labels and values, select boxes): the text and its full and visible widths
CUT_JS = """() => [...document.querySelectorAll('*')].filter(e => e.offsetParent !== null && e.clientWidth > 0
    && e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).textOverflow === 'ellipsis')
    .map(e => `${(e.innerText || '').trim()} [${e.scrollWidth} > ${e.clientWidth} px]`)"""
NARROW = 1100  # a small laptop's browser window: names must fit here too


def cut_texts(page, width: int = NARROW) -> list[str]:
    """The texts shortened with an ellipsis when the window is ``width`` px wide."""
    size = page.viewport_size
    page.set_viewport_size({"width": width, "height": size["height"]})
    settle(page, quiet_ms=300)
    try:
        return page.evaluate(CUT_JS)
    finally:
        page.set_viewport_size(size)


# the charts whose drawn margins differ from the ones sent: Plotly's automargin had to widen them
# and draw the figure a second time (app.figures.fit_margins exists to avoid that)
WIDENED_JS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(gd => {
    const s = gd._fullLayout._size, m = gd.layout.margin || {};
    const off = ['l', 'r', 'b'].filter(k => m[k] !== undefined && Math.round(s[k]) > m[k]);
    return off.length ? `${(gd.layout.title && gd.layout.title.text) || '?'}: ` +
        off.map(k => `${k} ${m[k]} -> ${Math.round(s[k])}`).join(', ') : null; }).filter(x => x)"""


def widened_charts(page) -> list[str]:
    return page.evaluate(WIDENED_JS)


def commit_text_area(page, label: str, text: str) -> None:
    box = page.get_by_role("textbox", name=label, exact=True)
    box.fill(text)
    box.press("Control+Enter")


# -- the test ------------------------------------------------------------------------------------------


def test_app_in_chromium(tmp_path):
    _need_browser()
    SHOTS = screenshot_dir(tmp_path)
    SHOTS.mkdir(parents=True, exist_ok=True)
    env = {"LM_LENS_RUNS_DIR": str(tmp_path / "runs"), "LM_LENS_CACHE": str(tmp_path / "cache"),
           "LM_LENS_SERVER_LOG": str(tmp_path / "server.log")}
    with streamlit_server(env) as url, browser_page() as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # every page opens without an exception box
        # (from app/pages.py: the default page first, Train last)
        for spec in sorted(PAGES, key=lambda p: (not p.default, p.url == "train")):
            name = spec.url
            open_page(page, f"{url}/{'' if spec.default else name}", charts=name not in ("generate", "train"))
            assert not exceptions(page), (name, exceptions(page))
            assert not cut_texts(page), (name, cut_texts(page))  # names are never cut
            if name != "train":
                shoot(page, SHOTS / f"{name}.png")

        # Train: start, see the live view change twice, stop
        page.get_by_text("Advanced settings", exact=True).click()
        for label, value in (("Layers", "2"), ("Width (n_embd)", "64"), ("Context (block size)", "64"),
                             ("Batch size", "8")):
            box = page.get_by_label(label, exact=True)
            box.fill(value)
            box.press("Enter")
            wait_idle(page)
        page.get_by_role("button", name="Start training", exact=True).click()
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stProgress\"]')]"
                               ".some(e => e.innerText.includes('running'))", timeout=60_000)
        seen = [progress_text(page)]
        t0 = time.time()
        while len(set(seen)) < 3 and time.time() - t0 < 60:
            time.sleep(0.5)
            seen.append(progress_text(page))
        assert len(set(seen)) >= 3, f"the live view did not change twice without a click: {seen}"
        page.wait_for_selector(".js-plotly-plot")
        settle(page, quiet_ms=300)
        shoot(page, SHOTS / "train.png")
        assert not exceptions(page)
        page.get_by_role("button", name="Stop", exact=True).click()
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stProgress\"]')]"
                               ".some(e => e.innerText.includes('stopped'))", timeout=60_000)
        assert not exceptions(page)

        # an uploaded binary file is refused with a message
        page.get_by_text("Set up a new run").click() if page.get_by_text("Upload a .txt").count() == 0 else None
        page.get_by_text("Upload a .txt").click()
        wait_idle(page)
        page.locator("input[type=file]").set_input_files(
            files=[{"name": "bad.txt", "mimeType": "text/plain", "buffer": b"\x00\x01binary\x00"}])
        page.wait_for_selector("[data-testid='stAlert']:has-text('binary')", timeout=30_000)
        assert not exceptions(page)

        # Time travel: pick the run just trained and move the sidebar slider to its first snapshot
        open_page(page, url)
        page.get_by_role("combobox", name="Model").click()
        page.get_by_role("option", name=re.compile(r"stopped")).click()
        thumb = page.locator("[data-testid='stSidebar'] input[aria-label='Weights at step']")
        thumb.wait_for(timeout=60_000)
        settle(page)
        thumb.focus()
        page.keyboard.press("Home")
        page.wait_for_selector("[data-testid='stAlert']:has-text('Time travel')", timeout=30_000)
        settle(page)
        assert not exceptions(page)
        shoot(page, SHOTS / "time-travel.png")
        page.get_by_role("combobox", name="Model").click()
        page.get_by_role("option", name=re.compile(r"^Default model")).click()
        settle(page)

        # Attention: new text redraws the heatmaps
        open_page(page, url)
        before = plot_y(page)
        commit_text_area(page, "Text to inspect", "abcabcabc xyzxyz")
        page.wait_for_function("() => { const p = document.querySelector('.js-plotly-plot'); "
                               "return p && p.data && JSON.stringify(p.data[0].y).includes('\"0·a\"'); }",
                               timeout=15_000)
        assert plot_y(page) != before
        assert "0·a" in plot_y(page)
        settle(page)
        assert not widened_charts(page), widened_charts(page)  # each chart drawn once, margins as sent
        # figures download as PNG and HTML, tables as CSV
        for label, suffix in (("PNG", ".png"), ("HTML", ".html"), ("Head scores CSV", ".csv")):
            with page.expect_download(timeout=60_000) as dl:
                page.get_by_role("button", name=label).first.click()
            path = dl.value.path()
            assert dl.value.suggested_filename.endswith(suffix) and Path(path).stat().st_size > 100, label
        # clicking a cell of the layers × heads overview opens that head
        settle(page)
        click_cell(page, 1, x=1, y=1)  # head 1 of layer 1
        page.wait_for_function("() => document.querySelector('.js-plotly-plot').layout.title.text"
                               ".includes('Layer 1, head 1')", timeout=15_000)
        assert not exceptions(page)

        # Generate: Next token three times
        open_page(page, f"{url}/generate", charts=False)
        for n in (1, 2, 3):
            page.get_by_role("button", name="Next token", exact=True).click()
            page.wait_for_function(f"() => document.querySelectorAll('.lm-gen').length === {n}", timeout=30_000)
        page.wait_for_selector(".js-plotly-plot")
        settle(page)
        assert not cut_texts(page), cut_texts(page)
        assert not widened_charts(page), widened_charts(page)
        shoot(page, SHOTS / "generate.png")
        # clicking another candidate branches: the chosen token is marked, generation goes on from it
        other = page.evaluate("() => document.querySelector('.js-plotly-plot').data[1].marker.color"
                              ".findIndex(c => c !== '#e4572e')")  # the first candidate that was not drawn
        bar = page.locator(".js-plotly-plot").first.locator(".barlayer .trace").nth(0).locator(".point").nth(other)
        box = bar.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_function("() => [...document.querySelectorAll('.lm-gen')].some(e => "
                               "e.getAttribute('style').includes('fde2d8'))", timeout=30_000)
        assert not exceptions(page)

        # Ablation: clicking a cell of the heads grid switches that head off, clicking it again back on
        open_page(page, f"{url}/ablation")
        heads_box = page.locator("[data-testid='stMultiSelect']").first
        click_cell(page, 0, x=1, y=0)  # layer 0, head 1
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stMultiSelect\"]')]"
                               ".some(e => e.innerText.includes('L0 H1'))", timeout=30_000)
        settle(page)
        click_cell(page, 0, x=1, y=0)
        page.wait_for_function("() => ![...document.querySelectorAll('[data-testid=\"stMultiSelect\"]')]"
                               ".some(e => e.innerText.includes('L0 H1'))", timeout=30_000)
        assert "L0 H1" not in heads_box.inner_text()
        assert not exceptions(page)

        # Export: one click builds the bundle of the page, which downloads and reads back
        open_page(page, url)
        page.get_by_role("button", name="Export bundle", exact=True).click()
        download = page.get_by_role("button", name=re.compile(r"^Download bundle"))
        download.wait_for(timeout=120_000)
        with page.expect_download(timeout=60_000) as dl:
            download.click()
        from lm_core.export import read_bundle

        bundle = read_bundle(Path(dl.value.path()).read_bytes())
        assert bundle.meta["page"] == "Attention" and "index.html" in bundle.figures
        assert "blocks.0.attn.hook_pattern" in bundle.cache
        assert not exceptions(page)
        assert not errors, errors


# A tiny random model of each family, as tests/app/test_app_families.py builds them, plus Mistral's
# sliding window; what the sidebar's layout line shows for each.
BROWSER_FAMILIES = {
    "gpt2": "LayerNorm · learned position embedding · GELU MLP · multi-head",
    "llama": "RMSNorm · rotary (RoPE) · SwiGLU MLP · grouped-query",
    "qwen2": "RMSNorm · rotary (RoPE) · SwiGLU MLP · grouped-query",
    "neox": "parallel attention + MLP",
    "mistral": "sliding window 16",
}


def test_a_tiny_model_of_each_family_draws_its_attention_in_chromium(tmp_path):
    """One server, five run folders (GPT-2, Llama, Qwen2, GPT-NeoX / Pythia, Mistral): each is picked in
    the sidebar and the Attention page draws its heatmaps with no exception box and no page error."""
    _need_browser()
    import test_app_families as fam

    runs = tmp_path / "runs"
    for name in BROWSER_FAMILIES:  # Mistral: Llama's layout with a sliding attention window
        extra = {"sliding_window": 16} if name == "mistral" else {}
        fam.make_family_run(runs / f"family-{name}", "llama" if name == "mistral" else name, steps=2, **extra)
    import lm_core

    sizes = {name: f"{lm_core.load_run(runs / f'family-{name}').model.num_params() / 1e3:.1f} k parameters"
             for name in BROWSER_FAMILIES}
    env = {"LM_LENS_RUNS_DIR": str(runs), "LM_LENS_CACHE": str(tmp_path / "cache"),
           "LM_LENS_SERVER_LOG": str(tmp_path / "server.log")}
    with streamlit_server(env) as url, browser_page() as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        open_page(page, url)
        for name, line in BROWSER_FAMILIES.items():
            page.get_by_role("combobox", name="Model").click()
            page.get_by_role("option", name=re.compile(rf"family-{name}\b")).click()
            time.sleep(0.3)  # the rerun the pick starts, before waiting for it to end
            # the sidebar describes the model picked: its size and its layout
            page.wait_for_function("(w) => { const t = document.querySelector('[data-testid=\"stSidebar\"]')"
                                   ".innerText; return w.every(s => t.includes(s)); }",
                                   arg=[sizes[name], line], timeout=60_000)
            page.wait_for_function("() => { const p = document.querySelector('.js-plotly-plot'); "
                                   "return p && p.data && p.data.length > 0; }", timeout=60_000)
            settle(page)
            assert not exceptions(page), (name, exceptions(page))
            heads = page.evaluate("() => document.querySelectorAll('.js-plotly-plot').length")
            assert heads >= 1, name
        assert not errors, errors
