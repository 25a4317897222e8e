"""Live and shared, measured as a person feels it: real Chromium tabs, wall-clock time.

    .venv/bin/python bench/bench_live.py [--only watch,buttons,sessions] [--sessions 6] [--rounds 5]

Prints one JSON object per line, each with "metric". Every ratio compares figures measured in
this one run, on this machine.

* ``watch``: the ``induction`` preset trained three ways: with ``python -m lm_core train`` (no
  browser), and from the app's *Train an induction model* button with the Train page open in one
  tab, then in two tabs. The speed is steps per wall-clock second over the whole run (the
  history's ``elapsed_s`` is wall time, evaluations and waiting included; a per-step tokens/s
  would leave the waiting out). ``watch_ratio_1_tab`` / ``watch_ratio_2_tabs`` are app ÷ CLI
  (targets ≥ 0.9 and ≥ 0.8); the CLI runs twice, before and after the two-tab run, and its mean
  is the reference (a single CLI run varies by ±15% here). The CLI run uses the app run's own settings (read back from its
  ``config.json``), so both train the same thing. Also: the time a second tab takes to show the
  live run, and the ETA the page showed a third of the way in against the time the run then took.
* ``buttons``: round trips while a run trains, click → the page shows the new state: ``Pause``
  (shows "paused"), ``Resume`` ("running"), ``Stop`` ("stopping" at once, then "stopped"),
  *Train an induction model* (the live view shows the run "starting") — target ≤ 1 s each — and
  that click until the new process trains ("running"). Each round trip runs from the mouse press,
  on the page's own clock, to the first animation frame that shows the new state
  (``with_driver_s`` adds what Playwright spends before pressing: waiting for the button).
* ``sessions``: N browser sessions (separate cookies: separate Streamlit sessions) on Attention
  change their text at the same moment, each a different length; then each presses ``Next token``
  on Generate at the same moment. A round starts once every page has drawn the last one (as people
  look at the result before acting again). Round trips p50/p95 (target p95 ≤ 2.5 s with 6 on
  2 cores), each on its page's clock from the key or mouse press to the poll (every 50 ms) that sees
  the new text or token (``with_driver_p95`` from before Playwright acts; ``drawn_p95`` to the page
  fully drawn: no script running and the main thread idle, every figure of the rerun on screen),
  exceptions shown on any page, whether any session's heatmap showed another session's text, and
  the server's memory (RSS, MB) after each round (bounded: it must not grow round over round), and
  the CPU seconds per press spent in the server and in the Chromium processes (all on this machine).
  Six Chromium renderers on the server's own two cores spend ~1 CPU-s each per press, so this part
  measures mostly the browsers: in a workshop each person's browser runs on their own computer.
* ``workshop``: that situation. N people act at the same moment on one server, as in ``sessions``,
  but only one of them in Chromium (measured as above, over ``--workshop-rounds`` rounds); the other
  N-1 are real server sessions driven over the app's own websocket protocol (``tests/st_session.py``: the
  messages a browser tab sends, with nothing drawn), so the server's cores carry the server's work
  for N people and one browser's drawing. ``others_p50`` / ``others_p95``: those sessions' round
  trips, from sending the change to the server's end of that rerun. Their heatmaps are checked for
  other sessions' text and their generations for the right number of tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    CHROMIUM_ARGS,
    IDLE_JS,
    free_port,
    open_page,
    progress_text,
    streamlit_server,
)

# TrainConfig fields the CLI takes as flags (flag = field with "-"; learning_rate is --lr).
_CLI_TRAIN_FIELDS = ("batch_size", "learning_rate", "max_steps", "warmup_steps", "min_lr", "weight_decay",
                     "grad_clip", "eval_interval", "eval_iters", "seed", "log_interval", "checkpoint_interval",
                     "sample_tokens", "snapshots", "schedule")


def emit(metric: str, value, unit: str = "", **extra) -> None:
    print(json.dumps({"metric": metric, "value": value, "unit": unit, **extra}), flush=True)


def q(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p * (len(s) - 1))))]


def run_speed(run_dir: Path) -> dict:
    """Steps per wall-clock second of a finished run, from its history."""
    import pandas as pd

    h = pd.read_csv(run_dir / "history.csv")
    steps, elapsed = int(h["step"].iloc[-1]), float(h["elapsed_s"].iloc[-1])
    return {"steps": steps, "elapsed_s": round(elapsed, 2), "steps_per_s": steps / elapsed}


def the_run(runs: Path) -> Path:
    found = [d for d in runs.iterdir() if (d / "history.csv").exists()]
    if len(found) != 1:
        raise RuntimeError(f"expected one run under {runs}, found {[d.name for d in found]}")
    return found[0]


def wait_status(page, word: str, timeout_s: float = 600) -> float:
    """Seconds until the live view's progress bar says ``word``."""
    t0 = time.perf_counter()
    # polled every 200 ms, not at every animation frame (Playwright's default), which would itself
    # keep a core busy in the browser and be counted as the cost of watching
    page.wait_for_function(
        "(w) => [...document.querySelectorAll('[data-testid=\"stProgress\"]')].some(e => e.innerText.includes(w))",
        arg=word, timeout=timeout_s * 1000, polling=200)
    return time.perf_counter() - t0


# the page's clock at the last key or mouse press (installed once per page; survives reruns)
INPUT_CLOCK = ("() => { if (window.__lmInput === undefined) { window.__lmInput = null; const f = () => "
               "{ window.__lmInput = performance.now(); }; document.addEventListener('mousedown', f, true); "
               "document.addEventListener('keydown', f, true); } }")
PROGRESS_SAYS = ("[...document.querySelectorAll('[data-testid=\"stProgress\"]{extra}')]"
                 ".some(e => {test}.test(e.innerText))")


def click_round_trip(page, button: str, says: str, alerts: bool = False, timeout_s: float = 120) -> dict:
    """Press ``button`` and wait until the live view's progress bar (or an alert) matches the regex
    ``says``. ``s``: from the mouse press, as the page's own clock saw it, to the first animation
    frame showing the new state: what the person feels. ``with_driver_s``: the same from before
    Playwright's click, which also waits for the button to be visible and stable (0.1-0.6 s here)."""
    page.evaluate(INPUT_CLOCK)
    cond = PROGRESS_SAYS.format(extra=', [data-testid=\"stAlert\"]' if alerts else "", test=says)
    t0 = time.perf_counter()
    page.get_by_role("button", name=button, exact=True).click()
    shown = page.wait_for_function(f"() => ({cond}) ? performance.now() : false", timeout=timeout_s * 1000,
                                   polling="raf").json_value()
    driver = time.perf_counter() - t0
    pressed = page.evaluate("() => window.__lmInput")
    return {"s": round((shown - pressed) / 1000, 3), "with_driver_s": round(driver, 3)}


def parse_eta(text: str) -> float | None:
    m = re.search(r"ETA ((\d+) h )?((\d+) min )?(\d+(\.\d+)?) s", text)
    if not m:
        return None
    return 3600 * int(m.group(2) or 0) + 60 * int(m.group(4) or 0) + float(m.group(5))


def _processes():
    """(pid, command line) of every process this user can see."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            yield pid, Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue


def _is_server(cmd: str, port: int) -> bool:
    return "streamlit" in cmd and f"--server.port {port}" in cmd


def cpu_seconds(port: int) -> dict[str, float]:
    """CPU seconds used so far by the streamlit server on ``port`` and by every Chromium process:
    where a round's work went (the server's Python, or the browsers drawing)."""
    out = {"server": 0.0, "browser": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    for pid, cmd in _processes():
        who = "server" if _is_server(cmd, port) else "browser" if "chrom" in cmd.split(" ", 1)[0] else None
        if who is None:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[who] += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def per_press(before: dict[str, float], after: dict[str, float], presses: int) -> dict[str, float]:
    return {f"{k}_cpu_s_per_press": round((after[k] - before[k]) / presses, 3) for k in before}


def server_rss_mb(port: int) -> float | None:
    """Resident memory of the streamlit process serving ``port`` (and its children), MB."""
    total, found = 0, False
    for pid, cmd in _processes():
        if _is_server(cmd, port):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    found = True
    return round(total / 1024, 1) if found else None


# -- watch cost ------------------------------------------------------------------------------------


def app_training(tabs: int, buttons: bool) -> dict:
    from playwright.sync_api import sync_playwright

    out: dict = {"tabs": tabs}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        env = {"LM_LENS_RUNS_DIR": str(runs), "LM_LENS_CACHE": str(Path(tmp) / "cache")}
        port = free_port()
        with streamlit_server(env, port=port) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                page = ctx.new_page()
                page.set_default_timeout(60_000)
                open_page(page, f"{url}/train", charts=False)
                t0 = time.perf_counter()
                # the click acknowledged: the page shows the run starting
                out["start_ack"] = click_round_trip(page, "Train an induction model", "/starting|running/")
                wait_status(page, "running", 120)
                out["start_to_running_s"] = round(time.perf_counter() - t0, 3)
                t_start = time.time()
                cpu0 = cpu_seconds(port)
                extra = []
                for _ in range(tabs - 1):  # the same person's other tabs (same browser: same cookies)
                    other = ctx.new_page()
                    t1 = time.perf_counter()
                    open_page(other, f"{url}/train", charts=False)
                    wait_status(other, "running", 120)
                    out.setdefault("second_tab_load_s", round(time.perf_counter() - t1, 3))
                    extra.append(other)
                if buttons:
                    time.sleep(5)
                    out["pause_round_trip"] = click_round_trip(page, "Pause", "/paused/", timeout_s=60)
                    time.sleep(2)
                    out["resume_round_trip"] = click_round_trip(page, "Resume", "/running/", timeout_s=60)
                # the ETA the page shows a third of the way in, against the time the run then took
                eta_at, eta = None, None
                while eta is None and time.time() - t_start < 600:
                    time.sleep(1.0)
                    text = progress_text(page)
                    m = re.search(r"step ([\d,]+) / ([\d,]+)", text)
                    if m and int(m.group(1).replace(",", "")) >= int(m.group(2).replace(",", "")) / 3:
                        eta, eta_at = parse_eta(text), time.time()
                    if "finished" in text:
                        break
                wait_status(page, "finished", 900)
                cpu1, wall = cpu_seconds(port), time.time() - t_start
                # what watching cost while the run trained: CPU-s per wall-clock s of the server's
                # Python and of Chromium (the run's own process is neither)
                out["watch_cpu_share"] = {k: round((cpu1[k] - cpu0[k]) / wall, 3) for k in cpu0}
                if eta is not None:
                    out["eta_shown_s"] = round(eta, 1)
                    out["eta_actual_s"] = round(time.time() - eta_at, 1)
                out["exceptions"] = sum(pg.locator('[data-testid="stException"]').count() for pg in [page, *extra])
            finally:
                browser.close()
        run = the_run(runs)
        out.update(run_speed(run))
        out["config"] = json.loads((run / "config.json").read_text())
    return out


def cli_training(app_config: dict) -> dict:
    """``python -m lm_core train`` with the settings the app run used, no browser."""
    train = app_config["train"]
    flags = []
    for f in _CLI_TRAIN_FIELDS:
        if train.get(f) is not None:
            flags += [f"--{'lr' if f == 'learning_rate' else f.replace('_', '-')}", str(train[f])]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cli"
        cmd = [sys.executable, "-m", "lm_core", "train", "--preset", "induction", *flags, "--out", str(out), "--quiet"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"CLI training failed: {done.stderr.strip()[-800:]}")
        res = run_speed(out)
        res["process_wall_s"] = round(wall, 2)
        return res


def watch(args) -> None:
    # The CLI's speed varies by ±15% from run to run on a small shared machine, so it is
    # measured twice, before and after the app's runs, and the mean is the reference.
    one = app_training(1, buttons=False)
    cli_runs = [cli_training(one["config"])]
    two = app_training(2, buttons=False)
    cli_runs.append(cli_training(one["config"]))
    cli = {"steps_per_s": statistics.mean(r["steps_per_s"] for r in cli_runs),
           "runs": [round(r["steps_per_s"], 2) for r in cli_runs]}
    emit("watch_cli_steps_per_s", round(cli["steps_per_s"], 2), "steps/s", **cli)
    for name, r in (("1_tab", one), ("2_tabs", two)):
        cfg = r.pop("config")
        emit(f"watch_app_{name}_steps_per_s", round(r["steps_per_s"], 2), "steps/s", **r,
             num_threads=cfg["train"].get("num_threads"))
        emit(f"watch_ratio_{name}", round(r["steps_per_s"] / cli["steps_per_s"], 3), "ratio",
             target=">= 0.9" if name == "1_tab" else ">= 0.8")


def buttons(args) -> None:
    r = app_training(1, buttons=True)
    r.pop("config")
    for k in ("start_ack", "pause_round_trip", "resume_round_trip"):
        emit(f"{k}_s", r[k]["s"], "s", target="<= 1 s", with_driver_s=r[k]["with_driver_s"],
             note="from the mouse press to the frame that shows it (the page's clock)")
    emit("start_to_running_s", r["start_to_running_s"], "s",
         note="the training process starts: Python, torch, the corpus, the model")
    emit("buttons_run", r["steps_per_s"], "steps/s",
         **{k: v for k, v in r.items() if not k.endswith("_s") and not isinstance(v, dict)})
    stop_latency()


def stop_latency() -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        env = {"LM_LENS_RUNS_DIR": str(Path(tmp) / "runs"), "LM_LENS_CACHE": str(Path(tmp) / "cache")}
        port = free_port()
        with streamlit_server(env, port=port) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(60_000)
                open_page(page, f"{url}/train", charts=False)
                page.get_by_role("button", name="Train an induction model", exact=True).click()
                wait_status(page, "running", 120)
                time.sleep(5)
                t0 = time.perf_counter()
                ack = click_round_trip(page, "Stop", "/stopping|stopped/", alerts=True, timeout_s=60)
                wait_status(page, "stopped", 120)
                emit("stop_ack_s", ack["s"], "s", target="<= 1 s", with_driver_s=ack["with_driver_s"],
                     note="from the mouse press until the page says stopping")
                emit("stop_to_stopped_s", round(time.perf_counter() - t0, 3), "s",
                     note="click until the run has ended (final evaluation and checkpoint written)")
            finally:
                browser.close()


# -- several sessions at once ----------------------------------------------------------------------

_HEATMAP_LABELS = """() => { const p = document.querySelector('.js-plotly-plot');
    return p && p.data ? p.data[0].y : null; }"""


# resolves, on the page's clock, once no script runs and the main thread has gone idle: every
# figure of the rerun drawn (a person looks at them before acting again)
DRAWN_JS = ("() => new Promise(r => requestIdleCallback(() => requestIdleCallback(() => r(performance.now()), "
            "{timeout: 10000}), {timeout: 10000}))")


async def drawn_at(pg) -> float:
    """The page's clock when the current rerun is fully drawn."""
    await pg.wait_for_function(IDLE_JS, timeout=120_000, polling=100)
    return await pg.evaluate(DRAWN_JS)


def _text_of(labels) -> str:
    return "".join(str(l).split("·", 1)[1] for l in labels).replace("␣", " ").replace("↵", "\n")


async def browser_inspect(pg, text: str, marker: str) -> tuple[float, float, float, str]:
    """Attention, in a Chromium tab: type ``text`` and submit it. Returns seconds from the key press
    to the heatmap showing text that starts with ``marker``, to the page fully drawn, the first
    from before Playwright acts, and the text the heatmap showed."""
    box = pg.get_by_role("textbox", name="Text to inspect", exact=True)
    await box.fill(text)
    await pg.evaluate(INPUT_CLOCK)
    t0 = time.perf_counter()
    await box.press("Control+Enter")
    shown_at = await (await pg.wait_for_function(
        "(m) => { const p = document.querySelector('.js-plotly-plot'); if (!p || !p.data) return false;"
        " return p.data[0].y.map(l => String(l).split('·').slice(1).join('·')).join('')"
        ".replaceAll('␣', ' ').startsWith(m) ? performance.now() : false; }",
        arg=marker, polling=50)).json_value()
    driver_s = time.perf_counter() - t0
    pressed = await pg.evaluate("() => window.__lmInput")
    drawn_s = (await drawn_at(pg) - pressed) / 1000
    return (shown_at - pressed) / 1000, drawn_s, driver_s, _text_of(await pg.evaluate(_HEATMAP_LABELS))


def _mixed(text: str, shown: str, i: int, r: int, n: int) -> int:
    """1 when session ``i``'s heatmap showed something other than its own text of round ``r``."""
    bad = not text.startswith(shown.rstrip()) and not shown.startswith(text[: len(shown)])
    return int(bad or any(f"s{j}r{r}" in shown for j in range(n) if j != i))


async def open_generate(pg, url: str) -> None:
    await pg.goto(f"{url}/generate", wait_until="domcontentloaded")
    await pg.get_by_role("button", name="Next token", exact=True).wait_for()
    await drawn_at(pg)  # the page drawn (its first chart included) before anyone presses


async def browser_next_token(pg, k: int) -> tuple[float, float, float]:
    """Generate, in a Chromium tab: press Next token (the ``k``-th token). Seconds from the mouse
    press to the token on screen, to the page fully drawn, and the first from before Playwright acts."""
    await pg.evaluate(INPUT_CLOCK)
    t0 = time.perf_counter()
    await pg.get_by_role("button", name="Next token", exact=True).click()
    shown_at = await (await pg.wait_for_function(
        f"() => document.querySelectorAll('.lm-gen').length >= {k} ? performance.now() : false",
        polling=50)).json_value()
    driver_s = time.perf_counter() - t0
    pressed = await pg.evaluate("() => window.__lmInput")
    return (shown_at - pressed) / 1000, (await drawn_at(pg) - pressed) / 1000, driver_s


async def sessions(args) -> None:
    from playwright.async_api import async_playwright

    n, rounds = args.sessions, args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        env = {"LM_LENS_RUNS_DIR": str(Path(tmp) / "runs"), "LM_LENS_CACHE": str(Path(tmp) / "cache")}
        if args.server_threads:
            env["LM_LENS_SERVER_THREADS"] = str(args.server_threads)
        port = free_port()
        with streamlit_server(env, port=port) as url:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                ctxs = [await browser.new_context(viewport={"width": 1300, "height": 900}) for _ in range(n)]
                pages = [await c.new_page() for c in ctxs]
                for pg in pages:
                    pg.set_default_timeout(120_000)

                async def load(pg):
                    await pg.goto(url, wait_until="domcontentloaded")
                    await pg.wait_for_selector(".js-plotly-plot .main-svg")

                await asyncio.gather(*(load(pg) for pg in pages))
                await asyncio.sleep(2)
                emit("sessions_server_rss_mb", server_rss_mb(port), "MB", when="all sessions open")

                times: list[float] = []   # the page's clock: key or mouse press -> the frame showing it
                drawn: list[float] = []   # ... -> every figure of the rerun drawn
                driver: list[float] = []  # the same from before Playwright acts (waits for the element)
                mixed = 0

                async def inspect(i: int, pg, r: int) -> None:
                    nonlocal mixed
                    text = f"s{i}r{r} " + "ab" * (3 * i + r + 2)  # a different length per session
                    shown_s, drawn_s, driver_s, shown = await browser_inspect(pg, text, f"s{i}r{r} ")
                    times.append(shown_s)
                    drawn.append(drawn_s)
                    driver.append(driver_s)
                    mixed += _mixed(text, shown, i, r, n)

                cpu0 = cpu_seconds(port)
                for r in range(rounds):
                    await asyncio.gather(*(inspect(i, pg, r) for i, pg in enumerate(pages)))
                    emit("sessions_server_rss_mb", server_rss_mb(port), "MB", when=f"after inspect round {r + 1}")
                cpu_inspect = per_press(cpu0, cpu_seconds(port), n * rounds)
                errors = sum([await pg.locator('[data-testid="stException"]').count() for pg in pages])
                threads = args.server_threads or "default"
                emit("sessions_text_to_redraw_s", round(statistics.median(times), 3), "s", sessions=n, rounds=rounds,
                     server_threads=threads,
                     p95=round(q(times, 0.95), 3), max=round(max(times), 3), target="p95 <= 2.5 s",
                     with_driver_p95=round(q(driver, 0.95), 3), drawn_p50=round(statistics.median(drawn), 3),
                     drawn_p95=round(q(drawn, 0.95), 3), **cpu_inspect,
                     exceptions=errors, other_sessions_data_seen=mixed)

                gen_times: list[float] = []
                gen_drawn: list[float] = []  # the same to the page fully drawn (every chart of the rerun)
                driver = []

                await asyncio.gather(*(open_generate(pg, url) for pg in pages))
                await asyncio.sleep(1)

                async def next_token(pg, k: int) -> None:
                    shown_s, drawn_s, driver_s = await browser_next_token(pg, k)
                    gen_times.append(shown_s)
                    gen_drawn.append(drawn_s)
                    driver.append(driver_s)

                cpu0 = cpu_seconds(port)
                for r in range(rounds):
                    # each press waits for its page to be fully drawn, so a round starts once every
                    # person has seen the last one
                    await asyncio.gather(*(next_token(pg, r + 1) for pg in pages))
                cpu_next = per_press(cpu0, cpu_seconds(port), n * rounds)
                errors = sum([await pg.locator('[data-testid="stException"]').count() for pg in pages])
                emit("sessions_next_token_s", round(statistics.median(gen_times), 3), "s", sessions=n, rounds=rounds,
                     server_threads=threads,
                     p95=round(q(gen_times, 0.95), 3), max=round(max(gen_times), 3), target="p95 <= 2.5 s",
                     with_driver_p95=round(q(driver, 0.95), 3), drawn_p50=round(statistics.median(gen_drawn), 3),
                     drawn_p95=round(q(gen_drawn, 0.95), 3), **cpu_next, exceptions=errors)
                emit("sessions_server_rss_mb", server_rss_mb(port), "MB", when="end")
                await browser.close()


def _workshop_cpu(before: dict[str, float], after: dict[str, float], n: int, rounds: int) -> dict[str, float]:
    """The server's CPU per press (n people press each round) and the one browser's per its own press."""
    server = per_press(before, after, n * rounds)["server_cpu_s_per_press"]
    browser = per_press(before, after, rounds)["browser_cpu_s_per_press"]
    return {"server_cpu_s_per_press": server, "browser_cpu_s_per_press": browser}


async def workshop(args) -> None:
    """One person in Chromium, the others' sessions over the app's websocket protocol, all acting at
    the same moment: the server's load of N people, with only one browser's drawing on its cores."""
    from playwright.async_api import async_playwright

    from tests.st_session import ProtocolSession

    n, rounds = args.sessions, args.workshop_rounds
    with tempfile.TemporaryDirectory() as tmp:
        env = {"LM_LENS_RUNS_DIR": str(Path(tmp) / "runs"), "LM_LENS_CACHE": str(Path(tmp) / "cache")}
        port = free_port()
        with streamlit_server(env, port=port) as url:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                pg = await (await browser.new_context(viewport={"width": 1300, "height": 900})).new_page()
                pg.set_default_timeout(120_000)
                others = [ProtocolSession(url) for _ in range(n - 1)]
                await pg.goto(url, wait_until="domcontentloaded")
                await pg.wait_for_selector(".js-plotly-plot .main-svg")
                await asyncio.gather(*(s.open("") for s in others))
                await drawn_at(pg)

                seen = {"browser": [], "drawn": [], "others": []}
                mixed = 0

                async def other_inspect(j: int, s: ProtocolSession, r: int) -> None:
                    nonlocal mixed
                    text = f"s{j}r{r} " + "ab" * (3 * j + r + 2)
                    seen["others"].append(await s.set_text("Text to inspect", text))
                    heatmap = json.loads(s.charts[0])["data"][0]["y"] if s.charts else []
                    mixed += _mixed(text, _text_of(heatmap), j, r, n)

                async def me_inspect(r: int) -> None:
                    nonlocal mixed
                    text = f"s0r{r} " + "ab" * (r + 2)
                    shown_s, drawn_s, _, shown = await browser_inspect(pg, text, f"s0r{r} ")
                    seen["browser"].append(shown_s)
                    seen["drawn"].append(drawn_s)
                    mixed += _mixed(text, shown, 0, r, n)

                cpu0 = cpu_seconds(port)
                for r in range(rounds):
                    await asyncio.gather(me_inspect(r), *(other_inspect(j + 1, s, r) for j, s in enumerate(others)))
                cpu = _workshop_cpu(cpu0, cpu_seconds(port), n, rounds)
                errors = await pg.locator('[data-testid="stException"]').count() + sum(len(s.exceptions) for s in others)
                emit("workshop_text_to_redraw_s", round(statistics.median(seen["browser"]), 3), "s", sessions=n,
                     browsers=1, rounds=rounds, p95=round(q(seen["browser"], 0.95), 3),
                     max=round(max(seen["browser"]), 3), target="p95 <= 2.5 s",
                     drawn_p50=round(statistics.median(seen["drawn"]), 3), drawn_p95=round(q(seen["drawn"], 0.95), 3),
                     others_p50=round(statistics.median(seen["others"]), 3), others_p95=round(q(seen["others"], 0.95), 3),
                     **cpu, exceptions=errors, other_sessions_data_seen=mixed)
                emit("sessions_server_rss_mb", server_rss_mb(port), "MB", when="workshop, after Attention")

                seen = {"browser": [], "drawn": [], "others": []}
                wrong = 0
                await asyncio.gather(open_generate(pg, url), *(s.open("generate") for s in others))
                await asyncio.sleep(1)

                async def other_next(s: ProtocolSession, k: int) -> None:
                    nonlocal wrong
                    seen["others"].append(await s.press("Next token"))
                    chips = sum(t.count('class="lm-gen"') for t in s.texts)
                    wrong += int(chips != k)

                async def me_next(k: int) -> None:
                    shown_s, drawn_s, _ = await browser_next_token(pg, k)
                    seen["browser"].append(shown_s)
                    seen["drawn"].append(drawn_s)

                cpu0 = cpu_seconds(port)
                for r in range(rounds):
                    await asyncio.gather(me_next(r + 1), *(other_next(s, r + 1) for s in others))
                cpu = _workshop_cpu(cpu0, cpu_seconds(port), n, rounds)
                errors = await pg.locator('[data-testid="stException"]').count() + sum(len(s.exceptions) for s in others)
                emit("workshop_next_token_s", round(statistics.median(seen["browser"]), 3), "s", sessions=n,
                     browsers=1, rounds=rounds, p95=round(q(seen["browser"], 0.95), 3),
                     max=round(max(seen["browser"]), 3), target="p95 <= 2.5 s",
                     drawn_p50=round(statistics.median(seen["drawn"]), 3), drawn_p95=round(q(seen["drawn"], 0.95), 3),
                     others_p50=round(statistics.median(seen["others"]), 3), others_p95=round(q(seen["others"], 0.95), 3),
                     **cpu, exceptions=errors, wrong_token_counts=wrong)
                emit("sessions_server_rss_mb", server_rss_mb(port), "MB", when="workshop, end")
                for s in others:
                    await s.close()
                await browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="watch,buttons,sessions,workshop")
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workshop-rounds", type=int, default=20,
                    help="rounds of the workshop part (one browser: more rounds for its p95)")
    ap.add_argument("--server-threads", type=int, default=0,
                    help="LM_LENS_SERVER_THREADS for the sessions part (0: the app's default)")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        emit("skipped", True, reason=f"Chromium not installed at {CHROMIUM}")
        return 0
    parts = args.only.split(",")
    emit("machine", os.cpu_count(), "cores")
    if "sessions" in parts:
        asyncio.run(sessions(args))
    if "workshop" in parts:
        asyncio.run(workshop(args))
    if "buttons" in parts:
        buttons(args)
    if "watch" in parts:
        watch(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
