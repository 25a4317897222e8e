"""Training: loss → backpropagation → weight update, made visible, controllable and resumable.

:class:`Trainer` runs AdamW (decay on matrices and embeddings, none on biases and LayerNorm
gains) with a linear warmup then a cosine decay to ``min_lr``, gradient clipping and seeded
batches. It reports through callbacks and :meth:`Trainer.snapshot` and knows nothing of any UI.

What is logged at every logged step (one row of :attr:`Trainer.history`; a first row at step
0 holds the untrained model's validation loss):

* ``train_loss`` (cross-entropy of that step's batch, nats/token), ``val_loss`` at evaluations
  (mean over ``eval_iters`` fixed batches of the held-out last 10%), ``train_bpc``/``val_bpc``
  (bits per character = loss / ln 2 × tokens per character: char and BPE runs compare);
* ``lr``, ``tokens_per_s`` (training steps only), ``elapsed_s`` (wall time while running,
  evaluation and checkpoints included, pauses excluded), ``eta_s``, ``tokens_seen``;
* backpropagation: ``grad_norm`` (total, before clipping) and ``grad_norm/<group>``;
* the weight update: ``update_ratio/<group>`` = ‖Δw‖ / ‖w‖ of that step.

Groups: ``embed`` (``wte`` + ``wpe``; ``wte`` is tied to the unembedding, so its gradient
includes the output layer's), ``blocks.{l}.attn`` (``ln_1`` + attention), ``blocks.{l}.mlp``
(``ln_2`` + MLP) and ``ln_final``.

Exact resume: batches are a pure function of ``(seed, step)`` (:mod:`lm_core.data`) and the
dropout RNG is reseeded from ``(seed, step)`` before each step, so a run resumed from a
checkpoint repeats the uninterrupted run's arithmetic. Nothing random is carried between steps
except the optimizer state, which the checkpoint holds.

Threads: the CPU thread count is set deliberately (:meth:`Trainer.configure_threads`): every
core the process may use, divided among DDP ranks on one machine; ``TrainConfig.num_threads``
overrides it. Background runs (the app) use a thread, not a subprocess, and the same count:
torch releases the GIL inside its kernels, so measured with ``bench/bench_train.py --only
thread`` on 2 cores, a background thread keeps 0.99x the foreground's (the CLI's) tokens/s
while the main thread plays the app's live view once a second, whose 15 ms job then takes
20 ms (median). A thread also shares the weights with the UI without copying them through a
pipe. Dropout reseeds torch's global RNG each step, which a UI thread drawing from the same
global RNG would notice (lm_core's own generation uses its own generators).

The package, one job per module::

    step.py      the optimisation: AdamW, the lr schedule, one step, evaluation
    loop.py      the loop: bookkeeping due at each step (rows, evaluations, probes,
                 snapshots, checkpoints) and how a run ends
    record.py    history rows and probe results in memory; the run folder's only writer
    control.py   Status and its transitions, pause/resume/stop, the worker thread, control.json
    probes.py    samples and head scores, the evaluation callbacks
    dist.py      rank, world size, reductions over ranks
    trainer.py   Trainer, the façade over them
"""

from .control import ACTIVE, ENDED, TRANSITIONS, ControlWatcher, IllegalTransition, Status, request
from .loop import EARLY_SAMPLE_S, CallbackError
from .probes import HeadScoreProbe, SampleProbe
from .record import BASE_COLUMNS
from .step import (DROPOUT_STREAM, Diverged, autocast_dtype, available_cores, is_oom, layer_groups, lr_at,
                   resolve_device)
from .trainer import RESUME_MAY_CHANGE, Callback, Trainer, TrainSnapshot

STATUSES = tuple(s.value for s in Status)

__all__ = ["Trainer", "TrainSnapshot", "Callback", "CallbackError", "Diverged", "Status", "STATUSES",
           "TRANSITIONS", "ACTIVE", "ENDED", "IllegalTransition", "ControlWatcher", "request",
           "RESUME_MAY_CHANGE", "EARLY_SAMPLE_S", "BASE_COLUMNS", "DROPOUT_STREAM", "HeadScoreProbe",
           "SampleProbe", "autocast_dtype", "available_cores", "is_oom", "layer_groups", "lr_at",
           "resolve_device"]
