"""Hub downloads as the sidebar and the Train page draw them: a progress bar that refreshes by
itself with a Cancel button, and the circuits of a real model over its training checkpoints."""

from __future__ import annotations

import streamlit as st

from lm_core import hub as lm_hub

from .. import resources, state
from ..core import hubjobs
from ..core.hubjobs import RUNNING

PROGRESS_S = 0.5   # how often a running download's bar refreshes


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:,.1f} MB"


def _cancel(state_key: str, on_cancel) -> None:
    """The Cancel button's callback (before the script runs: it may reset widget values)."""
    rec = state.get(state_key)
    if rec:
        resources.hub_jobs().leave(tuple(rec["key"]), state.session_token())
    st.session_state[state_key] = None
    if on_cancel is not None:
        on_cancel()


@st.fragment(run_every=PROGRESS_S)
def _progress(state_key: str, button_key: str, on_cancel=None) -> None:
    rec = state.get(state_key)
    job = resources.hub_jobs().get(tuple(rec["key"])) if rec else None
    if job is None or job.status != RUNNING:  # cancelled here, or finished: the full run takes it from here
        st.rerun(scope="app")
    v = job.view()
    got = f"{_mb(v.done_bytes)} of {_mb(v.total_bytes)}" if v.total_bytes else _mb(v.done_bytes)
    st.progress(v.fraction or 0.0, text=f"**{v.label}** · {v.stage} · {got}")
    st.button("Cancel", key=button_key, icon=":material/cancel:", on_click=_cancel, args=(state_key, on_cancel),
              help="Stops the download (for this browser tab; another tab waiting for the same model keeps it "
                   "going). Files already complete stay in the cache.")


def job_progress(state_key: str, button_key: str, on_cancel=None) -> bool:
    """Draw the progress of this session's job kept under ``state_key`` while it runs (True), and
    nothing otherwise (False). ``on_cancel`` runs when this session cancels it."""
    rec = state.get(state_key)
    job = resources.hub_jobs().get(tuple(rec["key"])) if rec else None
    if job is None or job.status != RUNNING:
        return False
    _progress(state_key, button_key, on_cancel)
    return True


def take_finished(state_key: str):
    """This session's job under ``state_key`` once it has ended: ``(record, JobView)``, and the
    record is cleared; ``(None, None)`` while it runs or when there is none."""
    rec = state.get(state_key)
    if not rec:
        return None, None
    job = resources.hub_jobs().get(tuple(rec["key"]))
    if job is None:
        st.session_state[state_key] = None
        return rec, None
    if job.status == RUNNING:
        return None, None
    st.session_state[state_key] = None
    return rec, job.view()


# -- circuits over a hub model's training checkpoints ----------------------------------------------


def checkpoints_panel(name: str, revisions: list[tuple[str, int]], key_prefix: str = "rev") -> None:
    """Pick some of ``name``'s training checkpoints (``(revision, step)``, step order), score every
    head at each (downloaded on demand, cached, cancellable) and draw the circuits forming."""
    from ..core import picker
    from .history import circuits_view

    st.markdown(f"#### :material/history: {name} over its training checkpoints")
    steps = dict(revisions)
    names = [r for r, _ in revisions]
    if state.get(state.REV_STEPS) is None or not set(state.get(state.REV_STEPS)) <= set(names):
        st.session_state[state.REV_STEPS] = hubjobs.spread(names, [s for _, s in revisions])
    chosen = st.multiselect("Checkpoints", names, key=state.REV_STEPS, format_func=lambda r: f"step {steps[r]:,}",
                            help="Each checkpoint is a full download of the model (cached: the second time is "
                                 "free). A few spread over training show the circuits forming.")
    chosen = sorted(chosen, key=lambda r: steps[r])
    jobs = resources.hub_jobs()
    missing = [r for r in chosen if jobs.scores.get(name, r) is None]
    uncached = [r for r in missing if not picker.cached(name, r)]
    rec, view = take_finished(state.REV_JOB)
    if view is not None and view.status == hubjobs.FAILED:
        st.error(f"Scoring the checkpoints stopped: {view.error}", icon=":material/error:")
    running = job_progress(state.REV_JOB, f"{key_prefix}_btn_cancel")
    if not running and missing:
        facts, _ = resources.model_facts(name, lm_hub.endpoint())
        each = f" (about {facts.download_bytes / 2**20:,.0f} MB each)" if facts is not None and uncached else ""
        st.caption(f"{len(missing)} checkpoint(s) to score, {len(uncached)} of them to download first{each}.")
        if st.button(f"Score {len(missing)} checkpoint(s)", key=f"{key_prefix}_btn_sweep", icon=":material/play_arrow:"):
            job = jobs.sweep(name, missing, state.session_token())
            st.session_state[state.REV_JOB] = {"key": job.key}
            st.rerun()
    frame = hubjobs.sweep_frame(name, chosen, jobs.scores)
    if not len(frame):
        st.caption("No checkpoint scored yet: press the button above. Each one's heads are scored on the same "
                   "fixed probe as your own runs (random tokens repeated twice), so the curves compare.")
        return
    from ..core import circuits

    done = sorted({int(s) for s in frame["step"]})
    circuits_view(frame, f"{len(done)} checkpoints of {name} from the hub", circuits.induction_bump(frame),
                  name.replace("/", "-"), key_prefix, live=False, kind_key=state.REV_KIND,
                  log_steps=True)  # checkpoints spread over decades of steps


def hub_checkpoints_section() -> None:
    """On the Train page, below your own run: when the sidebar's model is a hub model that
    published its training checkpoints (Pythia), the same circuits over its training."""
    from ..active import base_model, hub_name, hub_revisions

    lm = base_model()
    st.session_state.pop(state.MODEL_PROBLEM, None)  # the sidebar said it already
    revisions = hub_revisions(lm)
    if len(revisions) < 2:
        return
    st.divider()
    st.caption("A real language model learning the same circuits: the head scores of the sidebar's model at "
               "checkpoints its authors published during training, on the same probe as your runs above.")
    checkpoints_panel(hub_name(lm), revisions)
