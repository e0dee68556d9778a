"""The one registry class (docs/design.md §7) behind every extension point: methods, models, dataset sources, export
formats and runtimes. Each entry is one module that registers itself on import; help text, listings and "did you
mean" come from the registry, so adding an entry edits nothing else."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from edgekd.errors import EdgeKDError

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """Entries by name, in the order they were registered.

    ``attribute``: the entry's own attribute that names it (``name``, ``key``), so a class decorator can register it.
    ``fold_case``: names are looked up case-insensitively (model names are copied from papers in mixed case); the
    registered spelling is what listings show. ``shown_as``: the attribute an unknown-name error lists (a dataset's
    ``cifar10:ROOT``). ``hint``: what that error tells the user to run. ``lazy(prefix, load)`` adds a function that
    registers a whole family (timm's models) when one of its names, or the full list, is first asked for.
    ``plugins``: modules imported before the first lookup, whose imports register the entries (the dataset
    sources), so the registry's module need not import them.
    """

    def __init__(self, what: str, *, attribute: str = "name", fold_case: bool = False, hint: str = "",
                 plugins: tuple[str, ...] = (), shown_as: str | None = None) -> None:
        super().__init__()
        self.what, self.attribute, self.fold_case, self.hint = what, attribute, fold_case, hint
        self.shown_as = shown_as or attribute
        self._lazy: dict[str, Callable[[], None]] = {}
        self._plugins = list(plugins)

    def _key(self, name: str) -> str:
        return name.strip().lower() if self.fold_case else name.strip()

    def register(self, entry: T, name: str | None = None) -> T:
        """Add ``entry`` under ``name`` (default: its ``attribute``); usable as a class decorator. A second entry
        under a taken name is a programming error; registering the same entry again is harmless."""
        key = self._key(name if name is not None else getattr(entry, self.attribute))
        if key in self and self[key] is not entry:
            raise ValueError(f"{self.what} {key!r} is registered twice")
        self[key] = entry
        return entry

    def unregister(self, name: str) -> None:
        self.pop(self._key(name), None)

    def lazy(self, prefix: str, load: Callable[[], None]) -> None:
        self._lazy[prefix] = load

    def _load(self, key: str | None = None) -> None:
        while self._plugins:
            importlib.import_module(self._plugins.pop(0))
        prefixes = [p for p in self._lazy if key is not None and key.startswith(p)] or list(self._lazy)
        for prefix in prefixes:
            self._lazy.pop(prefix)()

    def names(self) -> list[str]:
        """Every name, families registered on first need included, in registration order."""
        self._load()
        return list(self)

    def lookup(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name is an ``EdgeKDError`` with the closest names."""
        key = self._key(name)
        if key not in self:
            self._load(key)
        if key in self:
            return self[key]
        self._load()  # every family, for the suggestions
        if key in self:
            return self[key]
        close = difflib.get_close_matches(key, list(self), n=3, cutoff=0.6)
        shown = [self._shown(k) for k in (close or self)]
        hint = (f"did you mean {', '.join(shown)}?" if close else
                f"choose one of {', '.join(shown)}" if len(self) <= 20 else "none is close")
        raise EdgeKDError(f"unknown {self.what} {name!r} ({hint}){'; ' + self.hint if self.hint else ''}")

    def _shown(self, key: str) -> str:
        """The registered spelling (names are stored folded when ``fold_case``), or how the entry is written."""
        return str(getattr(self[key], self.shown_as, key))

