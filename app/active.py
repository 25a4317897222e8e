"""The active model: what the sidebar picker chose, resolved to a :class:`LoadedModel`.

The sidebar (drawn by ``main.py`` on every page) lists the shipped default model, the run
folders under ``runs/`` and the run being trained; pages call :func:`active_model`.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from . import resources, state
from .models import DEFAULT_CHOICE, LoadedModel, folder_stamp, list_run_folders, runs_root


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
            step = job.trainer.step_count
            state.set_live_pin(run_id, step)
        try:
            return resources.live_model(run_id, step, reg), None
        except Exception as e:  # a weights copy that does not fit: say so, keep the app alive
            return None, f"Could not copy the live run's weights ({e}); try again in a moment."
    return None, None


def active_model() -> LoadedModel:
    """The model every page shows (the default one when the choice cannot be loaded)."""
    choice = state.model_choice()
    if choice != DEFAULT_CHOICE:
        lm, problem = _resolve(choice)
        if lm is not None:
            return lm
        st.session_state["_model_problem"] = problem
    lm, _ = resources.default_model()
    return lm


def sidebar() -> None:
    """The model picker and a one-line description of the active model."""
    reg = resources.registry()
    live_jobs = [j for j in reg.jobs() if j.active]
    live_dirs = {str(j.run_dir.resolve()) for j in live_jobs}
    options = [DEFAULT_CHOICE] + [f"live:{j.run_id}" for j in live_jobs]
    labels = {DEFAULT_CHOICE: "Default model (shipped)"}
    for j in live_jobs:
        labels[f"live:{j.run_id}"] = f"● {j.run_id} — training ({j.status})"
    broken = []
    for info in list_run_folders():
        key = f"run:{info.path.resolve()}"
        if str(info.path.resolve()) in live_dirs:
            continue
        if info.ok:
            options.append(key)
            step = f" · step {info.step}" if info.step is not None else ""
            labels[key] = f"{info.name} ({info.status}{step})"
        else:
            broken.append(info)
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

    with st.sidebar:
        st.markdown("### :material/neurology: LM Lens")
        st.selectbox("Model", options, key=state.MODEL_CHOICE, format_func=lambda o: labels.get(o, o),
                     help=f"The shipped default model, runs saved under {runs_root()}, or the run being trained.")
        st.session_state.pop("_model_problem", None)
        lm = active_model()
        problem = st.session_state.pop("_model_problem", None)
        if problem:
            st.error(problem, icon=":material/error:")
        _, default_problem = resources.default_model()
        if lm.kind == "default" and default_problem:
            st.warning(f"The shipped default model could not be loaded ({default_problem}). An untrained "
                       f"model stands in. Rebuild it with `python -m lm_core train --preset default "
                       f"--out assets/default` (see README), or train one on the Train page.",
                       icon=":material/warning:")
        st.caption(lm.describe())
        if lm.kind == "live":
            job = reg.get(choice[5:])
            if job is not None:
                now = job.trainer.step_count
                st.caption(f"Weights of step {lm.step}; training is at step {now}.")
                if now != lm.step and st.button("Use latest weights", key="_live_refresh",
                                                icon=":material/refresh:"):
                    state.set_live_pin(job.run_id, now)
                    st.rerun()
        if broken:
            with st.expander(f"{len(broken)} run folder(s) could not be listed"):
                for info in broken:
                    st.caption(f"**{info.name}**: {info.error}")
