"""GPT-2 import: parity with transformers' GPT2LMHeadModel, and load_pretrained from a folder."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import lm_core
from lm_core.pretrained import config_from_hf, gpt_from_hf, load_pretrained

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (optional extra: pip install transformers==5.23.0)"
)

CONFIGS = [
    dict(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=32),
    dict(n_layer=3, n_head=4, n_embd=64, vocab_size=100, n_positions=32, activation_function="gelu_new"),
    dict(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=16, activation_function="gelu",
         layer_norm_epsilon=1e-3),
]


def _hf_model(seed: int, **kw):
    """A random GPT2LMHeadModel whose every parameter (biases, LayerNorms) is far from its init."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(bos_token_id=0, eos_token_id=0, attn_implementation="eager", **kw)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
    return hf


def _assert_parity(ours: lm_core.GPT, hf, idx: torch.Tensor) -> None:
    with torch.no_grad():
        out = hf(idx, output_attentions=True)
    logits, cache = ours.run_with_cache(idx)
    torch.testing.assert_close(logits, out.logits, atol=1e-4, rtol=1e-4)
    assert len(out.attentions) == ours.config.n_layer
    for l, att in enumerate(out.attentions):
        torch.testing.assert_close(cache["pattern", l], att, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # the fused (uncaptured) path agrees too
        torch.testing.assert_close(ours(idx), out.logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kw", CONFIGS, ids=["2x2x32", "3x4x64-gelu_new", "1x2x16-gelu-eps"])
def test_gpt_from_hf_parity(kw):
    hf = _hf_model(0, **kw)
    ours = gpt_from_hf(hf)
    assert ours.config.n_layer == kw["n_layer"] and ours.config.block_size == kw["n_positions"]
    assert ours.config.gelu_approximate == ("none" if kw.get("activation_function") == "gelu" else "tanh")
    idx = torch.randint(0, kw["vocab_size"], (2, kw["n_positions"]), generator=torch.Generator().manual_seed(1))
    _assert_parity(ours, hf, idx)
    # also through the class method named in DESIGN
    torch.testing.assert_close(lm_core.GPT.from_hf(hf).wte.weight, ours.wte.weight)


def test_config_from_hf_refuses_unsupported_variants():
    base = dict(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=16)
    with pytest.raises(ValueError, match="activation 'relu'"):
        config_from_hf(transformers.GPT2Config(activation_function="relu", **base))
    with pytest.raises(ValueError, match="n_inner=32"):
        config_from_hf(transformers.GPT2Config(n_inner=32, **base))
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        config_from_hf(transformers.GPT2Config(scale_attn_by_inverse_layer_idx=True, **base))
    with pytest.raises(ValueError, match="model_type 'bert' is not supported: LM Lens converts GPT-2, Llama"):
        config_from_hf({"model_type": "bert"})
    # a config.json dict that leaves GPT-2 defaults out gets them
    cfg = config_from_hf({"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 16})
    assert (cfg.vocab_size, cfg.block_size, cfg.gelu_approximate, cfg.layer_norm_eps) == (50257, 1024, "tanh", 1e-5)


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    """A random GPT-2 saved with save_pretrained (safetensors) plus a small trained tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("gpt2-tiny")
    hf_tok = Tokenizer(models.BPE())
    hf_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf_tok.train_from_iterator(["the cat sat on the mat, the cat ate the rat. " * 20], trainer=trainer)
    hf_tok.save(str(folder / "tokenizer.json"))
    hf = _hf_model(3, n_layer=2, n_head=4, n_embd=32, vocab_size=hf_tok.get_vocab_size(), n_positions=24)
    hf.save_pretrained(str(folder), safe_serialization=True)
    return folder, hf


def test_load_pretrained_from_a_folder(saved_folder):
    folder, hf = saved_folder
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    model, tok = load_pretrained(str(folder))
    assert isinstance(model, lm_core.GPT) and not model.training
    assert isinstance(tok, lm_core.tokenizers.BPETokenizer)
    text = "the cat sat on the rat"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < len(text)  # merges were learned and used
    _assert_parity(model, hf, torch.tensor([ids]))


def test_load_pretrained_without_tokenizer_and_without_transformers(saved_folder, tmp_path, monkeypatch):
    folder, hf = saved_folder
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((folder / name).read_bytes())
    monkeypatch.setitem(sys.modules, "transformers", None)  # a folder is read without transformers
    model, tok = load_pretrained(str(bare))
    assert tok is None
    idx = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"pip install transformers==5\.23\.0"):
        load_pretrained("gpt2")


def test_load_pretrained_errors(saved_folder, tmp_path):
    folder, _ = saved_folder
    with pytest.raises(ValueError, match="does not exist"):
        load_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="is a file"):
        load_pretrained(str(folder / "config.json"))
    (tmp_path / "only_config").mkdir()
    (tmp_path / "only_config" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_pretrained(str(tmp_path / "only_config"))
    (tmp_path / "no_config").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_pretrained(str(tmp_path / "no_config"))
    # a config that does not match the weights: the missing layer is named
    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    cfg = json.loads((folder / "config.json").read_text())
    (mismatch / "config.json").write_text(json.dumps({**cfg, "n_layer": 3}))
    (mismatch / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"h\.2\..*n_layer=3"):
        load_pretrained(str(mismatch))
