"""What ``check`` found and what ``repair`` does about it: plain result
objects, their JSON form and their text form.  No storage here."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Problem:
    """One damaged or inconsistent stored value or key."""

    table: str
    """The database: ``meta``, ``volumes``, ``checkpoints``, ``pages`` or ``journal``."""
    what: str
    """What is wrong, as a sentence."""
    key: str = ""
    """The LMDB key, in hex."""
    tag: str | None = None
    """Page tag: ``W`` sealed writeset, ``A`` active snapshot, ``G`` generation array."""
    generation: int | None = None
    """The period (or checkpoint generation) the value belongs to."""
    checkpoint: str | None = None
    """The live checkpoint of that generation, where one exists."""
    page: int | None = None
    entry: int | None = None
    """Journal entry sequence number."""
    repair: str = ""
    """What a repair does about it ("" for nothing: it cannot be repaired)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def describe(self) -> str:
        where = [self.table]
        if self.tag is not None:
            where.append(f"{self.tag}/{self.generation}/{self.page}" if self.page is not None else f"{self.tag}/{self.generation}")
        elif self.entry is not None:
            where.append(f"entry {self.entry}")
        elif self.generation is not None:
            where.append(f"generation {self.generation}")
        if self.checkpoint is not None:
            where.append(f"(checkpoint {self.checkpoint!r})")
        return f"{' '.join(where)}: {self.what}"


@dataclasses.dataclass
class VolumeReport:
    """What one volume holds that is damaged, and what a repair does."""

    id: int
    name: str | None
    """None when the volume record itself is unreadable."""
    mode: str | None = None
    problems: list[Problem] = dataclasses.field(default_factory=list)
    unreadable: bool = False
    """The volume record is damaged: nothing of the volume can be trusted;
    a repair removes the volume only when asked to (``remove_unreadable``)."""
    lost_checkpoints: list[str] = dataclasses.field(default_factory=list)
    """Checkpoints whose answers a repair turns into the whole region,
    flagged ``exact=False`` (the periods they cover were damaged)."""
    removed_checkpoints: list[str] = dataclasses.field(default_factory=list)
    """Checkpoints a repair deletes (their own record is damaged)."""
    actions: list[str] = dataclasses.field(default_factory=list)
    """What a repair does (check) or did (repair), in order."""
    generation_id: str | None = None
    """The volume's generation id before a repair, and (``new_generation_id``) after."""
    new_generation_id: str | None = None

    @property
    def clean(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["problems"] = [p.to_dict() for p in self.problems]
        out["clean"] = self.clean
        return out


@dataclasses.dataclass
class CheckReport:
    """The result of :meth:`tiered.Store.check` and :func:`tiered.check`."""

    path: str
    format: int | None
    store_problems: list[Problem] = dataclasses.field(default_factory=list)
    """Problems of no readable volume: the ``meta`` records, keys of
    malformed length, keys of volumes that do not exist."""
    volumes: list[VolumeReport] = dataclasses.field(default_factory=list)
    repaired: bool = False
    """True when this report comes from a repair that committed."""
    after: "CheckReport | None" = None
    """After a repair: the check of the repaired store."""
    store_actions: list[str] = dataclasses.field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Nothing damaged was found."""
        return not self.store_problems and all(v.clean for v in self.volumes)

    @property
    def problems(self) -> list[Problem]:
        """Every problem found, store-level first."""
        return [*self.store_problems, *(p for v in self.volumes for p in v.problems)]

    def volume(self, name: str) -> VolumeReport:
        for v in self.volumes:
            if v.name == name:
                return v
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "clean": self.clean,
            "repaired": self.repaired,
            "store_problems": [p.to_dict() for p in self.store_problems],
            "store_actions": list(self.store_actions),
            "volumes": [v.to_dict() for v in self.volumes],
            **({"after": self.after.to_dict()} if self.after is not None else {}),
        }

    def render(self) -> str:
        """The report as text, for people."""
        lines: list[str] = []
        verb = "repaired" if self.repaired else "repair would"
        n = len(self.problems)
        lines.append(f"store {self.path}: " + ("clean" if not n else f"{n} problem{'s' * (n != 1)}"))
        for p in self.store_problems:
            lines.append(f"  {p.describe()}")
        for action in self.store_actions:
            lines.append(f"  {verb}: {action}")
        for v in self.volumes:
            label = f"volume {v.name!r}" if v.name is not None else "volume (unreadable record)"
            head = f"{label} (id {v.id}{', ' + v.mode if v.mode else ''}): "
            if v.clean:
                lines.append(head + "clean")
                continue
            lines.append(head + f"{len(v.problems)} problem{'s' * (len(v.problems) != 1)}")
            for p in v.problems:
                lines.append(f"  {p.describe()}")
            if v.lost_checkpoints:
                lines.append("  answers since " + ", ".join(map(repr, v.lost_checkpoints))
                             + (" become" if self.repaired else " would become")
                             + " the whole volume, flagged exact=False")
            if v.removed_checkpoints:
                lines.append("  checkpoints " + ", ".join(map(repr, v.removed_checkpoints))
                             + (" removed" if self.repaired else " would be removed"))
            for action in v.actions:
                lines.append(f"  {verb}: {action}")
            if v.unreadable and not v.actions:
                lines.append("  not repairable: the volume record is unreadable; --remove-unreadable "
                             "(remove_unreadable=True) with a repair removes the volume")
            if self.repaired and v.new_generation_id:
                lines.append(f"  generation id {v.generation_id} -> {v.new_generation_id}")
        if self.after is not None:
            left = len(self.after.problems)
            lines.append("after the repair: " + ("clean" if not left else f"{left} problem{'s' * (left != 1)} remain{'s' * (left == 1)}"))
            if not self.after.clean:
                lines.extend("  " + line for line in self.after.render().splitlines()[1:])
        return "\n".join(lines) + "\n"
