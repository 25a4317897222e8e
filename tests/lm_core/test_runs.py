"""The run folder: layout, atomic history, snapshots, exact resume, and refusing bad files."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from lm_core import GPT, ModelConfig, TrainConfig
from lm_core import runs as R
from lm_core.corpora import load_corpus
from lm_core.runs import list_runs, load_run, read_history, snapshot_steps
from lm_core.tokenizers import CharTokenizer
from lm_core.train import Trainer

torch.set_num_threads(1)

TEXT = load_corpus("builtin:python-docs")[:20_000]
TOK = CharTokenizer.train(TEXT)
TINY = ModelConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.1)
TC = TrainConfig(batch_size=4, max_steps=40, warmup_steps=5, eval_interval=20, eval_iters=2, log_interval=5,
                 checkpoint_interval=10, sample_tokens=8, num_threads=1)


def make_trainer(run_dir, **kw) -> Trainer:
    torch.manual_seed(0)
    return Trainer(GPT(TINY), TOK, TEXT, TC, run_dir, corpus="builtin:python-docs", **kw)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Trainer]:
    d = tmp_path_factory.mktemp("runs") / "done"
    t = make_trainer(d)
    t.run()
    return d, t


def test_run_folder_holds_everything_and_loads_back(finished_run):
    d, t = finished_run
    names = sorted(p.name for p in d.iterdir())
    assert names == ["best.safetensors", "config.json", "head_scores.json", "history.csv", "model.safetensors",
                     "resume.safetensors", "samples.json", "snapshots", "status.json", "tokenizer.json"]
    assert not [p for p in d.rglob("*") if p.name.endswith(".tmp")]       # no temp files left
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["format"] == "lm-lens-run" and cfg["corpus"] == "builtin:python-docs"
    assert cfg["tokenizer"] == {"kind": "char", "vocab_size": TOK.vocab_size}
    assert cfg["status"]["state"] == "finished" and cfg["status"]["checkpoint_step"] == 40
    assert cfg["lm_core_version"] and cfg["model"]["n_embd"] == 32 and cfg["train"]["max_steps"] == 40

    run = load_run(d)
    assert run.status == "finished" and run.step == 40 and run.tokenizer == TOK
    assert run.config.model == TINY and run.config.train == TC
    for k, v in t.model.state_dict_for_save().items():
        assert torch.equal(run.model.state_dict()[k], v), k
    assert not run.model.training
    pd_hist = t.history
    assert run.history["step"].tolist() == pd_hist["step"].tolist() == list(range(0, 41, 5))
    for c in pd_hist.columns:
        assert run.history[c].tolist() == pytest.approx(pd_hist[c].tolist(), nan_ok=True), c
    assert run.samples == t.samples and [s["step"] for s in run.samples] == [0, 20, 40]
    assert run.snapshots == snapshot_steps(40)
    best = run.load_best()
    assert best is not None and best[1] == t.best_step and best[2] == pytest.approx(t.best_val_loss)


def test_snapshots_are_the_weights_at_their_step(finished_run):
    d, _ = finished_run
    run = load_run(d)
    torch.manual_seed(0)
    fresh = GPT(TINY)                                        # same seed: the initial weights
    snap0 = run.load_snapshot(0)
    for k, v in fresh.state_dict_for_save().items():
        assert torch.equal(snap0.state_dict()[k], v), k
    last = run.load_snapshot(40)
    assert all(torch.equal(last.state_dict()[k], v) for k, v in run.model.state_dict().items())
    with pytest.raises(ValueError, match="available steps"):
        run.load_snapshot(41)


@pytest.mark.parametrize("max_steps", [1, 7, 19, 20, 21, 100, 2000, 5000, 10**6])
def test_snapshot_steps_are_log_spaced_and_bounded(max_steps):
    s = snapshot_steps(max_steps)
    assert s[0] == 0 and s[-1] == max_steps and s == sorted(set(s))
    assert len(s) == min(R.MAX_SNAPSHOTS, max_steps + 1)
    if max_steps > 1000:  # later gaps grow geometrically
        gaps = [b - a for a, b in zip(s[5:], s[6:])]
        assert all(g2 > g1 for g1, g2 in zip(gaps, gaps[1:]))


def test_history_is_on_disk_as_training_goes(tmp_path):
    d = tmp_path / "live"
    on_disk = []
    t = make_trainer(d, on_step=lambda row: on_disk.append((row["step"], read_history(d / "history.csv")["step"].tolist())))
    t.run()
    for step, steps in on_disk:
        assert steps[-1] == step and steps == list(range(0, step + 1, 5))


def test_exact_resume_matches_an_uninterrupted_run(tmp_path):
    """Dropout on: the resumed run repeats the uninterrupted one bit for bit."""
    full = make_trainer(tmp_path / "full")
    full.run()
    cut = make_trainer(tmp_path / "cut")
    for _ in range(27):          # checkpoint at 20; the 7 steps after it are lost, as in a crash
        cut.step()
    del cut
    with pytest.raises(ValueError, match="training text differs"):
        Trainer.from_run(tmp_path / "cut")           # the whole corpus is not the text it saw
    resumed = Trainer.from_run(tmp_path / "cut", TEXT)
    assert resumed.step_count == 20 and resumed.history["step"].tolist() == [0, 5, 10, 15, 20]
    assert R.list_snapshot_steps(tmp_path / "cut") == [s for s in snapshot_steps(40) if s <= 20]
    assert resumed.run() == "finished"
    a, b = full.history, resumed.history
    assert b["step"].tolist() == a["step"].tolist()
    assert b["train_loss"].tolist() == pytest.approx(a["train_loss"].tolist(), nan_ok=True, abs=0)
    assert b["val_loss"].tolist() == pytest.approx(a["val_loss"].tolist(), nan_ok=True, abs=0)
    for k, v in full.model.state_dict_for_save().items():
        assert torch.equal(resumed.model.state_dict_for_save()[k], v), k
    assert load_run(tmp_path / "cut").history["step"].tolist() == list(range(0, 41, 5))
    assert resumed.samples == full.samples


def test_a_folder_with_a_run_is_not_overwritten(finished_run):
    d, _ = finished_run
    with pytest.raises(ValueError, match="already holds a run"):
        make_trainer(d)
    with pytest.raises(ValueError, match="different model"):
        torch.manual_seed(0)
        Trainer(GPT(TINY.replace(n_embd=64)), TOK, TEXT, TC, d, resume=True)


# ----------------------------------------------------------------------------- bad files

class _Planted:
    """Unpickling this creates the marker file: proof that code from a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _loaders(d: Path) -> dict[str, callable]:
    return {
        "config.json": lambda: load_run(d),
        "model.safetensors": lambda: load_run(d),
        "tokenizer.json": lambda: load_run(d),
        "history.csv": lambda: load_run(d),
        "samples.json": lambda: load_run(d),
        "head_scores.json": lambda: load_run(d),
        "best.safetensors": lambda: load_run(d).load_best(),
        "snapshots/step-000000.safetensors": lambda: load_run(d).load_snapshot(0),
        "resume.safetensors": lambda: Trainer.from_run(d, TEXT),
    }


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("name", list(_loaders(Path("."))))
def test_a_pickle_disguised_as_a_run_file_is_refused_and_never_run(finished_run, tmp_path, name, protocol):
    src, _ = finished_run
    d = tmp_path / "run"
    shutil.copytree(src, d)
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(_Planted(marker), protocol=protocol)
    pickle.loads(payload).close()                # the payload is live: unpickling runs it
    assert marker.exists()
    marker.unlink()
    (d / name).write_bytes(payload)
    with pytest.raises(ValueError, match=name.split("/")[-1].replace(".", r"\.")):
        _loaders(d)[name]()
    assert not marker.exists()


def test_a_torch_save_file_posing_as_weights_is_refused(finished_run, tmp_path):
    src, _ = finished_run
    d = tmp_path / "run"
    shutil.copytree(src, d)
    torch.save(load_run(src).model.state_dict(), d / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        load_run(d)


@pytest.mark.parametrize("name, damage, message", [
    ("model.safetensors", "truncate", r"model\.safetensors"),
    ("config.json", "truncate", r"config\.json"),
    ("history.csv", "truncate", r"history\.csv.*truncated"),
    ("tokenizer.json", "delete", r"tokenizer\.json"),
    ("model.safetensors", "delete", r"model\.safetensors.*missing"),
    ("config.json", "foreign", r"config\.json.*not an LM Lens run"),
    ("model.safetensors", "foreign", r"model\.safetensors.*does not fit"),
    ("history.csv", "foreign", r"history\.csv.*header"),
    ("samples.json", "foreign", r"samples\.json"),
    ("head_scores.json", "foreign", r"head_scores\.json"),
    ("head_scores.json", "truncate", r"head_scores\.json"),
])
def test_damaged_or_foreign_files_name_themselves(finished_run, tmp_path, name, damage, message):
    src, _ = finished_run
    d = tmp_path / "run"
    shutil.copytree(src, d)
    p = d / name
    if damage == "truncate":
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2 + 3])
    elif damage == "delete":
        p.unlink()
    elif name == "config.json":
        p.write_text(json.dumps({"model_type": "gpt2", "n_layer": 12}))
    elif name == "model.safetensors":
        R.save_safetensors(p, {"wte.weight": torch.zeros(3, 3)})
    elif name == "history.csv":
        p.write_text("epoch,loss\n1,2.0\n")
    else:
        p.write_text(json.dumps({"samples": "not a list"}))
    with pytest.raises(ValueError, match=message):
        load_run(d)


def test_list_runs_lists_good_and_broken_folders_and_skips_others(finished_run, tmp_path):
    src, _ = finished_run
    shutil.copytree(src, tmp_path / "good")
    shutil.copytree(src, tmp_path / "broken")
    (tmp_path / "broken" / "config.json").write_text("{not json")
    shutil.copytree(src, tmp_path / "no-weights")
    (tmp_path / "no-weights" / "model.safetensors").unlink()
    (tmp_path / "notes").mkdir()
    runs = {r.name: r for r in list_runs(tmp_path)}
    assert set(runs) == {"good", "broken", "no-weights"}
    assert runs["good"].ok and runs["good"].status == "finished" and runs["good"].step == 40
    assert not runs["broken"].ok and "config.json" in runs["broken"].error
    assert not runs["no-weights"].ok and "model.safetensors" in runs["no-weights"].error
    assert list_runs(tmp_path / "missing") == []


def test_writes_are_atomic_replacements(tmp_path):
    p = tmp_path / "f.json"
    R.atomic_write_json(p, {"a": 1})
    ino = os.stat(p).st_ino
    R.atomic_write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2} and os.stat(p).st_ino != ino   # a new file renamed over
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~mask               # as open() would, not mkstemp's 0600
    assert math.isnan(read_history(_csv(tmp_path, "step,train_loss,val_loss\n1,2.5,\n"))["val_loss"][0])


def _csv(d: Path, text: str) -> Path:
    p = d / "h.csv"
    p.write_text(text)
    return p
