"""The one registry class (docs/design.md §7) behind every extension point: methods, models, dataset sources, export
formats and runtimes. Each entry is one module that registers itself on import; help text, listings and "did you
mean" come from the registry, so adding an entry edits nothing else.

A registry with an entry-point ``group`` (``edgekd.methods``, ``edgekd.models``, ``edgekd.datasets``) learns its
modules from package metadata: edgekd's own in its ``pyproject.toml``, and any installed package may add more. The
names are known without importing anything, so a mistyped name is answered before torch loads."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, NoReturn, TypeVar

from edgekd.errors import EdgeKDError

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """Entries by name, in the order they were registered.

    ``attribute``: the entry's own attribute that names it (``name``, ``key``), so a class decorator can register it.
    ``fold_case``: names are looked up case-insensitively (model names are copied from papers in mixed case); the
    registered spelling is what listings show. ``shown_as``: the attribute an unknown-name error lists (a dataset's
    ``cifar10:ROOT``). ``hint``: what that error tells the user to run. ``group``: the entry-point group whose
    entries name a module to import (which registers that name) or, for a name ending in ``/``, a function that
    registers a whole family (timm's models) when one of its names, or the full list, is first asked for.
    """

    def __init__(self, what: str, *, attribute: str = "name", fold_case: bool = False, hint: str = "",
                 group: str | None = None, shown_as: str | None = None) -> None:
        super().__init__()
        self.what, self.attribute, self.fold_case, self.hint = what, attribute, fold_case, hint
        self.group = group
        self.shown_as = shown_as or attribute
        self._pending: dict[str, EntryPoint] | None = None

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

    def _declared(self) -> dict[str, EntryPoint]:
        """The group's entry points not loaded yet, by folded name (read once from the installed metadata)."""
        if self._pending is None:
            self._pending = {}
            if self.group is not None:
                found = entry_points(group=self.group)
                if not found:
                    raise EdgeKDError(f"no {self.what}s are registered: the {self.group} entry points are missing, "
                                      "so edgekd is not installed; install it (`uv sync` or `pip install -e .`)")
                self._pending = {self._key(ep.name): ep for ep in found}
        return self._pending

    def _load(self, keys: Iterable[str]) -> None:
        pending = self._declared()
        for key in keys:
            ep = pending.pop(key, None)
            if ep is not None:
                loaded = ep.load()  # imports the module, which registers its entries
                if key.endswith("/"):
                    loaded()  # a family registers its names on demand

    def _family(self, key: str) -> str | None:
        return next((k for k in self._declared() if k.endswith("/") and key.startswith(k)), None)

    def names(self) -> list[str]:
        """Every name, in registration order: the modules' entries (in the metadata's order), then the families'."""
        self._load(sorted(self._declared(), key=lambda k: k.endswith("/")))
        return list(self)

    def known(self) -> list[str]:
        """The names known without importing any entry's module: registered ones and declared ones (not families)."""
        return list(dict.fromkeys([*self, *(k for k in self._declared() if not k.endswith("/"))]))

    def check(self, name: str) -> None:
        """Raise the unknown-name error for a name neither registered nor declared, importing nothing: a mistyped
        name is one line before torch loads. A name in a family (``timm/...``) is checked when the family loads."""
        key = self._key(name)
        if key in self or key in self._declared() or self._family(key) is not None:
            return
        self._unknown(name, self.known())

    def lookup(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name is an ``EdgeKDError`` with the closest names."""
        key = self._key(name)
        if key not in self:
            self._load([key, self._family(key) or key])
        if key not in self:
            self.names()  # every family, for the suggestions
        if key in self:
            return self[key]
        self._unknown(name, list(self))

    def _unknown(self, name: str, names: list[str]) -> NoReturn:
        close = difflib.get_close_matches(self._key(name), names, n=3, cutoff=0.6)
        shown = [self._shown(k) for k in (close or names)]
        hint = (f"did you mean {', '.join(shown)}?" if close else
                f"choose one of {', '.join(shown)}" if len(names) <= 20 else "none is close")
        raise EdgeKDError(f"unknown {self.what} {name!r} ({hint}){'; ' + self.hint if self.hint else ''}")

    def _shown(self, key: str) -> str:
        """The registered spelling (names are stored folded when ``fold_case``), or how the entry is written; a name
        only declared so far is shown as declared."""
        if key not in self:
            return self._declared()[key].name if key in self._declared() else key
        return str(getattr(self[key], self.shown_as, key))
