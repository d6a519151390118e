"""A registry of named records: the one shape of every extension point (lowerings, backends,
normalizers, feature maps). A dict by name, in registration order, with each name registered once."""
from __future__ import annotations

import contextlib
from typing import Iterator, TypeVar

from .source import AttnccError

T = TypeVar("T")


class Registry(dict):
    """Records with a `name`, by name. `kind` names them in errors ("lowering `x` is registered twice")."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, record: T) -> T:
        name = record.name
        if not (isinstance(name, str) and name.isidentifier() and name.isascii()):
            raise AttnccError(f"{self.kind} name {name!r} is not an identifier")
        if name in self:
            raise AttnccError(f"{self.kind} `{name}` is registered twice")
        self[name] = record
        return record

    def unregister(self, name: str) -> None:
        self.pop(name, None)

    @contextlib.contextmanager
    def registered(self, record: T) -> Iterator[T]:
        """`record` registered for the duration of a `with` block (tests, experiments, notebooks)."""
        self.register(record)
        try:
            yield record
        finally:
            self.unregister(record.name)

    def lookup(self, name: str):
        """The record of `name`; an unknown name is an error that lists the registered ones."""
        if name not in self:
            raise AttnccError(f"unknown {self.kind} `{name}`; registered: {', '.join(self)}")
        return self[name]
