"""The active model: what the sidebar picker chose, resolved to a :class:`LoadedModel`.

The sidebar (drawn by ``main.py`` on every page) lists the shipped default model, the run
folders under ``runs/``, the run being trained and a pretrained model (a curated list that fits
a laptop, any hub name, or a local folder: its size, layout and cost shown before a download
that runs in the background and can be cancelled); a time-travel slider picks which weight
snapshot of a run, or which published training checkpoint of a hub model (Pythia), every page
shows. Pages call :func:`active_model`. After the page has run, :func:`export_controls` offers
its bundle.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import streamlit as st

from lm_core import catalog
from lm_core import hub as lm_hub

from . import resources, state
from .core import bundle, picker
from .core.bundle import ExportRecord
from .core.hubjobs import CANCELLED, DONE
from .widgets.hub import job_progress, take_finished
from .core.models import DEFAULT_CHOICE, LoadedModel, folder_stamp, list_run_folders, runs_root, snapshot_stamp, snapshot_steps

PRETRAINED_CHOICE = "pretrained"
PRETRAINED_LABEL = "Pretrained model…"  # short: a sidebar select box cuts long labels


# -- resolving a choice ---------------------------------------------------------------------------


def _resolve(choice: str) -> tuple[LoadedModel | None, str | None]:
    """(model, problem) for a picker choice; problem is a sentence when it could not load."""
    if choice.startswith("run:"):
        path = choice[4:]
        try:
            return resources.run_model(path, folder_stamp(Path(path))), None
        except ValueError as e:
            return None, (f"The run folder {Path(path).name!r} could not be loaded: {e} "
                          f"Pick another model in the sidebar; nothing else was changed.")
    if choice.startswith("live:"):
        run_id = choice[5:]
        reg = resources.registry()
        job = reg.get(run_id)
        if job is None:
            return None, f"The live run {run_id!r} is no longer in memory; pick it from the run list."
        step = state.live_pin(run_id)
        if step is None:
            step = job.step_count
            state.set_live_pin(run_id, step)
        try:
            return resources.live_model(run_id, step, reg), None
        except Exception as e:  # a weights copy that does not fit: say so, keep the app alive
            return None, f"Could not copy the live run's weights ({e}); try again in a moment."
    if choice == PRETRAINED_CHOICE:
        name = state.get(state.PRETRAINED_LOADED)
        if not name:
            return None, None  # nothing loaded yet: the sidebar says how
        try:
            return resources.pretrained_model(name), None
        except ValueError as e:
            return None, f"The pretrained model {name!r} could not be loaded: {e}"
    return None, None


def resolve(choice: str) -> tuple[LoadedModel, str | None]:
    """The model of a picker choice at its latest weights (the default model, and the reason,
    when the choice cannot be loaded)."""
    if choice != DEFAULT_CHOICE:
        lm, problem = _resolve(choice)
        if lm is not None:
            return lm, None
    else:
        problem = None
    lm, _ = resources.default_model()
    return lm, problem


def hub_name(lm: LoadedModel) -> str | None:
    """The hub name of a pretrained model (None for a local folder and every other kind)."""
    if lm.kind != "pretrained" or not lm.family.startswith("pretrained:"):
        return None
    name = lm.family[len("pretrained:"):]
    return None if picker.is_folder(name) else name


def hub_revisions(lm: LoadedModel) -> list[tuple[str, int]]:
    """A hub model's training-step checkpoints ``(revision, step)`` (Pythia's ``step0`` …), in step
    order; none for other models. A curated model that publishes none is not asked about."""
    name = hub_name(lm)
    if name is None:
        return []
    entry = catalog.catalog_entry(name)
    if entry is not None and not entry.step_revisions:
        return []
    return list(resources.step_revisions(name, lm_hub.endpoint()))


def _at_revision(lm: LoadedModel, step: int) -> tuple[LoadedModel, str | None]:
    """A hub model at its checkpoint of ``step``: loaded from the cache, or downloaded in the
    background first (the sidebar shows the progress; the final weights meanwhile)."""
    revs = hub_revisions(lm)
    if not revs or step == revs[-1][1]:
        return lm, None  # the last checkpoint is what the repo's main branch holds
    rev = next((r for r, s in revs if s == step), None)
    if rev is None:
        return lm, None
    name = hub_name(lm)
    if picker.cached(name, rev):
        try:
            return resources.pretrained_model(name, rev), None
        except ValueError as e:
            return lm, f"The checkpoint of step {step:,} could not be loaded ({e}); showing the final weights."
    rec = state.get(state.HUB_JOB)
    if not rec or tuple(rec["key"]) != ("download", name, rev):
        job = resources.hub_jobs().download(name, rev, state.session_token())
        state.put(state.HUB_JOB, {"key": job.key, "then": "step"})
    return lm, (f"Downloading the checkpoint of step {step:,} (progress above); pages show the final weights "
                f"until it has arrived.")


def at_step(lm: LoadedModel, step: int | None) -> tuple[LoadedModel, str | None]:
    """``lm`` with the weights of its snapshot at ``step`` (itself when ``step`` is None, its
    own step, or not a snapshot of its run); a hub model with training checkpoints at that one."""
    if step is not None and lm.kind == "pretrained":
        return _at_revision(lm, int(step))
    if step is None or lm.path is None or step == lm.step:
        return lm, None
    steps = snapshot_steps(lm.path)
    if step not in steps:
        return lm, None
    try:
        path = str(Path(lm.path).resolve())
        return resources.snapshot_model(path, int(step), snapshot_stamp(lm.path, step), len(steps), lm), None
    except ValueError as e:
        return lm, f"The snapshot of step {step} could not be loaded ({e}); showing the latest weights."


def step_options(lm: LoadedModel) -> list[int]:
    """Steps one can travel to: the run's weight snapshots and its latest weights, or a hub
    model's published training checkpoints."""
    if lm.kind == "pretrained":
        return [s for _, s in hub_revisions(lm)]
    steps = set(snapshot_steps(lm.path)) if lm.path is not None else set()
    if lm.step is not None:
        steps = {s for s in steps if s <= lm.step} | {lm.step}
    return sorted(steps)


def base_model() -> LoadedModel:
    """The sidebar's model at its latest weights (what time travel starts from)."""
    lm, problem = resolve(state.model_choice())
    if problem:
        st.session_state[state.MODEL_PROBLEM] = problem
    return lm


def active_model() -> LoadedModel:
    """The model every page shows: the sidebar's choice, at the step of the time-travel slider."""
    lm = base_model()
    step = state.get(state.TIME_STEP)
    if step is not None:
        lm, problem = at_step(lm, int(step))
        if problem:
            st.session_state[state.MODEL_PROBLEM] = problem
    return lm


# -- the picker's options (also the Compare page's) ------------------------------------------------


def source_options() -> tuple[list[str], dict[str, str], list]:
    """Choices (``"default"``, ``"live:<id>"``, ``"run:<path>"``, ``"pretrained"``), their labels
    and the run folders that could not be listed."""
    reg = resources.registry()
    live_jobs = [j for j in reg.jobs() if j.active]
    live_dirs = {str(j.run_dir.resolve()) for j in live_jobs}
    options = [DEFAULT_CHOICE] + [f"live:{j.run_id}" for j in live_jobs]
    labels = {DEFAULT_CHOICE: "Default model (shipped)", PRETRAINED_CHOICE: PRETRAINED_LABEL}
    for j in live_jobs:
        labels[f"live:{j.run_id}"] = "● " + run_label(j.run_id, f"training, {j.status}")
    broken = []
    for info in list_run_folders():
        key = f"run:{info.path.resolve()}"
        if str(info.path.resolve()) in live_dirs:
            continue
        if info.ok:
            options.append(key)
            labels[key] = run_label(info.name, info.status, info.step)
        else:
            broken.append(info)
    options.append(PRETRAINED_CHOICE)
    return options, labels, broken


_STAMP = re.compile(r"^(?P<name>.*?)-?(?P<date>\d{8})-(?P<time>\d{6})$")


def run_label(name: str, status: str, step: int | None = None) -> str:
    """A run's label, short enough for the sidebar, with what tells two runs apart first: the
    time it was started (``tiny-shakespeare-20261201-041500`` -> ``12-01 04:15:00 · tiny-shakespeare``)."""
    m = _STAMP.match(name)
    if m:
        d, t = m["date"], m["time"]
        name = f"{d[4:6]}-{d[6:8]} {t[:2]}:{t[2:4]}:{t[4:6]} · {m['name'] or 'run'}"
    return f"{name} · {status}" + (f" @ {step:,}" if step is not None else "")


def _forget_step() -> None:
    """Another model was picked: time travel starts again from its latest weights."""
    st.session_state[state.TIME_STEP] = None


# -- the sidebar ------------------------------------------------------------------------------------


def _pick_changed() -> None:
    """A curated model was picked: it goes into the name box (which "Load" reads)."""
    pick = st.session_state.get(state.PRETRAINED_PICK)
    if pick and pick != picker.OTHER:
        st.session_state[state.PRETRAINED_NAME] = pick


def _pick_label(name: str) -> str:
    if name == picker.OTHER:
        return "Another hub name or local folder…"
    return catalog.catalog_entry(name).title


def _model_card(name: str) -> bool:
    """Size, layout and an estimate of the cost of ``name``, before anything is downloaded.
    Returns whether the facts could be read."""
    entry = catalog.catalog_entry(name)
    if entry is not None:
        st.caption(entry.blurb)
    folder = picker.is_folder(name)
    facts, problem = resources.model_facts(name, lm_hub.endpoint())
    if facts is None:
        st.caption(f"Size unknown: {problem}")
        return False
    c = picker.card(facts, resources.flops_per_s(), folder=folder)
    st.caption(c.size)
    st.caption(c.layout)
    st.caption(c.cost)
    if c.slow:
        st.warning("Slow on a laptop CPU: loading takes minutes and each page seconds.", icon=":material/hourglass:")
    return True


def _load_now(name: str) -> None:
    try:
        resources.pretrained_model(name)
    except ValueError as e:
        state.put(state.PRETRAINED_ERROR, str(e))
    else:
        state.put(state.PRETRAINED_LOADED, name)
        state.put(state.PRETRAINED_ERROR, None)
        _forget_step()


def _needs_transformers() -> str | None:
    if importlib.util.find_spec("transformers") is None:
        from lm_core.pretrained import TRANSFORMERS_PIN

        return (f"loading from the Hugging Face hub needs the transformers package: pip install {TRANSFORMERS_PIN} "
                f"(a local folder works without it)")
    return None


def _start_load(name: str) -> None:
    """"Load": at once from a folder or the cache, else start the download in the background."""
    if not name:
        state.put(state.PRETRAINED_ERROR, "type a hub name such as 'gpt2' or a folder")
        return
    if picker.is_folder(name) or picker.cached(name) or name.startswith(("/", "./", "../", "~")):
        _load_now(name)
        return
    why = _needs_transformers()
    if why is None:
        off = resources.hub_unavailable(lm_hub.endpoint())
        if off is not None:
            why = f"{name!r} is not in the local cache and {off}, so it cannot be downloaded now"
    if why is not None:
        state.put(state.PRETRAINED_ERROR, why)
        return
    job = resources.hub_jobs().download(name, None, state.session_token())
    state.put(state.HUB_JOB, {"key": job.key, "then": "load", "name": name})
    state.put(state.PRETRAINED_ERROR, None)


def _after_cancel() -> None:
    """This tab cancelled its download: a checkpoint download goes back to the final weights."""
    st.session_state[state.PRETRAINED_NOTE] = "Download cancelled."
    st.session_state[state.TIME_STEP] = None


def _finish_hub_job() -> None:
    """This session's download has ended: open what it was for, or say why not (at the start of
    the sidebar, before the widgets it changes are drawn)."""
    rec, view = take_finished(state.HUB_JOB)
    if rec is None or view is None:
        return
    if view.status == DONE:
        if rec.get("then") == "load":
            state.set_model_choice(PRETRAINED_CHOICE)
            _load_now(rec["name"])
        return
    st.session_state[state.TIME_STEP] = None  # a checkpoint that did not arrive: back to the final weights
    if view.status == CANCELLED:
        state.put(state.PRETRAINED_NOTE, "Download cancelled.")
    else:
        state.put(state.PRETRAINED_ERROR, view.error)


def _pretrained_panel() -> None:
    """The pretrained-model picker, shown while "Pretrained…" is picked: a curated list or any
    name, what it costs before the download, the download's progress, and Load."""
    st.selectbox("Pretrained model", [e.name for e in catalog.CATALOG] + [picker.OTHER], key=state.PRETRAINED_PICK,
                 format_func=_pick_label, on_change=_pick_changed,
                 help="Models that fit a laptop CPU; pick the last entry to type any hub name or a local folder.")
    st.text_input("Hugging Face name or local folder", key=state.PRETRAINED_NAME,
                  help="A hub name such as 'EleutherAI/pythia-70m' (downloads once into the Hugging Face cache, needs "
                       "`transformers`), or a folder with config.json, model.safetensors and tokenizer.json "
                       "(e.g. written by save_pretrained; no download).")
    name = (state.get(state.PRETRAINED_NAME) or "").strip()
    if name:
        _model_card(name)
    here = not name or picker.is_folder(name) or picker.cached(name)
    if name and not picker.is_folder(name):
        if here:
            st.caption(":material/check_circle: In the local cache: opens without the network.")
        else:
            off = resources.hub_unavailable(lm_hub.endpoint())
            if off is not None:
                st.warning(f"{name} is not in the local cache and {off}, so it cannot be downloaded now.",
                           icon=":material/cloud_off:")
    rec = state.get(state.HUB_JOB)
    downloading = bool(rec) and rec.get("then") == "load" and job_progress(state.HUB_JOB, "pretrained_btn_cancel",
                                                                          on_cancel=_after_cancel)
    if not downloading:
        if st.button("Load" if here else "Download and load", key="pretrained_btn_load",
                     icon=":material/download:"):
            _start_load(name)
            if state.get(state.HUB_JOB):
                st.rerun()  # draw the progress bar
    note = st.session_state.pop(state.PRETRAINED_NOTE, None)
    if note:
        st.info(note, icon=":material/info:")
    loaded = state.get(state.PRETRAINED_LOADED)
    if loaded:
        st.caption(f"Showing **{loaded}**.")
    problem = state.get(state.PRETRAINED_ERROR)
    if problem:
        st.error(f"Could not load the pretrained model: {problem}", icon=":material/error:")
    elif not loaded and not downloading:
        st.info("Pick a model and press **Load**; until then the default model is shown.", icon=":material/info:")


def _time_travel(lm: LoadedModel) -> None:
    """The slider over the run's weight snapshots, or a hub model's training checkpoints."""
    steps = step_options(lm)
    if len(steps) < 2:
        st.session_state[state.TIME_STEP] = None
        return
    if st.session_state.get(state.TIME_STEP) not in steps:
        st.session_state[state.TIME_STEP] = steps[-1]
    hub = lm.kind == "pretrained"
    st.select_slider("Checkpoint at step" if hub else "Weights at step", options=steps, key=state.TIME_STEP,
                     format_func=lambda s: f"{s:,}" + (" (latest)" if s == steps[-1] else ""),
                     help=("Time travel through the checkpoints its authors published during training (each is "
                           "downloaded when first picked, then cached). " if hub else "Time travel: ")
                          + "every page (Attention, Generate, Embeddings, Logit lens, Ablation, …) "
                          "shows the model as it was at this training step, on the same text and seed.")


def sidebar():
    """The model picker, time travel and a description of the active model. Returns a sidebar
    container that :func:`export_controls` fills once the page has drawn its figures."""
    reg = resources.registry()
    options, labels, broken = source_options()
    choice = state.model_choice()
    if choice not in options:
        # a live run that has ended is now a run folder: follow it there
        if choice.startswith("live:"):
            job = reg.get(choice[5:])
            follow = f"run:{job.run_dir.resolve()}" if job is not None else None
            choice = follow if follow in options else DEFAULT_CHOICE
        else:
            choice = DEFAULT_CHOICE
        state.set_model_choice(choice)

    _finish_hub_job()
    choice = state.model_choice()
    with st.sidebar:
        st.markdown("### :material/neurology: LM Lens")
        st.selectbox("Model", options, key=state.MODEL_CHOICE, format_func=lambda o: labels.get(o, o),
                      on_change=_forget_step,
                      help=f"The shipped default model, runs saved under {runs_root()}, the run being trained, "
                           f"or pretrained GPT-2 weights.")
        if choice == PRETRAINED_CHOICE:
            _pretrained_panel()
        st.session_state.pop(state.MODEL_PROBLEM, None)
        base = base_model()
        problem = st.session_state.pop(state.MODEL_PROBLEM, None)
        st.session_state[state.MODEL_FALLBACK] = problem  # the page says it too (fallback_notice)
        if problem:
            st.error(problem, icon=":material/error:")
        _, default_problem = resources.default_model()
        if base.kind == "default" and default_problem:
            st.warning(f"The shipped default model could not be loaded ({default_problem}). An untrained "
                       f"model stands in. Rebuild it with `python -m lm_core train --preset default "
                       f"--out assets/default` (see README), or train one on the Train page.",
                       icon=":material/warning:")
        st.caption(base.describe())
        if base.kind == "live":
            job = reg.get(choice[5:])
            if job is not None:
                now = job.step_count
                st.caption(f"Weights of step {base.step}; training is at step {now}.")
                if now != base.step and st.button("Use latest weights", key=state.LIVE_REFRESH,
                                                  icon=":material/refresh:"):
                    state.set_live_pin(job.run_id, now)
                    st.session_state[state.TIME_STEP] = None
                    st.rerun()
        _time_travel(base)
        lm = active_model()  # a snapshot that fails to load is said here, once
        if lm.kind == "pretrained" and lm.step is not None:
            st.caption(f"Checkpoint of training step **{lm.step:,}**.")
        problem = st.session_state.pop(state.MODEL_PROBLEM, None)
        rec = state.get(state.HUB_JOB)
        if rec and (rec.get("then") == "step" or choice != PRETRAINED_CHOICE):
            job_progress(state.HUB_JOB, "step_btn_cancel", on_cancel=_after_cancel)
        if problem:
            st.warning(problem, icon=":material/warning:")
        if broken:
            with st.expander(f"{len(broken)} run folder(s) could not be listed"):
                for info in broken:
                    st.caption(f"**{info.name}**: {info.error}")
        st.divider()
        slot = st.container()
    return slot


def fallback_notice() -> None:
    """At the top of the page: the chosen model could not be loaded, so the page shows the
    default model (never silently)."""
    problem = st.session_state.get(state.MODEL_FALLBACK)
    if problem:
        st.warning(f"This page shows the shipped default model, not the one chosen in the sidebar: {problem}",
                   icon=":material/warning:")


def export_controls(slot, page: str) -> None:
    """"Export bundle" for the page that just ran: a zip of its figures (HTML and PNG), the
    model's config and history, and the activation cache of the page's text."""
    records = state.figures()
    lm = active_model()
    st.session_state.pop(state.MODEL_PROBLEM, None)  # already shown by the sidebar
    where = f"{page} · {lm.key}"  # a bundle belongs to one page and one model's weights
    with slot:
        clicked = st.button("Export bundle", key="export_btn", icon=":material/archive:",
                            disabled=not records,
                            help="A zip with this page's figures (HTML and PNG), the model's config and training "
                                 "history, and the activations of the current text (safetensors), with a README.")
        if clicked:
            with st.spinner("Building the bundle (rendering the figures as PNG)…"):
                try:
                    built = bundle.build(lm, page, records, state.export_text(), subject=state.export_subject())
                except Exception as e:  # an export must never take the page down
                    st.error(f"Could not build the bundle ({type(e).__name__}: {e}). The page is unchanged; "
                             f"try again, or download the figures one by one.", icon=":material/error:")
                    return
            state.put(state.EXPORT, ExportRecord(page=where, file_name=built.file_name, data=built.data,
                                                       notes=built.notes))
        rec = state.get(state.EXPORT)
        if rec is None or rec.page != where:
            return
        for note in rec.notes:
            st.warning(note, icon=":material/warning:")
        st.download_button(f"Download bundle ({len(rec.data) / 2**20:.1f} MB)", data=rec.data,
                           file_name=rec.file_name, mime="application/zip", key="export_download",
                           on_click="ignore", icon=":material/download:", type="primary")
