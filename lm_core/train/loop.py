"""The training loop: what happens at each step, and how a run ends.

Per step (nanoGPT's loop, with a recorder attached): one optimizer step (:mod:`.step`); at
each logged step a history row; at each evaluation the validation loss, the probes (a
sample, head scores) and the best weights; snapshots and checkpoints on their schedules.
``run()`` repeats that until ``max_steps``, ``max_seconds``, early stopping, divergence, a
failure or a stop, obeying pause requests between steps. Before its first step a run is
evaluated once (a history row at step 0), and a first sample is drawn after
:data:`EARLY_SAMPLE_S` seconds, so a live view has something to show long before the first
scheduled evaluation.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from .control import ControlWatcher, Status
from .step import LN2, Diverged, is_oom

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger("lm_core.train")

EARLY_SAMPLE_S = 10.0       # a first sample this far into training, long before the first evaluation
STOP_EVAL_BUDGET_S = 2.0    # the last evaluation of a run stopped by request: a few seconds at most


class CallbackError(RuntimeError):
    """A user callback raised; the run fails with this message."""


class Loop:
    """Drives one :class:`~lm_core.train.trainer.Trainer` (its parts are the trainer's)."""

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer
        self._early_sample_due = False

    # ------------------------------------------------------------------ one step

    def step(self) -> dict[str, Any]:
        t = self.t
        if t.control.is_background_running():
            raise ValueError("training is running in the background; pause() it before stepping by hand")
        if t.status in (Status.FINISHED, Status.DIVERGED, Status.FAILED):
            raise ValueError(f"the run has {t.status} at step {t.step_count}; start a new one")
        if t.step_count == 0 and not t.record.rows:
            self._first_row()
        out, early = self._advance()
        if early:
            self._finish(Status.FINISHED, "early_stopping")
        return out

    def _advance(self) -> tuple[dict[str, Any], bool]:
        t, st = self.t, self.t.stepper
        with t._step_lock:
            t0 = time.perf_counter()
            try:
                out = st.one_step(measure=self._is_row_step(st.step + 1))
                early = self._bookkeeping(out)
            except Diverged as e:
                self._diverge(str(e))
                raise ValueError(t.error) from None
            except Exception as e:
                if is_oom(e):
                    self._fail(self._oom_message())
                    raise ValueError(t.error) from None
                raise
            finally:
                dt = time.perf_counter() - t0
                st.elapsed_s += dt
                st.session_time += dt
            st.session_steps += 1
            return out, early

    def _is_row_step(self, s: int) -> bool:
        tc = self.t.config
        return s % tc.log_interval == 0 or s % tc.eval_interval == 0 or s == tc.max_steps

    def _bookkeeping(self, out: dict[str, Any]) -> bool:
        """Row, evaluation, probes, snapshot, checkpoint due at this step. Returns early-stop."""
        t, tc, s = self.t, self.t.config, self.t.step_count
        early = False
        if self._is_row_step(s):
            evaluated = s % tc.eval_interval == 0 or s == tc.max_steps
            val, sample = None, None
            if evaluated:
                val, early = self._do_eval(scheduled=True)
                sample = self._probe()
                self._early_sample_due = False
            self._emit(self._make_row(out, val), evaluated, sample)
        if self._early_sample_due and t.elapsed_s >= EARLY_SAMPLE_S:
            self._early_sample_due = False
            self._probe(heads=False)
        if t.folder is not None and t.is_main:
            if s in t._snapshot_plan:
                t.folder.save_snapshot(s, t.model.state_dict_for_save())
            if s % tc.checkpoint_interval == 0:
                t._save_checkpoint(state=Status.RUNNING)
        return early

    def _make_row(self, out: dict[str, Any], val: dict[str, float] | None) -> dict[str, Any]:
        t, st = self.t, self.t.stepper
        row: dict[str, Any] = {c: math.nan for c in t.columns}
        row.update(out)
        row["train_loss"] = t.ranks.mean(out["train_loss"])
        row["train_bpc"] = row["train_loss"] / LN2 * t.train_split.tokens_per_char
        if val is not None:
            row.update(val)
        row.update(tokens_per_s=st.take_throughput(), elapsed_s=st.elapsed_s, tokens_seen=st.tokens_seen,
                   eta_s=st.eta_s())
        return row

    def _emit(self, row: dict[str, Any], evaluated: bool, sample: str | None) -> None:
        t = self.t
        t.record.add_row(row)
        if not t.is_main:
            return
        if t.folder is not None:
            t.folder.write_history(t.record)
            t._write_status()
        for name, cbs, arg in (("on_step", t.on_step, row),
                               ("on_eval", t.on_eval if evaluated else [], {**row, "sample": sample})):
            for cb in cbs:
                try:
                    cb(dict(arg))
                except Exception as e:
                    raise CallbackError(f"the {name} callback raised {type(e).__name__}: {e}") from e

    def _do_eval(self, scheduled: bool, time_budget_s: float | None = None) -> tuple[dict[str, float], bool]:
        """Evaluate; keep the best weights; count patience. Returns (val metrics, early stop?).

        Only scheduled evaluations count towards early stopping, so an extra evaluation (at
        step 0, at a stop) does not change what a resumed run would decide.
        """
        t = self.t
        val = t.evaluate() if time_budget_s is None else t.evaluate(time_budget_s=time_budget_s)
        early = False
        if val["val_loss"] < t.best_val_loss:
            t.best_val_loss, t.best_step = val["val_loss"], t.step_count
            if scheduled:
                t._evals_since_best = 0
            if t.folder is not None and t.config.save_best:
                t.folder.save_best(t.step_count, val["val_loss"], t.model.state_dict_for_save())
        elif scheduled:
            t._evals_since_best += 1
            p = t.config.early_stopping_patience
            early = p is not None and t._evals_since_best >= p
        return val, early

    def _probe(self, heads: bool = True) -> str | None:
        """Run the probes (main rank only) and record their results; returns the sample."""
        t, s = self.t, self.t.step_count
        if not t.is_main:
            return None
        sample = None
        if t.config.sample_tokens > 0:
            sample = t._sample_probe(t.model, s)
            samples = t.record.add_sample(s, sample)
            if t.folder is not None:
                t.folder.write_samples(samples)
        if heads and (scores := t._head_probe(t.model, s)) is not None:
            records = t.record.add_head_scores(s, scores)
            if t.folder is not None:
                t.folder.write_head_scores(records)
        return sample

    def _first_row(self) -> None:
        """Step 0 of a fresh run: the untrained model's val loss and probes, as nanoGPT's loop
        evaluates at iteration 0."""
        t, st = self.t, self.t.stepper
        t0 = time.perf_counter()
        val, _ = self._do_eval(scheduled=False)
        sample = self._probe()
        st.elapsed_s += time.perf_counter() - t0
        row: dict[str, Any] = {c: math.nan for c in t.columns}
        row.update(step=0, elapsed_s=st.elapsed_s, tokens_seen=0, **val)
        self._emit(row, True, sample)

    def _final_row(self, time_budget_s: float | None) -> None:
        """Make sure the last step has a row with a validation loss (runs cut short by time or
        by stop() end between logged steps) and a snapshot."""
        t, s = self.t, self.t.step_count
        if s == 0 or t.stepper.last_loss is None:
            return
        last = t.record.latest() or None
        if last is not None and last["step"] == s:
            if not math.isnan(last["val_loss"]):
                return
            val, _ = self._do_eval(scheduled=False, time_budget_s=time_budget_s)
            row = {**last, **val}
        else:
            val, _ = self._do_eval(scheduled=False, time_budget_s=time_budget_s)
            row = self._make_row({"step": s, "train_loss": t.stepper.last_loss, "lr": t.lr_at(s - 1)}, val)
        self._emit(row, True, self._probe())
        if t.folder is not None and t.is_main and t.config.snapshots and s not in t._snapshot_plan:
            t.folder.save_snapshot(s, t.model.state_dict_for_save())

    # ------------------------------------------------------------------ ending

    def _oom_message(self) -> str:
        t, cfg, tc = self.t, self.t.model.config, self.t.config
        return (f"out of memory on {t.device.type} at step {t.step_count + 1} (batch_size "
                f"{tc.batch_size}, block_size {cfg.block_size}, n_embd {cfg.n_embd}, n_layer {cfg.n_layer}); "
                f"reduce batch_size, block_size or the model size, or train on another device")

    def _diverge(self, what: str) -> None:
        t, last = self.t, self.t.last_finite_loss
        t.control.error = (f"training diverged: {what}; the last finite loss was "
                           f"{last if last is None else round(last, 6)}; the last good checkpoint is step "
                           f"{t.checkpoint_step}. Lower learning_rate or raise warmup_steps")
        t.optimizer.zero_grad(set_to_none=True)
        self._end(Status.DIVERGED, "diverged", diverged_at=t.step_count + 1)

    def _fail(self, msg: str) -> None:
        self.t.control.error = msg
        self.t.optimizer.zero_grad(set_to_none=True)
        if self.t.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
        self._end(Status.FAILED, "failed")

    def _finish(self, state: Status, reason: str, time_budget_s: float | None = None) -> None:
        """End cleanly: a final row with a val loss, a snapshot and a checkpoint."""
        self.t.control.reason = reason
        self._final_row(time_budget_s)
        self._end(state, reason)

    def _end(self, state: Status, reason: str, **status: Any) -> None:
        """Record the end in the folder, then change the status (a reader that sees it ended
        finds the folder complete), then tell the on_end callbacks."""
        t = self.t
        t.control.reason = reason
        t.control.ended = True
        if t.folder is not None and t.is_main:
            if state == Status.FINISHED and not t.config.keep_resume_state:
                t._save_checkpoint(state=state, resumable=False, reason=reason, **status)
            elif state in (Status.FINISHED, Status.STOPPED):
                t._save_checkpoint(state=state, reason=reason, **status)
            else:  # keep the last good checkpoint; only record what happened
                t.folder.write_history(t.record, fsync=True)
                t.folder.write_config(t._run_config(state, reason=reason, **status))
        t.control.to(state, reason=reason)
        summary = {"status": str(state), "reason": reason, "step": t.step_count, "error": t.error}
        if t.is_main:
            for cb in t.on_end:
                try:
                    cb(dict(summary))
                except Exception:  # the run is over; a failing on_end must not hide its result
                    log.exception("on_end callback failed")

    def _done_reason(self) -> str | None:
        t, tc = self.t, self.t.config
        if t.step_count >= tc.max_steps:
            return "max_steps"
        if tc.max_seconds is not None and t.elapsed_s >= tc.max_seconds:
            return "max_seconds"
        return None

    # ------------------------------------------------------------------ the loop

    def run(self) -> str:
        t, c = self.t, self.t.control
        c.begin(t.step_count)
        t.configure_threads()
        if t.folder is not None and t.is_main:
            t.folder.write_config(t._run_config(Status.RUNNING))
        watcher = ControlWatcher(t.run_dir, self._apply).start() if t.run_dir is not None else None
        try:
            return self._loop()
        finally:
            if watcher is not None:
                watcher.close()

    def _apply(self, action: str) -> None:
        """A request from control.json."""
        {"pause": self.t.pause, "resume": self.t.resume, "stop": lambda: self.t.stop(wait=False)}[action]()

    def _loop(self) -> str:
        t, c = self.t, self.t.control
        try:
            if t.step_count == 0 and not t.record.rows:
                self._first_row()
            self._early_sample_due = not any(s["step"] > 0 for s in t.record.samples)
            while True:
                reason = self._done_reason()
                stop = c.stop_requested
                if t.ranks.any(reason is not None or stop):
                    reason = reason or ("stopped" if stop else "max_seconds")
                    break
                if c.pause_requested:
                    c.wait_paused()
                    continue
                try:
                    _, early = self._advance()
                except ValueError:
                    if c.ended:  # diverged or out of memory: already recorded
                        return t.status
                    raise
                if early:
                    reason = "early_stopping"
                    break
        except KeyboardInterrupt:
            reason = "stopped"
        except Exception as e:
            log.exception("training failed")
            if not c.ended:
                self._fail(self._oom_message() if is_oom(e) else
                           str(e) if isinstance(e, CallbackError) else f"{type(e).__name__}: {e}")
            return t.status
        if reason == "stopped":
            c.to(Status.STOPPING)
            self._finish(Status.STOPPED, "stopped", time_budget_s=STOP_EVAL_BUDGET_S)
        else:
            self._finish(Status.FINISHED, reason)
        return t.status
