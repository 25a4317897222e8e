"""Pretrained weights: Hugging Face checkpoints -> lm_core.GPT.

Families: GPT-2, Llama (SmolLM2, TinyLlama, Llama 3.x), Mistral, Qwen2 / Qwen2.5, Qwen3 and
GPT-NeoX (Pythia); how each maps onto :class:`ModelConfig` lives in :mod:`lm_core.convert`.
Three ways in:

* :func:`gpt_from_hf` converts an in-memory ``transformers`` model (needs only an object with a
  ``config`` and ``state_dict()``; ``transformers`` itself is not imported).
* :func:`load_pretrained` with a folder (``config.json`` + ``model.safetensors`` [+
  ``tokenizer.json``], as written by ``save_pretrained`` or downloaded from the hub) reads the
  files directly with ``safetensors``: no ``transformers`` needed, no pickle.
* :func:`load_pretrained` with a hub name (``"gpt2"``, ``"EleutherAI/pythia-70m"``) and an
  optional ``revision`` (a branch such as Pythia's ``"step1000"``, a tag or a commit) downloads
  through ``transformers.AutoModelForCausalLM.from_pretrained`` (the tokenizer through
  ``huggingface_hub``); ``transformers`` is an optional extra. The architecture is checked from
  ``config.json`` first, so an unsupported one is refused before any weights are fetched. A
  model downloaded before loads from the cache with no network; with no network and no cache
  it fails within seconds, not after the hub's retries.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import torch

from .convert import FAMILIES, build, config_from_hf, gpt_from_hf
from .model import GPT
from .tokenizers import BPETokenizer

__all__ = ["FAMILIES", "config_from_hf", "gpt_from_hf", "load_pretrained", "TRANSFORMERS_PIN"]

log = logging.getLogger(__name__)

TRANSFORMERS_PIN = "transformers==5.23.0"

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
        raise ValueError(f"{str(cfg_file)!r} must hold a JSON object (a transformers config)")
    cfg = config_from_hf(hf_cfg)
    return build(cfg, _read_safetensors(folder), hf_cfg.get("model_type")), _folder_tokenizer(folder)


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


def _hub_tokenizer(name: str, local_only: bool, revision: str | None = None) -> BPETokenizer:
    """The repo's ``tokenizer.json``, else GPT-2's ``vocab.json`` + ``merges.txt``, via the hub cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    kw = dict(local_files_only=local_only, revision=revision)
    try:
        return BPETokenizer.from_hf_json(hf_hub_download(name, "tokenizer.json", **kw))
    except EntryNotFoundError:
        vocab = hf_hub_download(name, "vocab.json", **kw)
        hf_hub_download(name, "merges.txt", **kw)
        tok = _folder_tokenizer(Path(vocab).parent)
        if tok is None:
            raise ValueError(f"{name!r} on the hub has neither tokenizer.json nor vocab.json + merges.txt")
        return tok


def _load_hub(name: str, revision: str | None = None) -> tuple[GPT, BPETokenizer]:
    try:
        import transformers
    except ImportError:
        raise ValueError(
            f"loading {name!r} from the Hugging Face hub needs the transformers package: "
            f"pip install {TRANSFORMERS_PIN} (or give a local folder with config.json and model.safetensors)"
        ) from None
    from huggingface_hub import constants

    at = f"{name!r}" + (f" at revision {revision!r}" if revision else "")

    def fetch(local_only: bool):
        kw = dict(revision=revision, local_files_only=local_only)
        hf_cfg = transformers.AutoConfig.from_pretrained(name, **kw)
        config_from_hf(hf_cfg)  # an unsupported architecture is refused before the weights come
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(name, **kw)
        return hf_model, _hub_tokenizer(name, local_only, revision)

    try:  # downloaded before: load from the cache, no network, no waiting
        hf_model, tok = fetch(local_only=True)
    except ValueError as e:
        if "not supported" in str(e):
            raise
        hf_model = None
    except Exception:  # not (all) in the cache; the hub raises many types
        hf_model = None
    if hf_model is None:
        if constants.HF_HUB_OFFLINE:
            raise ValueError(f"{at} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; unset it "
                             f"to download, or give a local folder with config.json and model.safetensors") from None
        why = _hub_unreachable()
        if why is not None:
            raise ValueError(f"could not reach the Hugging Face hub at {why} to download {at}; check the "
                             f"network, or give a local folder with config.json and model.safetensors") from None
        try:
            hf_model, tok = fetch(local_only=False)
        except ValueError as e:
            if "not supported" in str(e):
                raise ValueError(f"{name!r}: {e}") from None
            raise ValueError(f"could not load {at} from the Hugging Face hub ({type(e).__name__}: {e}); check "
                             f"the name and the network, or give a local folder with config.json and "
                             f"model.safetensors") from e
        except Exception as e:  # network, unknown repo or revision: the hub raises many types
            raise ValueError(
                f"could not load {at} from the Hugging Face hub ({type(e).__name__}: {e}); check the name "
                f"and the network, or give a local folder with config.json and model.safetensors"
            ) from e
    return gpt_from_hf(hf_model), tok


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~", "\\")) or (len(s) > 1 and s[1] == ":")


def load_pretrained(name_or_path: str, revision: str | None = None) -> tuple[GPT, BPETokenizer | None]:
    """A model of a supported family and its tokenizer: ``(model in eval mode, tokenizer)``.

    ``name_or_path`` is a local folder holding ``config.json`` and ``model.safetensors`` (plus
    ``tokenizer.json``, or GPT-2's ``vocab.json`` + ``merges.txt``; without them the tokenizer
    is None), or a Hugging Face hub name such as ``"gpt2"`` or ``"HuggingFaceTB/SmolLM2-135M"``
    (downloads; needs ``transformers``). ``revision`` picks a branch, tag or commit of a hub
    repo (Pythia's training checkpoints are branches ``"step0"`` .. ``"step143000"``, see
    :mod:`lm_core.checkpoints`). Anything that cannot be loaded raises ``ValueError`` saying
    what to do; an architecture outside the supported families is named.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"give a model folder or a hub name such as 'gpt2', got {name_or_path!r}")
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise ValueError(f"revision must be a branch, tag or commit name such as 'step1000', got {revision!r}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"{name_or_path!r} is a local folder: it has no revisions (revision={revision!r})")
        model, tok = _load_folder(path)
    elif path.exists():
        raise ValueError(f"{name_or_path!r} is a file; give the folder that holds config.json and model.safetensors")
    elif _looks_like_path(name_or_path):
        raise ValueError(f"folder {name_or_path!r} does not exist; check the path")
    else:
        model, tok = _load_hub(name_or_path, revision)
    if tok is not None and tok.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tok.vocab_size} tokens but the model only {model.config.vocab_size} "
            f"embeddings; they do not belong together"
        )
    log.info("loaded %s: %d layers x %d heads, %d wide", name_or_path, model.config.n_layer,
             model.config.n_head, model.config.n_embd)
    return model, tok
