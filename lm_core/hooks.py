"""Hook points and the activation cache.

The model's arithmetic lives in ``model.py``; this module holds the machinery that lets a
caller look at (or edit) any intermediate activation, in the way TransformerLens does it:

* :class:`HookPoint` is an identity module placed wherever an activation is worth naming.
  Its name comes from the module tree (``blocks.0.attn.hook_pattern``), so names are never
  typed twice. Hooks are kept per thread, not on the module, so one model object can serve
  several threads (a server's sessions) and each sees only its own hooks.
* :class:`HookedModule` gives a model ``hook_names``, ``hooks()``, ``run_with_cache()`` and
  ``run_with_hooks()``. Hooks are always attached through a context manager and always removed,
  also when a hook raises.
* :class:`ActivationCache` is a read-only mapping of name -> detached CPU tensor, with the
  ``cache["pattern", 0]`` shorthand.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Union

import torch
from torch import nn

from .runtime import tune_allocator

# fn(activation, hook_name) -> replacement activation, or None to leave it unchanged.
HookFn = Callable[[torch.Tensor, str], Union[torch.Tensor, None]]
NameFilter = Union[None, str, Iterable[str], Callable[[str], bool]]


# Hooks attached right now, per thread (and per asyncio task): HookPoint -> its functions.
# A model object is shared freely (a server caches one for every session), so hooks must not
# live on the HookPoints themselves: one session's run_with_cache would capture another
# session's forward, and a plain forward in one thread would run another thread's edit. A
# ContextVar gives each thread its own view; a new thread starts with no hooks. The mapping is
# replaced, never mutated, so a nested ``hooks()`` block restores its parent's view exactly.
_ATTACHED: contextvars.ContextVar[Mapping["HookPoint", tuple[HookFn, ...]]] = contextvars.ContextVar(
    "lm_core_attached_hooks", default=MappingProxyType({})
)


def _attach(pairs: Iterable[tuple["HookPoint", HookFn]]) -> contextvars.Token:
    table = dict(_ATTACHED.get())
    for hp, fn in pairs:
        table[hp] = table.get(hp, ()) + (fn,)
    return _ATTACHED.set(MappingProxyType(table))


class HookPoint(nn.Module):
    """Identity module marking a named activation.

    ``forward`` returns its input unchanged unless a hook is attached *in the calling thread*.
    ``active`` tells the model whether anyone in this thread is watching, so attention can take
    the fused kernel when nobody is.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""  # filled in by HookedModule.setup_hooks()

    # nn.Module defines no __eq__/__hash__, so a HookPoint hashes by identity: a dict key.

    @property
    def active(self) -> bool:
        return self in _ATTACHED.get()

    @property
    def fns(self) -> tuple[HookFn, ...]:
        """The hooks attached to this point in the calling thread, in call order."""
        return _ATTACHED.get().get(self, ())

    def add(self, fn: HookFn) -> None:
        """Attach ``fn`` in the calling thread until :meth:`remove` (prefer ``model.hooks()``)."""
        _attach([(self, fn)])

    def remove(self, fn: HookFn) -> None:
        table = dict(_ATTACHED.get())
        fns = list(table.get(self, ()))
        for i in range(len(fns) - 1, -1, -1):
            if fns[i] is fn:
                del fns[i]
                break
        if fns:
            table[self] = tuple(fns)
        else:
            table.pop(self, None)
        _ATTACHED.set(MappingProxyType(table))

    def clear(self) -> None:
        table = dict(_ATTACHED.get())
        if table.pop(self, None) is not None:
            _ATTACHED.set(MappingProxyType(table))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # skip nn.Module dispatch: hot path
        fns = _ATTACHED.get().get(self)
        if not fns:
            return x
        for fn in fns:
            out = fn(x, self.name)
            if out is not None:
                if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                    raise ValueError(
                        f"hook on {self.name!r} returned "
                        f"{type(out).__name__ if not isinstance(out, torch.Tensor) else tuple(out.shape)}; "
                        f"it must return None or a tensor of shape {tuple(x.shape)}"
                    )
                x = out
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def extra_repr(self) -> str:
        return self.name


# Short names for cache["pattern", 0]-style lookups, as in TransformerLens.
_SHORT = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "q": "blocks.{l}.attn.hook_q",
    "k": "blocks.{l}.attn.hook_k",
    "v": "blocks.{l}.attn.hook_v",
    "z": "blocks.{l}.attn.hook_z",
    "attn_scores": "blocks.{l}.attn.hook_attn_scores",
    "scores": "blocks.{l}.attn.hook_attn_scores",
    "pattern": "blocks.{l}.attn.hook_pattern",
    "mlp_pre": "blocks.{l}.mlp.hook_pre",
    "pre": "blocks.{l}.mlp.hook_pre",
    "mlp_post": "blocks.{l}.mlp.hook_post",
    "post": "blocks.{l}.mlp.hook_post",
    "normalized": "ln_final.hook_normalized",
    "ln_final": "ln_final.hook_normalized",
}


def full_hook_name(key: str | tuple) -> str:
    """``"pattern", 0`` -> ``"blocks.0.attn.hook_pattern"``; full names pass through."""
    if isinstance(key, tuple):
        short, *rest = key
        if short not in _SHORT:
            raise KeyError(f"unknown activation {short!r}; use one of {sorted(_SHORT)}")
        template = _SHORT[short]
        if "{l}" in template:
            if not rest:
                raise KeyError(f"{short!r} needs a layer index, e.g. cache[{short!r}, 0]")
            return template.format(l=int(rest[0]))
        return template
    if key in _SHORT:
        if "{l}" in _SHORT[key]:
            raise KeyError(f"{key!r} needs a layer index, e.g. cache[{key!r}, 0]")
        return _SHORT[key]
    return key


class ActivationCache(Mapping):
    """Read-only mapping from hook name to a detached CPU tensor (batch dimension kept)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._t = tensors

    def __getitem__(self, key: str | tuple) -> torch.Tensor:
        name = full_hook_name(key)
        try:
            return self._t[name]
        except KeyError:
            raise KeyError(
                f"{name!r} was not captured; pass names=None (everything) or include it in names"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self._t)} tensors)"

    def to_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._t)

    def stack(self, short: str, n_layer: int) -> torch.Tensor:
        """Stack a per-layer activation over layers: ``[L, ...]``."""
        return torch.stack([self[short, l] for l in range(n_layer)])


def _make_filter(names: NameFilter) -> Callable[[str], bool]:
    if names is None:
        return lambda n: True
    if callable(names):
        return names
    if isinstance(names, str):
        wanted = {full_hook_name(names)}
    else:
        wanted = {full_hook_name(n) for n in names}
    return wanted.__contains__


class HookedModule(nn.Module):
    """Mixin for a model made of HookPoints. Call ``setup_hooks()`` at the end of __init__."""

    def setup_hooks(self) -> None:
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    @property
    def hook_names(self) -> list[str]:
        return list(self.hook_dict)

    def _check_names(self, names: Iterable[str]) -> None:
        unknown = [n for n in names if n not in self.hook_dict]
        if unknown:
            raise ValueError(
                f"unknown hook name(s) {unknown}; valid names are listed by model.hook_names, "
                f"e.g. {self.hook_names[:3]}"
            )

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = ()):
        """Attach ``(name or predicate, fn)`` hooks for the duration of the ``with`` block.

        The hooks belong to the calling thread: a forward of the same model object in another
        thread neither runs them nor is seen by them. They are removed on leaving the block,
        also when the block raises.
        """
        pairs: list[tuple[HookPoint, HookFn]] = []
        for key, fn in fwd_hooks:
            if callable(key):
                points = [hp for n, hp in self.hook_dict.items() if key(n)]
            else:
                name = full_hook_name(key)
                self._check_names([name])
                points = [self.hook_dict[name]]
            pairs.extend((hp, fn) for hp in points)
        token = _attach(pairs)
        try:
            yield self
        finally:
            _ATTACHED.reset(token)

    def reset_hooks(self) -> None:
        """Detach every hook of this model in the calling thread."""
        mine = set(self.hook_dict.values())
        _ATTACHED.set(MappingProxyType({hp: f for hp, f in _ATTACHED.get().items() if hp not in mine}))

    def run_with_hooks(self, idx: torch.Tensor, fwd_hooks=(), **kwargs) -> torch.Tensor:
        """Forward with ``fwd_hooks=[(name, fn)]``; fn(tensor, name) may return a replacement."""
        with self.hooks(fwd_hooks):
            return self(idx, **kwargs)

    def run_with_cache(
        self, idx: torch.Tensor, names: NameFilter = None, *, device: str | torch.device = "cpu",
        fwd_hooks=(), **kwargs,
    ) -> tuple[torch.Tensor, ActivationCache]:
        """Forward and keep the activations chosen by ``names``.

        ``names`` is None (every hook), a list of names (short forms like ``("pattern", 0)``
        are not accepted here; use full names), or a predicate ``str -> bool``. Only the chosen
        activations are stored, detached, on ``device`` (CPU by default), so memory stays
        bounded by what was asked for. ``fwd_hooks`` edits are applied before caching.
        """
        tune_allocator()  # once per process: keeps capture ~1.2x a plain forward (see lm_core.runtime)
        keep = _make_filter(names)
        if names is not None and not callable(names):
            self._check_names([full_hook_name(n) for n in ([names] if isinstance(names, str) else names)])
        store: dict[str, torch.Tensor] = {}
        device = torch.device(device)

        def save(t: torch.Tensor, name: str) -> None:
            store[name] = t.detach().to(device)

        # one predicate for every kept name: attached in one pass (generation attaches per token)
        with self.hooks(list(fwd_hooks) + [(keep, save)]):
            logits = self(idx, **kwargs)
        return logits, ActivationCache(store)
