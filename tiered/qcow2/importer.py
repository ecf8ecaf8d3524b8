"""Import the persistent dirty bitmaps of a qcow2 image as a tiered volume.

Each imported bitmap becomes a checkpoint of the same name, such that
``changed_since(B)`` is bitmap B (docs/qcow2.md).  For a chain B1 ⊇ B2 ⊇
... ⊇ Bn (oldest first) the volume gets checkpoint B1, marks B1 \\ B2,
checkpoint B2, marks B2 \\ B3, ..., checkpoint Bn, marks Bn; then
``changed_since(Bi)`` is the union of Bi .. Bn, which is Bi exactly.
Where the bitmaps are not nested that union is a superset, and the volume
flags those answers ``exact=False``.

Everything is read and checked before the store is touched, and the volume
is built in a scratch store, dumped, and loaded into the target store in one
transaction (:meth:`tiered.Store.load`): a failure, or a crash, at any
point leaves the target store as it was.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..checks import as_int, check_geometry, check_granularity
from ..config import MAX_GRANULARITY, MIN_GRANULARITY
from ..errors import AlreadyExistsError, InvalidArgumentError, Qcow2InconsistentError, ReadOnlyError, TieredError
from ..volume import check_name
from .format import Bitmap, Qcow2Image, bit_runs, read_bitmaps

if TYPE_CHECKING:
    from ..store import Store

#: The importer holds each bitmap as one bit per chunk of the volume, and
#: one byte per chunk while converting one: these bound that.
MAX_IMPORT_CHUNKS = 1 << 28
MAX_IMPORT_BYTES = 1 << 30  # the packed chunk sets of all imported bitmaps together
#: Chunks unpacked at a time when marking.
WINDOW = 1 << 22


@dataclasses.dataclass
class ImportReport:
    """What :func:`import_bitmaps` did."""

    volume: str
    image: str
    size: int
    granularity: int
    checkpoints: list[str]
    """The checkpoints made, oldest first (one per imported bitmap, same name)."""
    exact: list[bool]
    """Per checkpoint: whether ``changed_since`` of it answers ``exact=True``."""
    chain: bool
    """Whether the bitmaps were nested (each newer one inside every older one)."""
    order: str
    """How the order was chosen: ``"given"``, ``"inclusion"`` or ``"directory"``."""
    generation_id: str
    skipped: list[str] = dataclasses.field(default_factory=list)
    """Bitmaps of the image that were not imported (not asked for, or unusable)."""
    warnings: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _names(value: Sequence[str] | str | None, what: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a list of bitmap names, not a str")
    names = list(value)
    for n in names:
        if not isinstance(n, str):
            raise InvalidArgumentError(f"{what} must hold bitmap names (str), got {type(n).__name__}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidArgumentError(f"{what} names {', '.join(map(repr, twice))} more than once")
    return names


def _select(image: Qcow2Image, bitmaps: list[str] | None, order: list[str] | None,
            skipped: list[str], warnings: list[str]) -> list[Bitmap]:
    known = {bm.name: bm for bm in image.bitmaps}
    if bitmaps is None and order is not None:
        bitmaps = order
    if bitmaps is not None and order is not None and set(bitmaps) != set(order):
        raise InvalidArgumentError(
            "the order must name exactly the bitmaps imported: "
            f"{sorted(set(bitmaps) ^ set(order))} appear in only one of the two lists"
        )
    if bitmaps is not None:
        missing = [n for n in bitmaps if n not in known]
        if missing:
            raise InvalidArgumentError(
                f"qcow2 image {image.path!r} has no bitmap {', '.join(map(repr, missing))} "
                f"(it has: {', '.join(map(repr, known)) or 'none'})"
            )
        bad = [known[n] for n in bitmaps if known[n].unusable]
        if bad:
            raise InvalidArgumentError(
                "; ".join(f"bitmap {bm.name!r} of {image.path!r} cannot be used: {bm.unusable}" for bm in bad)
            )
        chosen = [known[n] for n in bitmaps]
        skipped.extend(n for n in known if n not in bitmaps)
    else:
        chosen = []
        for bm in image.bitmaps:
            if bm.unusable:
                skipped.append(bm.name)
                warnings.append(f"bitmap {bm.name!r} not imported: {bm.unusable}")
            else:
                chosen.append(bm)
    if not chosen:
        raise InvalidArgumentError(f"qcow2 image {image.path!r} holds no bitmap to import")
    for bm in chosen:
        check_name(bm.name, "checkpoint")
    return chosen


def _chunk_set(image: Qcow2Image, bm: Bitmap, granularity: int, n_chunks: int) -> np.ndarray:
    """The chunks of the volume that bitmap ``bm`` marks, packed (np.packbits)."""
    chunks = np.zeros(n_chunks, bool)
    if bm.inconsistent:
        chunks[:] = True
        return np.packbits(chunks)
    g = bm.granularity
    for first, end, bits in image.blocks(bm):
        if bits is False:
            continue
        if g >= granularity:
            # Coarser (or equal): each bit covers r whole chunks.
            r = g // granularity
            lo, hi = first * r, min(end * r, n_chunks)
            if bits is True:
                chunks[lo:hi] = True
            elif not bits.any() or lo >= hi:
                continue
            elif r <= 64:
                bits = bits[: -(-(hi - lo) // r)]
                chunks[lo:hi] |= np.repeat(bits, r)[: hi - lo]
            else:
                # Few bits, each over many chunks: one slice per run of bits.
                for s, e in zip(*(run.tolist() for run in bit_runs(bits))):
                    chunks[lo + s * r : min(lo + e * r, hi)] = True
        else:
            # Finer: r bits per chunk; a chunk is marked if any of its bits is.
            r = granularity // g
            if bits is True:
                chunks[first // r : -(-end // r)] = True
            elif not bits.any():
                continue
            elif first % r == 0 and len(bits) >= r:
                pad = -len(bits) % r
                folded = np.concatenate([bits, np.zeros(pad, bool)]).reshape(-1, r).any(axis=1)
                chunks[first // r : first // r + len(folded)] |= folded
            else:
                # A cluster's bits all inside one chunk.
                chunks[(first + np.flatnonzero(bits)) // r] = True
    return np.packbits(chunks)


def _popcount(packed: np.ndarray) -> int:
    return int(np.unpackbits(packed).sum(dtype=np.int64)) if packed.size < (1 << 24) else sum(
        int(np.unpackbits(packed[i : i + (1 << 24)]).sum(dtype=np.int64)) for i in range(0, packed.size, 1 << 24)
    )


def _contains(outer: np.ndarray, inner: np.ndarray) -> bool:
    return not np.any(inner & ~outer)


def _mark(vol: Any, packed: np.ndarray, n_chunks: int, granularity: int, size: int) -> None:
    """Mark the chunks set in ``packed``, a window at a time."""
    for w0 in range(0, n_chunks, WINDOW):
        w1 = min(w0 + WINDOW, n_chunks)
        part = packed[w0 // 8 : -(-w1 // 8)]
        if not part.any():
            continue
        bits = np.unpackbits(part)[: w1 - w0]
        starts, ends = bit_runs(bits)
        starts, ends = starts + w0, ends + w0
        offsets = starts * granularity
        lengths = np.minimum(ends * granularity, size) - offsets
        vol.mark_many(offsets, lengths)


@dataclasses.dataclass
class ImportPlan:
    """Everything an import needs, read and checked, before any store is
    touched (:func:`plan_import`)."""

    image: Qcow2Image
    size: int
    granularity: int
    n_chunks: int
    names: list[str]
    sets: dict[str, np.ndarray]
    newer: list[np.ndarray]
    lost: int
    superset_at: int
    exact: list[bool]
    chain: bool
    order: str
    skipped: list[str]
    warnings: list[str]


def plan_import(
    image_path: str | os.PathLike,
    *,
    bitmaps: Sequence[str] | None = None,
    order: Sequence[str] | None = None,
    accept_inconsistent: bool = False,
    granularity: int | None = None,
) -> ImportPlan:
    """Read the image, pick and order the bitmaps and decide what each
    checkpoint will answer, touching no store (the first half of
    :func:`import_bitmaps`, which documents the arguments and errors)."""
    image_path = os.fspath(image_path)
    bitmaps = _names(bitmaps, "bitmaps")
    order = _names(order, "order")
    if granularity is not None:
        granularity = as_int(granularity, "granularity")
        check_granularity(granularity)
    if not isinstance(accept_inconsistent, bool):
        raise InvalidArgumentError("accept_inconsistent must be a bool")

    image = read_bitmaps(image_path)
    skipped: list[str] = []
    warnings: list[str] = list(image.notes)
    chosen = _select(image, bitmaps, order, skipped, warnings)
    bad = [bm.name for bm in chosen if bm.inconsistent]
    if bad and not accept_inconsistent:
        why = ("flagged in_use: QEMU did not save them, so their content is unknown" if image.bitmaps_consistent
               else "in an image whose bitmaps extension is flagged inconsistent (autoclear bit 0 clear)")
        raise Qcow2InconsistentError(
            f"qcow2 image {image_path!r}: bitmap{'s' * (len(bad) > 1)} {', '.join(map(repr, bad))} "
            f"{'are' if len(bad) > 1 else 'is'} in use ({why}); pass --accept-inconsistent "
            "(accept_inconsistent=True) to import them as 'everything changed'; nothing was imported"
        )
    size = image.virtual_size
    if granularity is None:
        granularity = min(bm.granularity for bm in chosen)
        granularity = min(max(granularity, MIN_GRANULARITY), MAX_GRANULARITY)
    try:
        check_geometry(size, granularity)
    except TieredError as exc:
        raise InvalidArgumentError(f"qcow2 image {image_path!r} cannot be a volume: {exc}") from None
    n_chunks = -(-size // granularity)
    if n_chunks > MAX_IMPORT_CHUNKS:
        raise InvalidArgumentError(
            f"qcow2 image {image_path!r}: {size} bytes at granularity {granularity} make {n_chunks} chunks; "
            f"the importer takes up to {MAX_IMPORT_CHUNKS}: give a coarser granularity"
        )

    if len(chosen) * -(-n_chunks // 8) > MAX_IMPORT_BYTES:
        raise InvalidArgumentError(
            f"qcow2 image {image_path!r}: {len(chosen)} bitmaps of {n_chunks} chunks each need more than "
            f"{MAX_IMPORT_BYTES} bytes to import; import fewer at a time (--bitmaps) or give a coarser granularity"
        )
    # Every bitmap is read here, before any store is touched.
    try:
        sets = {bm.name: _chunk_set(image, bm, granularity, n_chunks) for bm in chosen}
    except MemoryError:
        raise InvalidArgumentError(
            f"qcow2 image {image_path!r}: not enough memory to import {len(chosen)} bitmaps of {n_chunks} "
            "chunks; import fewer at a time (--bitmaps) or give a coarser granularity"
        ) from None
    by_name = {bm.name: bm for bm in chosen}

    if order is not None:
        ordered = [by_name[n] for n in order]
        how = "given"
    else:
        # QEMU appends to the directory, so its order is creation order:
        # kept when it already nests.  Otherwise inclusion may give the order
        # (largest set first, ties in directory order), but only while every
        # bitmap is enabled: each then holds every write since it was made,
        # so a bitmap holding another is the older one.  With a disabled
        # bitmap, one period's set may hold another's by chance, and an
        # inferred order would put a newer period first and lose the older
        # period's writes from the newer answers.
        def chained(bitmaps: list[Bitmap]) -> bool:
            return all(_contains(sets[a.name], sets[b.name]) for a, b in zip(bitmaps, bitmaps[1:]))

        ordered = list(chosen)
        how = "directory"
        if not chained(ordered) and all(bm.enabled for bm in chosen):
            counts = {bm.name: _popcount(sets[bm.name]) for bm in chosen}
            by_size = sorted(chosen, key=lambda bm: -counts[bm.name])
            if chained(by_size):
                ordered, how = by_size, "inclusion"
                warnings.append(
                    "the bitmaps nest in an order other than the image's directory order; imported oldest first "
                    f"by inclusion: {', '.join(bm.name for bm in by_size)} (give --order to choose another)"
                )
    names = [bm.name for bm in ordered]
    n = len(ordered)

    # newer[i]: the union of the bitmaps after i; checkpoint i is followed
    # by the marks B_i \ newer[i], so changed_since(B_i) = B_i | newer[i].
    newer: list[np.ndarray] = [np.zeros_like(sets[names[0]]) for _ in range(n)]
    for i in range(n - 2, -1, -1):
        newer[i] = newer[i + 1] | sets[names[i + 1]]
    nested = [_contains(sets[names[i]], newer[i]) for i in range(n)]
    chain = all(nested)
    lost = max((i for i, bm in enumerate(ordered) if bm.inconsistent), default=-1)
    superset_at = -1
    for i, bm in enumerate(ordered):
        if i <= lost:
            continue
        if not nested[i]:
            superset_at = i
            warnings.append(
                f"bitmap {bm.name!r} does not hold every newer imported bitmap, so changed_since({bm.name!r}) "
                "answers a superset of it (exact=False)"
            )
        if bm.granularity > granularity:
            superset_at = i
            warnings.append(
                f"bitmap {bm.name!r} has granularity {bm.granularity}, coarser than the volume's {granularity}: "
                "each of its bits marks every chunk it covers, so its answers are flagged exact=False"
            )
    if superset_at >= 0:
        older = [names[i] for i in range(lost + 1, superset_at)
                 if nested[i] and ordered[i].granularity <= granularity]
        if older:
            warnings.append(
                f"checkpoint{'s' * (len(older) > 1)} {', '.join(map(repr, older))}, older than "
                f"{names[superset_at]!r}, {'are' if len(older) > 1 else 'is'} flagged exact=False too "
                "(a volume flags the answers up to one checkpoint)"
            )
    if lost >= 0:
        warnings.append(
            f"checkpoint{'s' * (lost > 0)} {', '.join(map(repr, names[: lost + 1]))} answer{'s' * (lost == 0)} "
            "'everything changed' (exact=False): "
            + ", ".join(repr(bm.name) for bm in ordered[: lost + 1] if bm.inconsistent)
            + " had unknown content; the volume gets a new generation id"
        )
    if how == "directory" and not chain:
        warnings.insert(0, "the bitmaps do not form a chain in directory order"
                           + ("" if all(bm.enabled for bm in chosen) else " (with a disabled bitmap no other order is inferred)")
                           + ": imported in directory order, oldest first, and flagged where their answers are supersets")
    exact = [i > lost and i > superset_at for i in range(n)]
    return ImportPlan(image, size, granularity, n_chunks, names, sets, newer, lost, superset_at, exact,
                      chain, how, skipped, warnings)


def _check_free(store: "Store", volume_name: str) -> None:
    if store.readonly:
        raise ReadOnlyError(f"store {store.path!r} is open read-only; nothing was imported")
    if volume_name in store.volumes():
        raise AlreadyExistsError(f"store already has a volume {volume_name!r}; nothing was imported")


def import_bitmaps(
    store: "Store",
    volume_name: str,
    image_path: str | os.PathLike,
    *,
    bitmaps: Sequence[str] | None = None,
    order: Sequence[str] | None = None,
    accept_inconsistent: bool = False,
    granularity: int | None = None,
    strategy: Any = None,
    durability: str = "lazy",
) -> ImportReport:
    """Create volume ``volume_name`` in ``store`` with one checkpoint per
    persistent bitmap of the qcow2 image at ``image_path``, such that
    ``changed_since(B)`` is bitmap B (see docs/qcow2.md).

    ``bitmaps``: the names to import (default: every usable bitmap).
    ``order``: the checkpoints' order, oldest first (default: inferred by
    inclusion, else directory order).  ``accept_inconsistent``: import
    bitmaps flagged ``in_use`` as "everything changed" instead of refusing.
    ``granularity``: the volume's (default: the finest of the bitmaps').
    ``strategy`` and ``durability``: as for :meth:`Store.create_volume`.

    All or nothing.  Raises Qcow2FormatError (the image), Qcow2InconsistentError
    (in-use bitmaps without ``accept_inconsistent``), InvalidArgumentError,
    AlreadyExistsError, CheckpointLimitError, ReadOnlyError, StoreFullError
    or StorageError; then the store is unchanged.
    """
    check_name(volume_name, "volume")
    _check_free(store, volume_name)
    plan = plan_import(image_path, bitmaps=bitmaps, order=order, accept_inconsistent=accept_inconsistent,
                       granularity=granularity)
    return apply_import(store, volume_name, plan, strategy=strategy, durability=durability)


def apply_import(store: "Store", volume_name: str, plan: ImportPlan, *, strategy: Any = None,
                 durability: str = "lazy") -> ImportReport:
    """Build the volume a plan describes and add it to ``store``, all or
    nothing (the second half of :func:`import_bitmaps`)."""
    import tiered

    check_name(volume_name, "volume")
    _check_free(store, volume_name)
    names, size, granularity = plan.names, plan.size, plan.granularity
    scratch = tempfile.mkdtemp(prefix="tiered-qcow2-import-")
    try:
        with tiered.open(os.path.join(scratch, "store"), sync=False) as tmp:
            vol = tmp.create_volume(volume_name, size, granularity, strategy=strategy, durability=durability)
            for i, name in enumerate(names):
                vol.checkpoint(name)
                _mark(vol, plan.sets[name] & ~plan.newer[i], plan.n_chunks, granularity, size)
            vol._flag_imported(
                names[plan.lost] if plan.lost >= 0 else None,
                names[plan.superset_at] if plan.superset_at >= 0 else None,
                f"qcow2-in-use/{os.path.basename(plan.image.path)}",
            )
            vol.flush()
            dump = os.path.join(scratch, "volume.dump")
            vol.dump(dump)
        loaded = store.load(dump)
        generation_id = loaded.generation_id
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ImportReport(
        volume=volume_name,
        image=plan.image.path,
        size=size,
        granularity=granularity,
        checkpoints=list(names),
        exact=list(plan.exact),
        chain=plan.chain,
        order=plan.order,
        generation_id=generation_id,
        skipped=list(plan.skipped),
        warnings=list(plan.warnings),
    )
