"""How a policy declares its options once, for every consumer (sidebar, CLI, benchmark grid, limits).

A policy file writes its tunable fields as `option(default, help=..., choices=..., minimum=...)`.
The declaration lives in the dataclass field's metadata, so `declared_options(cls)` reads it back with
the type and default of the field itself: nothing is repeated elsewhere. `scorer=True` marks an
option that changes the policy's scores (SnapKV's window, kernel and pooling); the others only change
how scores are turned into a selection, so a prepared prompt can reuse the scores across them.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class OptionSpec:
    """One declared option: what a form, a CLI flag or a grid cell needs to offer it."""

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    scorer: bool = False
    optional: bool = False  # None is allowed and means "the policy decides" (e.g. SnapKV's recent window)

    @property
    def flag(self) -> str:
        """The command-line spelling: `crush_fraction` -> `--crush-fraction`."""
        return "--" + self.name.replace("_", "-")


def option(default: Any, help: str, *, kind: type | None = None, choices: tuple[Any, ...] | None = None,
           minimum: float | None = None, maximum: float | None = None, step: float | None = None,
           scorer: bool = False) -> Any:
    """A dataclass field that also declares itself as a user-facing option."""
    spec = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "step": step,
            "scorer": scorer, "kind": kind or (type(default) if default is not None else int)}
    return field(default=default, metadata={"option": spec})


def declared_options(cls_or_policy: Any) -> list[OptionSpec]:
    """The options a policy class (or instance) declares, in field order (base class fields first)."""
    specs = []
    for item in fields(cls_or_policy):
        meta = item.metadata.get("option")
        if meta is None:
            continue
        default = item.default if item.default is not MISSING else None
        specs.append(OptionSpec(item.name, meta["kind"], default, meta["help"], meta["choices"], meta["minimum"],
                                meta["maximum"], meta["step"], meta["scorer"], optional=default is None))
    return specs
