"""One mechanism for plug-ins found by name: each lives in its own module of a package, registers a factory
there with `@registry.register(name)`, and its module is imported the first time the name is asked for."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class Registry(Generic[F]):
    """Factories of type `F` by name, for the modules of `package`; `names` are the ones a config may give."""

    def __init__(self, package: str, names: Sequence[str], what: str) -> None:
        self.package = package
        self.names = tuple(names)
        self.what = what
        self._factories: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def decorate(factory: F) -> F:
            self._factories[name] = factory
            return factory

        return decorate

    def factory(self, name: str) -> F:
        """The factory registered as `name` (raises ValueError for a name that is not one of `names`)."""
        if name not in self.names:
            raise ValueError(f"unknown {self.what} {name!r} (choose from: {', '.join(self.names)})")
        if name not in self._factories:
            importlib.import_module(f"{self.package}.{name}")
        return self._factories[name]
