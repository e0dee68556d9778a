"""The registries of classes that extensions add to (runtimes, export formats): name -> class, in the order the
classes were registered, filled by a class decorator."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T", bound=type)


class Registry(dict[str, T]):
    """Classes by the value of their ``attribute`` (``name``, ``key``); registering a second class under a taken
    name is a programming error, registering the same class again is harmless."""

    def __init__(self, what: str, attribute: str) -> None:
        super().__init__()
        self.what, self.attribute = what, attribute

    def register(self, cls: T) -> T:
        """Class decorator: add ``cls`` under its ``attribute``."""
        name = getattr(cls, self.attribute)
        if name in self and self[name] is not cls:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self[name] = cls
        return cls
