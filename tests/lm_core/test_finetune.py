"""Fine-tuning (``init_from``): a pretrained model's weights and tokenizer start a normal run
folder; frozen parameters stay put; the folder reloads with the trained model's logits; resume."""

from __future__ import annotations

import pytest
import torch

import lm_core
from lm_core.cli import main
from lm_core.recipes import build_trainer

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (optional extra: pip install transformers==5.23.0)"
)

torch.set_num_threads(1)

TEXT = "the cat sat on the mat, the cat ate the rat. " * 60
TRAIN = dict(batch_size=4, learning_rate=3e-3, max_steps=12, warmup_steps=0, min_lr=3e-3, eval_interval=12,
             eval_iters=2, log_interval=1, checkpoint_interval=6, sample_tokens=0, snapshots=2, device="cpu",
             num_threads=1)


def _tokenizer_json(folder) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf_tok = Tokenizer(models.BPE())
    hf_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf_tok.train_from_iterator([TEXT], trainer=trainer)
    hf_tok.save(str(folder / "tokenizer.json"))
    return hf_tok.get_vocab_size()


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2-tiny")
    vocab = _tokenizer_json(folder)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab, n_positions=48,
                                  bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A random Llama (GQA, untied) whose embedding table is padded past the tokenizer, as Qwen's are."""
    folder = tmp_path_factory.mktemp("llama-tiny")
    vocab = _tokenizer_json(folder)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab + 12,
                                   max_position_embeddings=64, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(folder), safe_serialization=True)
    return folder


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict_for_save().items()}


def _assert_reloads(run_dir, trainer, tok) -> lm_core.Run:
    run = lm_core.load_run(run_dir)
    idx = torch.tensor([tok.encode("the cat sat")])
    with torch.no_grad():
        torch.testing.assert_close(run.model(idx), trainer.model.eval()(idx))
    assert run.tokenizer.encode("the rat ate") == tok.encode("the rat ate")
    return run


def test_finetuning_gpt2_lowers_the_loss_and_keeps_frozen_embeddings(gpt2_folder, tmp_path):
    pre, tok = lm_core.load_pretrained(str(gpt2_folder))
    trainer = build_trainer(corpus_text=TEXT, init_from=str(gpt2_folder), freeze="embeddings",
                            model_overrides={"block_size": 24}, train_overrides=TRAIN, run_dir=tmp_path / "ft")
    assert trainer.model.config.block_size == 24 and trainer.config.init_from == str(gpt2_folder)
    idx = torch.tensor([tok.encode("the cat sat on")])
    with torch.no_grad():  # starts from the pretrained weights (positions cropped to 24)
        torch.testing.assert_close(trainer.model.eval()(idx), pre(idx))
    before = _weights(trainer.model)
    first = trainer.evaluate()["val_loss"]
    assert trainer.run() == "finished"
    assert trainer.evaluate()["val_loss"] < first - 0.3
    after = _weights(trainer.model)
    for k in ("wte.weight", "wpe.weight"):
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    assert not torch.equal(after["blocks.1.mlp.c_fc.weight"], before["blocks.1.mlp.c_fc.weight"])
    h = trainer.history
    assert (h["grad_norm/embed"].dropna() == 0).all() and (h["update_ratio/embed"].dropna() == 0).all()
    assert (h["grad_norm/blocks.0.attn"].dropna() > 0).all()
    run = _assert_reloads(tmp_path / "ft", trainer, tok)
    assert run.config.train.freeze == "embeddings" and run.config.tokenizer_kind == "bpe"
    assert run.snapshots and run.load_snapshot(run.snapshots[0]) is not None


def test_finetuning_a_padded_llama_with_all_but_last_block_then_resume(llama_folder, tmp_path):
    pre, tok = lm_core.load_pretrained(str(llama_folder))
    assert tok.vocab_size < pre.config.vocab_size                      # a padded embedding table
    common = dict(corpus_text=TEXT, init_from=str(llama_folder), freeze="all-but-last:1",
                  model_overrides={"block_size": 32}, run_dir=tmp_path / "ft")
    trainer = build_trainer(**common, train_overrides={**TRAIN, "max_steps": 12})
    before = _weights(trainer.model)
    first = trainer.evaluate()["val_loss"]
    trainer.run()
    assert trainer.evaluate()["val_loss"] < first
    after = _weights(trainer.model)
    for k, v in before.items():
        trains = k.startswith(("blocks.1.", "ln_final.", "lm_head."))
        assert torch.equal(after[k], v) != trains, k
    h = trainer.history
    assert (h["grad_norm/blocks.0.mlp"].dropna() == 0).all() and (h["grad_norm/blocks.1.mlp"].dropna() > 0).all()
    _assert_reloads(tmp_path / "ft", trainer, tok)

    resumed = build_trainer(**{**common, "corpus_text": None}, resume=True,
                            train_overrides={**TRAIN, "max_steps": 18})
    assert resumed.step_count == 12 and resumed.run() == "finished" and resumed.step_count == 18
    resumed_w = _weights(resumed.model)
    for k, v in after.items():  # the resumed run keeps the same parameters frozen
        if not k.startswith(("blocks.1.", "ln_final.", "lm_head.")):
            assert torch.equal(resumed_w[k], v), k
    _assert_reloads(tmp_path / "ft", resumed, tok)
    with pytest.raises(ValueError, match="freeze: 'all-but-last:1' → 'embeddings'"):
        build_trainer(**{**common, "corpus_text": None, "freeze": "embeddings"}, resume=True,
                      train_overrides={**TRAIN, "max_steps": 20})


def test_cli_init_from_writes_a_run_folder(gpt2_folder, tmp_path, capsys):
    text = tmp_path / "cats.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "cli"
    args = ["train", "--init-from", str(gpt2_folder), "--corpus", str(text), "--block-size", "16",
            "--freeze", "all-but-last:1", "--batch-size", "4", "--max-steps", "4", "--eval-interval", "4",
            "--eval-iters", "1", "--sample-tokens", "8", "--num-threads", "1", "--out", str(out)]
    assert main(args) == 0
    run = lm_core.load_run(out)
    assert run.step == 4 and run.config.model.block_size == 16 and run.config.train.freeze == "all-but-last:1"
    assert run.baselines == [] or run.baselines[0]["n"] == 1
    assert main([*args[:-4], "--max-steps", "6", "--eval-interval", "4", "--eval-iters", "1", "--sample-tokens",
                 "8", "--num-threads", "1", "--out", str(out), "--resume"]) == 0
    assert lm_core.load_run(out).step == 6
    capsys.readouterr()


@pytest.mark.parametrize("extra, message", [
    (["--preset", "nanogpt-cpu"], "drop --preset"),
    (["--n-layer", "3"], "only block_size, dropout may be set, not n_layer"),
    (["--tokenizer", "char"], "own tokenizer"),
    (["--block-size", "100"], "longer than the pretrained model's 48 learned positions"),
    (["--freeze", "all-but-last:5"], "has only 2"),
])
def test_cli_init_from_errors_are_one_line(gpt2_folder, tmp_path, capsys, extra, message):
    text = tmp_path / "cats.txt"
    text.write_text(TEXT, encoding="utf-8")
    rc = main(["train", "--init-from", str(gpt2_folder), "--corpus", str(text), *extra, "--max-steps", "1",
               "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad" / "config.json").exists()
