"""One registry type for everything named: :class:`Registry`. It imports nothing but the standard
library, so the registries are known (and a config checked against them) before torch loads.

The registries of what a level is made of live here too, with the core's own entries:
:data:`REWARD_RULES`, :data:`TERMINATIONS`, :data:`GROUPINGS` and :data:`CHANNELS`. The families'
parts (HiMPo's regrouping and advantage reward, HRL-CG's relative goals, ALMA's subtask
termination and reward) are registered by :mod:`hmarl.algorithms`, which ``import hmarl``
loads; a plug-in registers its own the same way (``REWARD_RULES["mine"] = Mine``)."""
from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, TypeVar

from hmarl.lazy import attribute

V = TypeVar("V")


class _Pending:
    """A registry entry not loaded yet: ``load()`` returns its value or registers it itself."""

    __slots__ = ("load",)

    def __init__(self, load: Callable[[], Any]):
        self.load = load


class Registry(MutableMapping[str, V]):
    """Everything named in hmarl (learners, families, envs, reward rules, communication functions,
    terminations): a dict of ``kind`` entries whose values may be imported on first lookup
    (:meth:`add_lazy`).

    Membership, iteration and ``len`` see every name without importing anything (names in
    the order they were added); ``registry[name]`` (and ``get``, ``items``, ``values``)
    imports what it returns. Assigning a name (or :meth:`register` as a decorator) adds or
    replaces an entry; :meth:`lookup` is the lookup that fails with the names available.
    """

    def __init__(self, kind: str, entries: dict[str, V] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = dict(entries or {})

    def register(self, name: str) -> Callable[[V], V]:
        """A decorator: ``@REGISTRY.register("mine")`` above a class adds it under ``name``."""
        def add(value: V) -> V:
            self[name] = value
            return value

        return add

    def lookup(self, name: Any, where: str = "") -> V:
        """``self[name]``, or one ``ValueError`` naming the available entries (``where`` prefixes it)."""
        if name not in self._entries:
            prefix = f"{where}: " if where else ""
            raise ValueError(f"{prefix}unknown {self.kind} {name!r}; available: {', '.join(self._entries)}")
        return self[name]

    def add_lazy(self, name: str, load: Callable[[], V]) -> None:
        """Make ``name`` known now and its value ``load()``'s, called on the first lookup. ``load``
        may instead assign ``registry[name]`` itself (an env module registering its constructor)."""
        self._entries[name] = _Pending(load)

    def pending(self, name: str) -> bool:
        """Whether ``name`` is known but not loaded yet."""
        return isinstance(self._entries.get(name), _Pending)

    def __getitem__(self, name: str) -> V:
        entry = self._entries[name]
        if isinstance(entry, _Pending):
            value = entry.load()
            if self._entries.get(name) is entry:  # the loader did not register the value itself
                self._entries[name] = value
            entry = self._entries[name]
        return entry

    def __setitem__(self, name: str, value: V) -> None:
        self._entries[name] = value

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:  # Mapping's default would load the entry
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:  # MutableMapping's default pops (and so loads) every entry
        """Forget every entry, loaded or not."""
        self._entries.clear()

    def __repr__(self) -> str:
        shown = ", ".join(f"{name!r}: <not loaded>" if isinstance(entry, _Pending) else f"{name!r}: {entry!r}"
                          for name, entry in self._entries.items())
        return f"{type(self).__name__}({{{shown}}})"


REWARD_RULES: Registry = Registry("reward")
"""Reward rules (:class:`hmarl.rewards.RewardRule`) by the name a level's ``reward`` gives."""
REWARD_RULES.add_lazy("sum_up", attribute("hmarl.rewards", "SumUp"))

TERMINATIONS: Registry = Registry("termination")
"""Terminations (:class:`hmarl.strategies.Termination`) by the name a level's ``termination`` gives;
``decide_every: k`` is ``on_subtask_change``."""
TERMINATIONS.add_lazy("every", attribute("hmarl.strategies", "Every"))

GROUPINGS: Registry = Registry("grouping")
"""``make(n_units, groups) -> Grouping`` by the name a level's ``grouping`` gives (with ``groups``)."""
GROUPINGS.add_lazy("static", attribute("hmarl.strategies", "static_grouping"))

CHANNELS: Registry = Registry("channel")
"""Command channels beyond the one-hot and raw ones every command space has, by name:
``relative_goals: true`` is ``relative_goal`` (``make(space, goal_dims)``)."""
