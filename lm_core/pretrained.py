"""Pretrained weights: Hugging Face GPT-2 -> lm_core.GPT.

Three ways in:

* :func:`gpt_from_hf` converts an in-memory ``transformers.GPT2LMHeadModel`` (needs only an
  object with GPT-2's ``config`` and ``state_dict()``; ``transformers`` itself is not imported).
* :func:`load_pretrained` with a folder (``config.json`` + ``model.safetensors`` [+
  ``tokenizer.json``], as written by ``save_pretrained`` or downloaded from the hub) reads the
  files directly with ``safetensors``: no ``transformers`` needed, no pickle.
* :func:`load_pretrained` with a hub name (``"gpt2"``) downloads through
  ``transformers.GPT2LMHeadModel.from_pretrained`` (the tokenizer through ``huggingface_hub``);
  ``transformers`` is an optional extra. A model downloaded before loads from the cache with no
  network; with no network and no cache it fails within seconds, not after the hub's retries.

Hugging Face stores GPT-2's projections as ``Conv1D`` weights ``[in, out]``; ``nn.Linear``
wants ``[out, in]``, so they are transposed. The q/k/v split of ``c_attn`` and the head order
are the same in both, so patterns match head for head.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from .config import ModelConfig
from .model import GPT
from .tokenizers import BPETokenizer

__all__ = ["config_from_hf", "gpt_from_hf", "load_pretrained", "TRANSFORMERS_PIN"]

log = logging.getLogger(__name__)

TRANSFORMERS_PIN = "transformers==5.23.0"

_ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}

# GPT2Config's defaults: a config.json written by save_pretrained may leave these out.
_GPT2_DEFAULTS: dict[str, Any] = {
    "model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12,
    "n_head": 12, "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False, "add_cross_attention": False, "tie_word_embeddings": True,
}


def _get(hf_config, key: str) -> Any:
    """A field of a ``GPT2Config`` or of its ``config.json`` dict, with GPT-2's default."""
    if isinstance(hf_config, Mapping):
        value = hf_config.get(key, _GPT2_DEFAULTS[key])
    else:
        value = getattr(hf_config, key, _GPT2_DEFAULTS[key])
    return _GPT2_DEFAULTS[key] if value is None and key != "n_inner" else value


def config_from_hf(hf_config) -> ModelConfig:
    """ModelConfig from a ``transformers.GPT2Config`` or its ``config.json`` as a dict.

    Refuses, with a ``ValueError`` naming the field, GPT-2 variants this model cannot express
    (another activation, a custom MLP width, cross-attention, untied unembedding, other
    attention scalings).
    """
    model_type = _get(hf_config, "model_type")
    if model_type != "gpt2":
        raise ValueError(f"model_type {model_type!r} is not GPT-2; only GPT-2-layout models can be imported")
    act = _get(hf_config, "activation_function")
    if act not in _ACTIVATIONS:
        raise ValueError(f"GPT-2 activation {act!r} is not supported; expected one of {sorted(_ACTIVATIONS)}")
    n_embd, n_inner = int(_get(hf_config, "n_embd")), _get(hf_config, "n_inner")
    if n_inner is not None and int(n_inner) != 4 * n_embd:
        raise ValueError(f"n_inner={n_inner} is not supported: this model's MLP is 4 x n_embd = {4 * n_embd} wide")
    if _get(hf_config, "scale_attn_by_inverse_layer_idx") or _get(hf_config, "reorder_and_upcast_attn"):
        raise ValueError("GPT-2 variants with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn are not supported")
    if not _get(hf_config, "scale_attn_weights"):
        raise ValueError("GPT-2 configs with scale_attn_weights=False are not supported")
    if _get(hf_config, "add_cross_attention"):
        raise ValueError("GPT-2 configs with add_cross_attention=True (encoder-decoder) are not supported")
    if not _get(hf_config, "tie_word_embeddings"):
        raise ValueError("GPT-2 configs with tie_word_embeddings=False are not supported: this model ties lm_head to wte")
    return ModelConfig(
        vocab_size=int(_get(hf_config, "vocab_size")), block_size=int(_get(hf_config, "n_positions")),
        n_layer=int(_get(hf_config, "n_layer")), n_head=int(_get(hf_config, "n_head")), n_embd=n_embd,
        dropout=0.0, bias=True, gelu_approximate=_ACTIVATIONS[act],
        layer_norm_eps=float(_get(hf_config, "layer_norm_epsilon")),
    )


def _convert_state_dict(sd: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 tensor names -> ours (``transformer.`` prefix optional, as in hub files)."""
    sd = {(k[len("transformer."):] if k.startswith("transformer.") else k): v.detach().float().cpu()
          for k, v in sd.items()}
    pairs = {"wte.weight": "wte.weight", "wpe.weight": "wpe.weight",
             "ln_final.weight": "ln_f.weight", "ln_final.bias": "ln_f.bias"}
    conv = {}
    for l in range(cfg.n_layer):
        src, dst = f"h.{l}.", f"blocks.{l}."
        for ln in ("ln_1", "ln_2"):
            pairs[f"{dst}{ln}.weight"] = f"{src}{ln}.weight"
            pairs[f"{dst}{ln}.bias"] = f"{src}{ln}.bias"
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            conv[f"{dst}{name}.weight"] = f"{src}{name}.weight"  # Conv1D [in, out]
            pairs[f"{dst}{name}.bias"] = f"{src}{name}.bias"
    missing = sorted(v for v in [*pairs.values(), *conv.values()] if v not in sd)
    if missing:
        raise ValueError(
            f"the GPT-2 weights lack {len(missing)} tensor(s), e.g. {missing[:3]}; "
            f"is this a GPT-2 checkpoint with n_layer={cfg.n_layer}?"
        )
    head = sd.get("lm_head.weight")
    if head is not None and not torch.equal(head, sd["wte.weight"]):
        raise ValueError("lm_head.weight differs from wte.weight: untied GPT-2 variants are not supported")
    out = {ours: sd[theirs] for ours, theirs in pairs.items()}
    out.update({ours: sd[theirs].t().contiguous() for ours, theirs in conv.items()})  # -> [out, in]
    return out


def _build(cfg: ModelConfig, sd: Mapping[str, torch.Tensor]) -> GPT:
    model = GPT(cfg)
    model.load_weights(_convert_state_dict(sd, cfg))
    return model.eval()


def gpt_from_hf(hf_model) -> GPT:
    """Convert a ``transformers.GPT2LMHeadModel`` into an equivalent :class:`GPT` (eval mode).

    Same logits and attention patterns (float32, CPU); the Hugging Face model is not modified.
    """
    cfg = config_from_hf(hf_model.config)
    return _build(cfg, hf_model.state_dict())


# -- loading ------------------------------------------------------------------------------


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = [folder / f for f in sorted(set(weight_map.values()))]
    else:
        hint = ""
        if any((folder / n).is_file() for n in ("pytorch_model.bin", "model.bin")):
            hint = (" It holds a pickled pytorch_model.bin, which LM Lens does not read: re-save it with "
                    "save_pretrained(folder, safe_serialization=True).")
        raise ValueError(f"folder {str(folder)!r} has no model.safetensors.{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{str(f)!r} is not a readable safetensors file: {e}") from e
    return tensors


def _folder_tokenizer(folder: Path) -> BPETokenizer | None:
    """``tokenizer.json``, else GPT-2's ``vocab.json`` + ``merges.txt``, else None."""
    if (folder / "tokenizer.json").is_file():
        return BPETokenizer.from_hf_json(folder / "tokenizer.json")
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if vocab.is_file() and merges.is_file():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        hf = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        return BPETokenizer(hf)
    log.info("no tokenizer.json (or vocab.json + merges.txt) in %s: returning the model alone", folder)
    return None


def _load_folder(folder: Path) -> tuple[GPT, BPETokenizer | None]:
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"folder {str(folder)!r} has no config.json; save the model with save_pretrained(folder)")
    try:
        hf_cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(cfg_file)!r} is not valid JSON: {e}") from e
    if not isinstance(hf_cfg, dict):
        raise ValueError(f"{str(cfg_file)!r} must hold a JSON object (a GPT2Config)")
    cfg = config_from_hf(hf_cfg)
    return _build(cfg, _read_safetensors(folder)), _folder_tokenizer(folder)


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _hub_unreachable(timeout: float = 5.0) -> str | None:
    """``None`` if a TCP connection to the hub's endpoint opens within ``timeout`` s, else why not.

    Without it, a machine with no network waits through huggingface_hub's retries (about 23 s
    for a refused connection, minutes for one that never answers) before saying so. Skipped
    (``None``) behind a proxy, where a direct connection proves nothing.
    """
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"{host}:{port} ({e.strerror or type(e).__name__})"
    return None


def _hub_tokenizer(name: str, local_only: bool) -> BPETokenizer:
    """The repo's ``tokenizer.json``, else GPT-2's ``vocab.json`` + ``merges.txt``, via the hub cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return BPETokenizer.from_hf_json(hf_hub_download(name, "tokenizer.json", local_files_only=local_only))
    except EntryNotFoundError:
        vocab = hf_hub_download(name, "vocab.json", local_files_only=local_only)
        hf_hub_download(name, "merges.txt", local_files_only=local_only)
        tok = _folder_tokenizer(Path(vocab).parent)
        if tok is None:
            raise ValueError(f"{name!r} on the hub has neither tokenizer.json nor vocab.json + merges.txt")
        return tok


def _load_hub(name: str) -> tuple[GPT, BPETokenizer]:
    try:
        import transformers
    except ImportError:
        raise ValueError(
            f"loading {name!r} from the Hugging Face hub needs the transformers package: "
            f"pip install {TRANSFORMERS_PIN} (or give a local folder with config.json and model.safetensors)"
        ) from None
    from huggingface_hub import constants

    def fetch(local_only: bool):
        hf_model = transformers.GPT2LMHeadModel.from_pretrained(name, local_files_only=local_only)
        return hf_model, _hub_tokenizer(name, local_only)

    try:  # downloaded before: load from the cache, no network, no waiting
        hf_model, tok = fetch(local_only=True)
    except Exception:  # not (all) in the cache; the hub raises many types
        if constants.HF_HUB_OFFLINE:
            raise ValueError(f"{name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; unset it "
                             f"to download, or give a local folder with config.json and model.safetensors") from None
        why = _hub_unreachable()
        if why is not None:
            raise ValueError(f"could not reach the Hugging Face hub at {why} to download {name!r}; check the "
                             f"network, or give a local folder with config.json and model.safetensors") from None
        try:
            hf_model, tok = fetch(local_only=False)
        except Exception as e:  # network, unknown repo, not GPT-2: the hub raises many types
            raise ValueError(
                f"could not load {name!r} from the Hugging Face hub ({type(e).__name__}: {e}); check the name "
                f"and the network, or give a local folder with config.json and model.safetensors"
            ) from e
    return gpt_from_hf(hf_model), tok


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~", "\\")) or (len(s) > 1 and s[1] == ":")


def load_pretrained(name_or_path: str) -> tuple[GPT, BPETokenizer | None]:
    """A GPT-2-layout model and its tokenizer: ``(model in eval mode, tokenizer)``.

    ``name_or_path`` is a local folder holding ``config.json`` and ``model.safetensors`` (plus
    ``tokenizer.json``, or GPT-2's ``vocab.json`` + ``merges.txt``; without them the tokenizer
    is None), or a Hugging Face hub name such as ``"gpt2"`` (downloads; needs ``transformers``).
    Anything that cannot be loaded raises ``ValueError`` saying what to do.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"give a model folder or a hub name such as 'gpt2', got {name_or_path!r}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        model, tok = _load_folder(path)
    elif path.exists():
        raise ValueError(f"{name_or_path!r} is a file; give the folder that holds config.json and model.safetensors")
    elif _looks_like_path(name_or_path):
        raise ValueError(f"folder {name_or_path!r} does not exist; check the path")
    else:
        model, tok = _load_hub(name_or_path)
    if tok is not None and tok.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tok.vocab_size} tokens but the model only {model.config.vocab_size} "
            f"embeddings; they do not belong together"
        )
    log.info("loaded %s: %d layers x %d heads, %d wide", name_or_path, model.config.n_layer,
             model.config.n_head, model.config.n_embd)
    return model, tok
