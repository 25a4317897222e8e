"""UI benchmark: the real app in Chromium. Prints one JSON object per line, each with "metric".

    .venv/bin/python bench/bench_ui.py [--repeats 5] [--train-seconds 20]

Metrics:
* ``server_start_s``: ``streamlit run`` until its health check answers;
* ``first_page_s`` / ``first_page_warm_s``: browser navigation until the Attention page's first
  heatmap is drawn (default model), for the server's first session and for a reload;
* ``text_to_redraw_s``: on Attention, new text committed (Ctrl+Enter) until the large heatmap
  shows it (median of ``--repeats``; DESIGN §5 target: under 1 s for the default model);
* ``next_token_round_trip_s``: ``Next token`` clicked until the new token is on the page (median);
* ``page_load_s`` (one line per page: Logit lens, Ablation, Compare): navigation until every figure is
  drawn and no spinner shows;
* ``export_bundle_s``: "Export bundle" clicked on Attention until its download button appears;
* ``train_tokens_per_s_app`` / ``train_tokens_per_s_cli`` / ``train_app_vs_cli``: the same small
  configuration trained for ``--train-seconds`` in the app (started from the browser, live view
  polling) and with ``python -m lm_core train`` (median tokens/s of the logged rows after the
  first; DESIGN §5 target: app ≥ 0.9 × CLI).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.app.test_browser import (  # noqa: E402  (the browser test's helpers: one place for them)
    CHROMIUM,
    browser_page,
    commit_text_area,
    free_port,
    open_page,
    plot_y,
    settle,
    streamlit_server,
    wait_idle,
)

# One small configuration for both trainings (flags of `python -m lm_core train`; the same
# values are typed into the Train page's advanced settings).
TRAIN = {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 64, "batch_size": 8}


def emit(metric: str, value, unit: str = "", **extra) -> None:
    print(json.dumps({"metric": metric, "value": value, "unit": unit, **extra}), flush=True)


def median_tokens_per_s(history_csv: Path) -> tuple[float, int]:
    import pandas as pd

    h = pd.read_csv(history_csv)
    tps = h["tokens_per_s"].dropna().iloc[1:]  # the first window includes warm-up
    return float(tps.median()), int(h["step"].iloc[-1])


def cli_training(seconds: float, out: Path) -> float:
    cmd = [sys.executable, "-m", "lm_core", "train", "--preset", "default", "--corpus", "builtin:python-docs",
           "--tokenizer", "char", "--n-layer", str(TRAIN["n_layer"]), "--n-head", str(TRAIN["n_head"]),
           "--n-embd", str(TRAIN["n_embd"]), "--block-size", str(TRAIN["block_size"]),
           "--batch-size", str(TRAIN["batch_size"]), "--max-steps", "100000", "--max-seconds", str(seconds),
           "--log-interval", "10", "--eval-interval", "250", "--out", str(out), "--quiet"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 300)
    if done.returncode != 0:
        raise RuntimeError(f"CLI training failed: {done.stderr.strip()[-500:]}")
    tps, steps = median_tokens_per_s(out / "history.csv")
    emit("train_tokens_per_s_cli", round(tps), "tokens/s", steps=steps, seconds=seconds, config=TRAIN)
    return tps


def app_training(page, url: str, seconds: float, runs: Path) -> float:
    open_page(page, f"{url}/train", charts=False)
    page.get_by_text("Advanced settings", exact=True).click()
    for label, value in (("Layers", TRAIN["n_layer"]), ("Heads", TRAIN["n_head"]),
                         ("Width (n_embd)", TRAIN["n_embd"]), ("Context (block size)", TRAIN["block_size"]),
                         ("Batch size", TRAIN["batch_size"]), ("Steps", 100000)):
        box = page.get_by_label(label, exact=True)
        box.fill(str(value))
        box.press("Enter")
        wait_idle(page)
    settle(page)
    page.get_by_role("button", name="Start training", exact=True).click()
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stProgress\"]')]"
                           ".some(e => e.innerText.includes('running'))", timeout=120_000)
    time.sleep(seconds)
    page.get_by_role("button", name="Stop", exact=True).click()
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stProgress\"]')]"
                           ".some(e => e.innerText.includes('stopped'))", timeout=120_000)
    (run,) = [d for d in runs.iterdir() if (d / "history.csv").exists()]
    tps, steps = median_tokens_per_s(run / "history.csv")
    emit("train_tokens_per_s_app", round(tps), "tokens/s", steps=steps, seconds=seconds, config=TRAIN)
    return tps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-seconds", type=float, default=20.0)
    ap.add_argument("--skip-training", action="store_true")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        emit("skipped", True, reason=f"Chromium not installed at {CHROMIUM}")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = tmp / "runs"
        env = {"LM_LENS_RUNS_DIR": str(runs), "LM_LENS_CACHE": str(tmp / "cache")}
        t0 = time.perf_counter()
        with streamlit_server(env, port=free_port()) as url:
            emit("server_start_s", round(time.perf_counter() - t0, 3), "s")
            with browser_page() as page:
                t0 = time.perf_counter()
                page.goto(url, wait_until="domcontentloaded")
                page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000)
                emit("first_page_s", round(time.perf_counter() - t0, 3), "s", page="Attention",
                     note="cold: the first session imports torch and loads the default model")
                settle(page)
                t0 = time.perf_counter()
                page.reload(wait_until="domcontentloaded")
                page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000)
                emit("first_page_warm_s", round(time.perf_counter() - t0, 3), "s", page="Attention",
                     note="a new tab once the server is warm")
                settle(page)

                times = []
                for i in range(args.repeats):
                    text = f"the cat sat on the mat {i} " * 2
                    before = plot_y(page)
                    t0 = time.perf_counter()
                    commit_text_area(page, "Text to inspect", text)
                    page.wait_for_function(
                        "(b) => { const p = document.querySelector('.js-plotly-plot'); "
                        "return p && p.data && JSON.stringify(p.data[0].y) !== b; }", arg=before, timeout=30_000)
                    times.append(time.perf_counter() - t0)
                    settle(page, quiet_ms=300)
                emit("text_to_redraw_s", round(statistics.median(times), 3), "s", runs=[round(t, 3) for t in times],
                     target="< 1 s")

                open_page(page, f"{url}/generate", charts=False)
                times = []
                for n in range(1, args.repeats + 1):
                    t0 = time.perf_counter()
                    page.get_by_role("button", name="Next token", exact=True).click()
                    page.wait_for_function(f"() => document.querySelectorAll('.lm-gen').length === {n}",
                                           timeout=30_000)
                    times.append(time.perf_counter() - t0)
                    settle(page, quiet_ms=300)
                emit("next_token_round_trip_s", round(statistics.median(times), 3), "s",
                     runs=[round(t, 3) for t in times])

                # the pages added later: navigation until every figure is drawn (warm server, default model)
                for name in ("logit-lens", "ablation", "compare"):
                    t0 = time.perf_counter()
                    open_page(page, f"{url}/{name}")
                    emit("page_load_s", round(time.perf_counter() - t0, 3), "s", page=name)

                open_page(page, url)
                t0 = time.perf_counter()
                page.get_by_role("button", name="Export bundle", exact=True).click()
                page.get_by_role("button", name=re.compile(r"^Download bundle")).wait_for(timeout=120_000)
                emit("export_bundle_s", round(time.perf_counter() - t0, 3), "s", page="Attention",
                     note="zip of the page's figures as HTML and PNG (kaleido starts a headless Chromium), "
                          "config, history and activation cache")

                if not args.skip_training:
                    app_tps = app_training(page, url, args.train_seconds, runs)
        if not args.skip_training:
            cli_tps = cli_training(args.train_seconds, tmp / "cli-run")
            emit("train_app_vs_cli", round(app_tps / cli_tps, 3), "ratio", target=">= 0.9")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
