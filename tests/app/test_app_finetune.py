"""The Train page's fine-tuning and layout comparison under AppTest: a tiny pretrained GPT-2 (a
local folder written with save_pretrained) fine-tuned in a process of its own, its run folder
recording where it started and what stayed frozen, pause / resume / stop; a model that cannot be
found is one error that loses nothing; the Llama-layout preset trains a Llama-layout model."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import lm_core
from lm_core import runs as lm_runs
from support import app_env, end_app_training

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (optional extra: pip install transformers==5.23.0)"
)

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "app" / "main.py")
TEXT = "the cat sat on the mat, the cat ate the rat. def f(x): return x + 1\n" * 40


@pytest.fixture
def env(monkeypatch, tmp_path, default_model_dir):
    runs = app_env(monkeypatch, tmp_path, default_model_dir)
    monkeypatch.setenv("LM_LENS_TRAIN_THREADS", "1")
    yield runs
    end_app_training()


def _tokenizer_json(folder: Path) -> int:
    """A byte-level BPE tokenizer.json in ``folder``; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([TEXT], trainer=trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.save(str(folder / "tokenizer.json"))
    return tok.get_vocab_size()


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory) -> Path:
    """A random 2-block Llama (grouped-query, untied), as save_pretrained writes it."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    vocab = _tokenizer_json(folder)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    """A random 3-block GPT-2 with a byte-level BPE tokenizer.json, as save_pretrained writes it."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    _tokenizer_json(folder)
    tok = lm_core.BPETokenizer.from_hf_json(folder / "tokenizer.json")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=3, n_head=2, n_embd=32, vocab_size=tok.vocab_size, n_positions=64,
                                 bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(folder), safe_serialization=True)
    return folder


def app() -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=90)
    at.run()
    at.switch_page("views/train.py").run()
    return at


def no_problem(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _wait_for(pred, timeout=60.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.2)
    return False


def _fine_tune_settings(at: AppTest, model: str) -> None:
    at.radio(key="train_init").set_value("pretrained").run()
    at.text_input(key="train_ft_model").set_value(model).run()


def test_fine_tune_a_local_model_in_its_own_process_with_pause_resume_stop(env, gpt2_folder):
    from app import resources

    at = app()
    _fine_tune_settings(at, str(gpt2_folder))
    no_problem(at)
    # CPU-sized settings were filled in (the context cut to the model's 64 positions), the tokenizer is
    # the model's, the shape is read before Start
    assert at.number_input(key="train_batch_size").value == 4 and at.number_input(key="train_block_size").value == 64
    assert any("own tokenizer" in c.value for c in at.caption)
    assert any("3 layers × 2 heads × 32" in c.value and "LayerNorm" in c.value for c in at.caption)
    at.number_input(key="train_block_size").set_value(200).run()  # longer than its 64 learned positions
    assert any("64 learned positions" in e.value for e in at.error) and at.button(key="train_btn_start").disabled
    at.number_input(key="train_block_size").set_value(16)
    at.number_input(key="train_batch_size").set_value(2)
    at.number_input(key="train_steps").set_value(100_000)
    at.number_input(key="train_ft_keep").set_value(1).run()
    no_problem(at)
    assert any(m.label == "Parameters" for m in at.metric) and any(m.label == "Time per step" for m in at.metric)

    at.button(key="train_btn_start").click().run()
    no_problem(at)
    job = resources.registry().active_job()
    assert job is not None and job.proc is not None and job.proc.pid != os.getpid()  # trained by its own process
    assert job.run_id.startswith(gpt2_folder.name)
    cfg = lm_runs.load_run_config(job.run_dir)  # what the process resumes from
    assert cfg.train.init_from == str(gpt2_folder) and cfg.train.freeze == "all-but-last:1"
    assert cfg.model.block_size == 16 and cfg.model.n_layer == 3 and cfg.tokenizer_kind == "bpe"
    assert _wait_for(lambda: job.status == "running" and len(job.history()) >= 2, timeout=90)
    at.run()
    no_problem(at)
    at.button(key="train_btn_pause").click().run()
    assert job.status == "paused"
    at.button(key="train_btn_resume").click().run()
    assert job.status == "running"
    at.button(key="train_btn_stop").click().run()
    no_problem(at)
    assert _wait_for(lambda: job.status == "stopped", timeout=60)

    run = lm_core.load_run(job.run_dir)
    assert run.status == "stopped" and run.step > 0 and run.config.train.init_from == str(gpt2_folder)
    pre, tok = lm_core.load_pretrained(str(gpt2_folder))
    assert run.tokenizer.encode("the cat sat") == tok.encode("the cat sat")  # the pretrained tokenizer
    before, after = pre.state_dict_for_save(), run.model.state_dict_for_save()
    assert torch.equal(after["blocks.0.attn.c_attn.weight"], before["blocks.0.attn.c_attn.weight"])  # frozen
    assert torch.equal(after["wte.weight"], before["wte.weight"])
    assert not torch.equal(after["blocks.2.mlp.c_fc.weight"], before["blocks.2.mlp.c_fc.weight"])  # trained
    assert run.snapshots  # time travel over the fine-tuning run
    at.run()
    at.sidebar.selectbox(key="model_choice").set_value(f"run:{job.run_dir.resolve()}").run()  # picked in the sidebar
    no_problem(at)
    travel = at.sidebar.select_slider(key="time_step")
    assert len(travel.options) >= 2 and "0" in travel.options  # step 0: the pretrained weights
    at.switch_page("views/attention.py").run()
    no_problem(at)


def test_fine_tune_a_llama_with_frozen_embeddings(env, llama_folder):
    from app import resources

    at = app()
    _fine_tune_settings(at, str(llama_folder))
    assert any("RMSNorm · rotary (RoPE) · SwiGLU MLP · grouped-query" in c.value for c in at.caption)
    at.selectbox(key="train_ft_freeze").set_value("embeddings")
    at.number_input(key="train_block_size").set_value(16)
    at.number_input(key="train_batch_size").set_value(2)
    at.number_input(key="train_steps").set_value(100_000).run()
    no_problem(at)
    at.button(key="train_btn_start").click().run()
    no_problem(at)
    job = resources.registry().active_job()
    assert job is not None and (job.model_config.pos, job.model_config.kv_heads) == ("rotary", 2)
    assert _wait_for(lambda: job.status == "running" and len(job.history()) >= 2, timeout=90)
    job.stop()
    assert job.wait(60) == "stopped"
    run = lm_core.load_run(job.run_dir)
    assert run.config.train.init_from == str(llama_folder) and run.config.train.freeze == "embeddings"
    pre, _ = lm_core.load_pretrained(str(llama_folder))
    before, after = pre.state_dict_for_save(), run.model.state_dict_for_save()
    assert torch.equal(after["wte.weight"], before["wte.weight"])  # frozen
    assert not torch.equal(after["lm_head.weight"], before["lm_head.weight"])  # untied: it trains


@pytest.fixture
def fake_hub(gpt2_folder, tmp_path, monkeypatch):
    """The tiny GPT-2 as a hub repo on the fake hub of tests/fakehub.py (127.0.0.1)."""
    from fakehub import FakeHub, point_hub_at, serving

    files = {p.name: p.read_bytes() for p in gpt2_folder.iterdir() if p.is_file()}
    files.pop("generation_config.json", None)
    with serving(FakeHub({"tiny-org/tiny-gpt2": {"main": files}})) as server:
        point_hub_at(monkeypatch, tmp_path, server.url)
        yield server


def test_fine_tune_a_hub_model_reads_its_shape_first_and_trains_without_the_hub(env, fake_hub):
    from app import resources

    at = app()
    _fine_tune_settings(at, "tiny-org/nope")
    assert len(at.error) == 1 and "'tiny-org/nope'" in at.error[0].value and "check the name" in at.error[0].value
    at.text_input(key="train_ft_model").set_value("tiny-org/tiny-gpt2")
    at.number_input(key="train_steps").set_value(100_000).run()
    no_problem(at)
    assert any("3 layers × 2 heads × 32" in c.value for c in at.caption)
    fetched = {p.rsplit("/", 1)[1] for p in fake_hub.paths("GET") if "/resolve/" in p}
    assert fetched == {"config.json"}, fake_hub.log  # the shape before Start: no weights downloaded
    at.button(key="train_btn_start").click().run()
    no_problem(at)
    job = resources.registry().active_job()
    assert job is not None and lm_runs.load_run_config(job.run_dir).train.init_from == "tiny-org/tiny-gpt2"
    from fakehub import stop

    stop(fake_hub)  # the training process reads its run folder, not the hub
    assert _wait_for(lambda: job.status == "running" and len(job.history()) >= 1, timeout=90)
    job.stop()
    assert job.wait(60) == "stopped"


def test_a_model_that_cannot_be_found_is_one_error_and_loses_nothing(env, tmp_path, monkeypatch):
    from fakehub import closed_port, go_offline, point_hub_at

    point_hub_at(monkeypatch, tmp_path, f"http://127.0.0.1:{closed_port()}")  # an empty cache
    go_offline(monkeypatch)
    at = app()
    corpus_before = at.session_state["train_corpus"]
    # GPT-2 small is in the catalog: its shape, a first guess at the step time and the download size
    # are shown offline, and Start is refused with one error since its weights cannot come
    at.radio(key="train_init").set_value("pretrained").run()
    no_problem(at)
    assert at.text_input(key="train_ft_model").value == "gpt2"
    assert any("12 layers × 12 heads × 768" in c.value and "Start downloads it first" in c.value for c in at.caption)
    assert any(c.value.startswith("Roughly") for c in at.caption) and at.button(key="train_btn_measure")
    assert at.number_input(key="train_batch_size").value == 4 and at.number_input(key="train_block_size").value == 128
    at.button(key="train_btn_start").click().run()
    assert not at.exception and len(at.error) == 1, [e.value for e in at.error]
    assert "'gpt2'" in at.error[0].value and "HF_HUB_OFFLINE" in at.error[0].value
    assert not list(env.iterdir()) and at.text_input(key="train_ft_model").value == "gpt2"

    at.text_input(key="train_ft_model").set_value("tiny-org/never-downloaded").run()
    assert not at.exception
    assert len(at.error) == 1 and "HF_HUB_OFFLINE" in at.error[0].value and "never-downloaded" in at.error[0].value
    assert at.button(key="train_btn_start").disabled
    at.run()
    assert not at.exception and len(at.error) == 1 and not list(env.iterdir())
    assert at.text_input(key="train_ft_model").value == "tiny-org/never-downloaded"  # nothing lost
    assert at.session_state["train_corpus"] == corpus_before

    at.text_input(key="train_ft_model").set_value(str(tmp_path / "no-such-folder")).run()
    assert len(at.error) == 1 and "does not exist" in at.error[0].value
    at.radio(key="train_init").set_value("scratch").run()  # back to a new model: the preset's settings
    no_problem(at)
    assert at.number_input(key="train_block_size").value == 128 and not at.button(key="train_btn_start").disabled


def test_the_llama_layout_preset_trains_a_llama_layout_model(env):
    from app import resources

    at = app()
    at.selectbox(key="train_preset").set_value("llama-cpu").run()
    no_problem(at)
    assert any("RMSNorm · rotary (RoPE) · SwiGLU MLP · grouped-query" in c.value for c in at.caption)
    at.button(key="train_btn_layout_1").click().run()  # "2 · Train the Llama layout": Tiny Shakespeare, started
    no_problem(at)
    job = resources.registry().active_job()
    assert job is not None and job.run_id.startswith("llama-cpu-")
    c = job.model_config
    assert (c.norm, c.pos, c.mlp, c.kv_heads, c.tie_embeddings) == ("rmsnorm", "rotary", "swiglu", 2, False)
    assert c.d_mlp == 384 and job.corpus_name.startswith("tiny-shakespeare")
    assert _wait_for(lambda: len(job.history()) >= 1, timeout=90)
    job.stop()
    assert job.wait(90) == "stopped"
    at.run()  # the box overlays the layout runs' losses
    no_problem(at)
    chart = next(el for el in at.get("plotly_chart") if el.proto.id.endswith("train_layout_chart"))
    assert "Llama layout" in chart.proto.spec
