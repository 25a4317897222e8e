"""The pretrained-model picker in Chromium, where ``st.fragment(run_every=…)`` really fires: the
download's progress bar moves by itself, Cancel stops it, and a finished download opens the model
with no click; the app's server is pointed at the fake hub of ``tests/fakehub.py`` (no network)."""

from __future__ import annotations

import re
import time

import pytest

pytest.importorskip("transformers", reason="transformers is not installed (optional extra)")
from fakehub import FakeHub, serving, tiny_gpt2_repo  # noqa: E402
from test_browser import _need_browser, browser_page, exceptions, progress_text, streamlit_server, wait_idle  # noqa: E402

REPO = "tiny-org/tiny-gpt2"


def _wait_for(cond, timeout: float = 60.0, what: str = "") -> None:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_download_progress_cancel_and_open_in_chromium(tmp_path, default_model_dir):
    _need_browser()
    files, _, _ = tiny_gpt2_repo(tmp_path / "repo")
    home = tmp_path / "hf_home"
    with serving(FakeHub({REPO: {"main": files}})) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
               "HF_HUB_OFFLINE": "0", "HF_TOKEN": "", "LM_LENS_DEFAULT_MODEL": str(default_model_dir),
               "LM_LENS_RUNS_DIR": str(tmp_path / "runs"), "HTTPS_PROXY": "", "HTTP_PROXY": "",
               "https_proxy": "", "http_proxy": "", "ALL_PROXY": "", "all_proxy": "",
               "LM_LENS_SERVER_LOG": str(tmp_path / "server.log")}
        with streamlit_server(env) as url, browser_page() as page:
            page.set_default_timeout(90_000)  # a loaded 2-core machine renders the first page slowly
            page.goto(url)
            wait_idle(page)
            side = page.locator('[data-testid="stSidebar"]')
            side.get_by_role("combobox", name="Model").click()
            page.get_by_role("option", name="Pretrained model…").click()
            wait_idle(page)
            _wait_for(lambda: "124 M parameters" in side.inner_text(), what="the catalog's facts")
            side.get_by_role("combobox", name="Pretrained model").click()
            page.get_by_role("option", name=re.compile("Another hub name")).click()
            wait_idle(page)
            box = side.get_by_role("textbox", name="Hugging Face name or local folder")
            box.fill(REPO)
            box.press("Enter")
            wait_idle(page)
            _wait_for(lambda: "2 layers × 2 heads" in side.inner_text(), what="the config's facts")

            hub.hold.clear()  # first try: the weights stall, the bar shows it, Cancel stops it
            side.get_by_role("button", name="Download and load").click()
            _wait_for(lambda: "model.safetensors" in progress_text(page), what="the progress bar")
            side.get_by_role("button", name="Cancel").click()
            _wait_for(lambda: "Download cancelled" in side.inner_text(), what="the cancel message")
            hub.hold.set()
            assert "Showing" not in side.inner_text()

            side.get_by_role("button", name="Download and load").click()  # second try: it arrives
            _wait_for(lambda: f"Showing {REPO}" in side.inner_text(), what="the model to open by itself")
            wait_idle(page)
            assert "2 layers · 2 heads · width 32" in side.inner_text()
            assert not exceptions(page)
            page.screenshot(path=str(tmp_path / "picker.png"), full_page=True)
