"""The explorer at real size: a 124M GPT-2-shaped and a 135M SmolLM2-shaped model in Chromium.

    .venv/bin/python bench/bench_realsize.py [--repeats 3] [--models gpt2,smollm2] [--models-dir DIR]

Prints one JSON object per line, each with "metric". Random weights (the timing does not depend
on what the weights learned), written as LM Lens run folders that the app opens as its default
model (``LM_LENS_DEFAULT_MODEL``):

* ``gpt2-124m``: GPT-2 small's layout (12 layers × 12 heads, width 768, learned positions,
  LayerNorm, GELU; vocabulary 50,257);
* ``smollm2-135m``: SmolLM2-135M's layout (Llama-style: 30 layers × 9 query heads sharing 3
  key/value heads, width 576, RMSNorm, rotary positions, SwiGLU 1536; vocabulary 49,152).

The tokenizer of each is a byte-level BPE trained with the ``tokenizers`` library on Tiny
Shakespeare plus a synthetic text of random letter strings (Shakespeare alone stops at about
21k tokens), to exactly the model's vocabulary size: every id the model can predict is a real
token with a piece to show. Folders are kept in ``--models-dir`` (built once, ~30 s each).

Metrics, per model (wall clock as the user sees it, Chromium at 1400 × 1000, one session):

* ``attention_text_to_heatmap_s``: a new 64-token text committed in ``Text to inspect``
  (Ctrl+Enter) until the large heatmap shows its tokens (median of ``--repeats``; target ≤ 2 s);
* ``attention_text_to_all_figures_s``: the same press until every figure of the page (large
  head, head-score overview, the layer's all-heads grid, one query in every head) is drawn and
  the script has finished (target ≤ 2 s);
* ``attention_query_tab_s``: the "One query token, every head" tab clicked until its chart of
  every head (144 or 270 rows) is drawn (only the open tab is drawn since this bench was written);
* ``next_token_s``: ``Next token`` on Generate with a 64-token prompt, click until the new token
  is on the page (median; target ≤ 1 s);
* ``token_search_s``: on Generate, a token typed in ``Find any token`` until its probability
  and rank show (median of three queries);
* ``sweep_first_progress_s``, ``sweep_heads_per_s``, ``sweep_cancel_s``: on Ablation, the sweep
  over every head started (until its progress bar shows), its pace over 5 s, and Cancel clicked
  until the page says it stopped;
* ``phase_*``: where the time goes, measured in this process on the same model and text: the
  forward with capture and numpy conversion (``inspect``), each figure's construction, and its
  serialisation as Streamlit sends it (``plotly.io.to_json``), with the JSON size.

``bench/results/bench_realsize_2core_cpu.jsonl`` holds two rounds on this 2-core machine, each
model timed with the app before this work (``--only attention,next``, from a checkout of main)
and right after it: compare the pair within a round, and read each round's ``machine`` line
(the machine is shared; a load average far above 2 inflates every figure).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
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
    settle,
    streamlit_server,
)

VOCAB = {"gpt2-124m": 50257, "smollm2-135m": 49152}
N_HEADS = {"gpt2-124m": 144, "smollm2-135m": 270}
SHAKESPEARE = [Path("/work/shared/data/tinyshakespeare.txt"), ROOT / "assets" / "data" / "tinyshakespeare.txt.xz"]
N_TOKENS = 64


def emit(metric: str, value, unit: str = "", **extra) -> None:
    print(json.dumps({"metric": metric, "value": value, "unit": unit, **extra}), flush=True)


def model_configs() -> dict:
    import lm_core

    return {
        "gpt2-124m": lm_core.ModelConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768,
                                         gelu_approximate="tanh"),
        "smollm2-135m": lm_core.ModelConfig(vocab_size=49152, block_size=2048, n_layer=30, n_head=9, n_kv_head=3,
                                            n_embd=576, d_mlp=1536, norm="rmsnorm", pos="rotary", mlp="swiglu",
                                            rope_base=100000.0, bias=False, layer_norm_eps=1e-5),
    }


def shakespeare() -> str:
    for p in SHAKESPEARE:
        if p.exists():
            if p.suffix == ".xz":
                import lzma

                return lzma.decompress(p.read_bytes()).decode("utf-8")
            return p.read_text(encoding="utf-8")
    raise FileNotFoundError(f"no Tiny Shakespeare at {SHAKESPEARE}")


def write_model_folder(folder: Path, cfg) -> Path:
    """A run folder (config.json, model.safetensors, tokenizer.json, history.csv) with random
    weights and a BPE tokenizer of exactly ``cfg.vocab_size`` tokens; kept when already there."""
    import torch

    import lm_core
    from lm_core import runs

    if (folder / runs.MODEL_FILE).exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    filler = " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))
                      for _ in range(150_000))
    tok = lm_core.BPETokenizer.train(shakespeare() + "\n" + filler, vocab_size=cfg.vocab_size)
    if tok.vocab_size != cfg.vocab_size:
        raise RuntimeError(f"the tokenizer reached {tok.vocab_size} tokens, not {cfg.vocab_size}")
    torch.manual_seed(0)
    model = lm_core.GPT(cfg).eval()
    tok.save(folder / runs.TOKENIZER_FILE)
    runs.save_safetensors(folder / runs.MODEL_FILE, model.state_dict_for_save(), {"step": "0"})
    (folder / runs.HISTORY_FILE).write_text("step,train_loss\n", encoding="utf-8")
    rc = runs.RunConfig(model=cfg, train=lm_core.TrainConfig(), tokenizer_kind="bpe", corpus=None,
                        status={"state": "finished", "step": 0, "checkpoint_step": 0})
    runs.atomic_write_json(folder / runs.CONFIG_FILE, rc.to_dict())
    return folder


def texts(folder: Path, n: int) -> list[str]:
    """``n`` different Shakespeare passages of exactly ``N_TOKENS`` tokens (after the first one)."""
    import lm_core

    tok = lm_core.load_tokenizer(folder / "tokenizer.json")
    lines = shakespeare().split("\n\n")
    out = []
    for i in range(n):
        ids = tok.encode("\n\n".join(lines[40 + 7 * i: 52 + 7 * i]))[:N_TOKENS]
        out.append(tok.decode(ids))
    return out


def phases(folder: Path, text: str, name: str) -> None:
    """Where the server's time goes, in this process: forward + capture, figures, JSON."""
    import plotly.io as pio
    import torch

    from app import figures
    from app.core.inspection import inspect
    from app.core.text import encode_text
    from lm_core import runs

    torch.set_num_threads(1)  # as the app serves (lm_core.runtime.set_serving_threads)
    run = runs.load_run(folder)
    model, tok = run.model, run.tokenizer
    enc = encode_text(tok, text, 256)
    inspect(model, enc.ids)  # warm-up
    t0 = time.perf_counter()
    ins = inspect(model, enc.ids)
    emit("phase_inspect_s", round(time.perf_counter() - t0, 3), "s", model=name, tokens=len(enc.ids),
         note="forward with capture, head scores, numpy")
    cfg = model.config
    L, H = cfg.n_layer, cfg.n_head
    p = ins["patterns"]
    builders = {
        "heatmap": lambda: figures.attention_heatmap(p[0, 0], enc.labels),
        "layer_grid": lambda: figures.attention_grid(p[0], enc.labels, 0),
        "overview": lambda: figures.head_score_overview(ins["score/induction"], "induction"),
        "query_all_heads": lambda: figures.query_attention(p[:, :, -1, :], enc.labels, enc.labels[-1], L, H),
    }
    if hasattr(figures, "attention_all_heads"):
        builders["all_heads"] = lambda: figures.attention_all_heads(p, enc.labels)
    for fig_name, build in builders.items():
        build()
        t0 = time.perf_counter()
        fig = build()
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        js = pio.to_json(fig, validate=False)
        emit("phase_figure_s", round(t_build, 4), "s", model=name, figure=fig_name,
             json_s=round(time.perf_counter() - t0, 4), json_kb=round(len(js) / 1024))


def wait_drawn(page, labels_before: str | None, timeout_s: float = 60.0) -> tuple[float, float]:
    """Seconds until the first chart's y labels differ from ``labels_before`` (the large heatmap
    redrawn), and until the script has finished with every chart drawn and none stale."""
    t0 = time.perf_counter()
    page.wait_for_function(
        "(b) => { const p = document.querySelector('.js-plotly-plot'); "
        "return p && p._fullData && p._fullData.length && JSON.stringify(p.data[0].y) !== b; }",
        arg=labels_before, timeout=timeout_s * 1000, polling=30)
    first = time.perf_counter() - t0
    page.wait_for_function(
        "() => { const s = document.querySelector('[data-testid=\"stStatusWidget\"]'); "
        "if (s && s.innerText.includes('Running')) return false; "
        "if (document.querySelector('[data-stale=\"true\"] .js-plotly-plot')) return false; "
        "if (document.querySelector('[data-testid=\"stSpinner\"]')) return false; "
        "const ps = [...document.querySelectorAll('.js-plotly-plot')]; "
        "return ps.length > 0 && ps.every(p => p._fullLayout && p.querySelector('.main-svg')); }",
        timeout=timeout_s * 1000, polling=30)
    return first, time.perf_counter() - t0


def first_labels(page) -> str | None:
    return page.evaluate("() => { const p = document.querySelector('.js-plotly-plot'); "
                         "return p && p.data ? JSON.stringify(p.data[0].y) : null; }")


def measure(name: str, folder: Path, repeats: int, tmp: Path, only: set[str]) -> None:
    passages = texts(folder, repeats + 2)
    phases(folder, passages[0], name)
    env = {"LM_LENS_DEFAULT_MODEL": str(folder), "LM_LENS_RUNS_DIR": str(tmp / "runs"),
           "LM_LENS_CACHE": str(tmp / "cache")}
    t0 = time.perf_counter()
    with streamlit_server(env, port=free_port()) as url:
        emit("server_start_s", round(time.perf_counter() - t0, 3), "s", model=name)
        with browser_page() as page:
            t0 = time.perf_counter()
            open_page(page, url)
            emit("first_page_s", round(time.perf_counter() - t0, 3), "s", model=name, page="Attention",
                 note="cold: loads the model and inspects the default text")
            before = first_labels(page)
            commit_text_area(page, "Text to inspect", passages[0])  # the first 64-token text: warm-up
            wait_drawn(page, before)
            settle(page)
            heat, every = [], []
            for text in passages[1: repeats + 1]:
                before = first_labels(page)
                commit_text_area(page, "Text to inspect", text)
                a, b = wait_drawn(page, before)
                heat.append(a)
                every.append(b)
                settle(page, quiet_ms=300)
            n_charts = page.locator(".js-plotly-plot").count()
            n_heads = N_HEADS[name]
            emit("attention_text_to_heatmap_s", round(statistics.median(heat), 3), "s", model=name,
                 runs=[round(t, 3) for t in heat], tokens=N_TOKENS, target="<= 2 s")
            emit("attention_text_to_all_figures_s", round(statistics.median(every), 3), "s", model=name,
                 runs=[round(t, 3) for t in every], charts=n_charts, tokens=N_TOKENS, target="<= 2 s")

            tab = page.get_by_role("tab", name="One query token, every head")
            if "search" in only and tab.count():  # this version draws the query chart when its tab opens
                n = page.locator(".js-plotly-plot").count()
                t0 = time.perf_counter()
                tab.click()
                page.wait_for_function(f"() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= {n}"
                                       " && [...document.querySelectorAll('.js-plotly-plot')].some(p => p.data && "
                                       "p.data[0].y && p.data[0].y.length === " + str(n_heads) + ")",
                                       timeout=60_000, polling=30)
                emit("attention_query_tab_s", round(time.perf_counter() - t0, 3), "s", model=name, heads=n_heads,
                     note="the 'One query token, every head' tab clicked until its chart of every head is drawn")
                settle(page)

            open_page(page, f"{url}/generate", charts=False)
            box = page.get_by_role("textbox", name="Prompt", exact=True)
            box.fill(passages[-1])
            box.press("Control+Enter")
            settle(page)
            times = []
            for n in range(1, repeats + 2):
                t0 = time.perf_counter()
                page.get_by_role("button", name="Next token", exact=True).click()
                page.wait_for_function(f"() => document.querySelectorAll('.lm-gen').length === {n}",
                                       timeout=60_000, polling=30)
                times.append(time.perf_counter() - t0)
                settle(page, quiet_ms=300)
            emit("next_token_s", round(statistics.median(times[1:]), 3), "s", model=name,
                 runs=[round(t, 3) for t in times], first_s=round(times[0], 3), tokens=N_TOKENS,
                 note="median after the first press", target="<= 1 s")

            if "search" not in only:
                return
            # a whole vocabulary: type a token in the search box, until its probability and rank show
            times = []
            for query in ("the", "king", "#4242"):
                box = page.get_by_role("textbox", name="Find any token", exact=True)
                t0 = time.perf_counter()
                box.fill(query)
                box.press("Enter")
                page.get_by_text(re.compile(rf"matching '{re.escape(query)}'")).first.wait_for(timeout=60_000)
                times.append(time.perf_counter() - t0)
                settle(page, quiet_ms=300)
            emit("token_search_s", round(statistics.median(times), 3), "s", model=name,
                 runs=[round(t, 3) for t in times], vocab=VOCAB[name],
                 note="Generate: a typed token's probability and rank at the current step (first: the full "
                      "distribution is computed, then cached)")

            if "sweep" not in only:
                return
            # a sweep over every head: progress shows, it advances, Cancel stops it
            open_page(page, f"{url}/ablation")
            t0 = time.perf_counter()
            page.get_by_role("button", name=re.compile(r"^Compute every head")).click()
            page.locator('[data-testid="stProgress"]').first.wait_for(timeout=60_000)
            first = time.perf_counter() - t0
            time.sleep(5.0)
            progress = page.locator('[data-testid="stProgress"]').first.inner_text()
            t0 = time.perf_counter()
            page.get_by_role("button", name="Cancel", exact=True).click()
            page.get_by_text(re.compile(r"^Cancelled after")).first.wait_for(timeout=60_000)
            cancel = time.perf_counter() - t0
            done = int(re.search(r"(\d+) of (\d+)", progress).group(1))
            total = int(re.search(r"(\d+) of (\d+)", progress).group(2))
            emit("sweep_first_progress_s", round(first, 3), "s", model=name, heads=total,
                 note="Ablation: 'Compute every head's effect' clicked until the progress bar shows")
            emit("sweep_heads_per_s", round(done / (5.0 + first), 2), "heads/s", model=name, heads=total,
                 progress=progress.strip(), eta_whole_sweep_s=round(total / max(done / (5.0 + first), 1e-9), 1))
            emit("sweep_cancel_s", round(cancel, 3), "s", model=name, note="Cancel clicked until the page says so")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="gpt2-124m,smollm2-135m")
    ap.add_argument("--only", default="attention,next,search,sweep",
                    help="what to time after Attention and Next token: search, sweep (drop them to time an "
                         "older version of the app that has neither)")
    ap.add_argument("--models-dir", default=None, help="where the random-weight folders are kept (default: a "
                                                       "temporary folder)")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        emit("skipped", True, reason=f"Chromium not installed at {CHROMIUM}")
        return 0
    import os

    emit("machine", os.cpu_count(), "cores", load_average=[round(x, 2) for x in os.getloadavg()],
         note="the machine is shared: a load above the core count slows every figure")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models_dir = Path(args.models_dir) if args.models_dir else tmp / "models"
        cfgs = model_configs()
        for name in args.models.split(","):
            t0 = time.perf_counter()
            folder = write_model_folder(models_dir / name, cfgs[name])
            emit("model_folder_s", round(time.perf_counter() - t0, 3), "s", model=name, folder=str(folder))
            measure(name, folder, args.repeats, tmp, set(args.only.split(",")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
