"""The stored format: golden stores of every format version read identically,
and damaged or crafted values are refused, never trusted.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from fixtures.make_store import PAGE_BYTES, SEG_BYTES, extents_digest

import tiered

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def golden_copy(tmp_path, version: str) -> tuple[str, dict]:
    """A private copy of a golden store (opening it as writer may rewrite
    it), and the answers its writer recorded."""
    src = os.path.join(FIXTURES, version)
    dst = tmp_path / version
    dst.mkdir()
    shutil.copyfile(os.path.join(src, "data.mdb"), dst / "data.mdb")
    with open(os.path.join(src, "answers.json")) as f:
        return str(dst), json.load(f)


def answers_of(store: tiered.Store, name: str) -> dict:
    vol = store.volume(name)
    ckpts = vol.checkpoints()
    return {
        "strategy": vol.strategy.fixed(),
        "unclean_shutdown": vol.unclean_shutdown,
        "checkpoints": [[c.name, c.generation] for c in ckpts],
        "since": {c.name: extents_digest(vol.changed_since(c.name)) for c in ckpts},
        "between": {
            f"{a.name}..{b.name}": extents_digest(vol.changed_between(a.name, b.name))
            for i, a in enumerate(ckpts)
            for b in ckpts[i + 1 :]
        },
        "since_region": {
            c.name: extents_digest(vol.changed_since(c.name, PAGE_BYTES - SEG_BYTES, 2 * SEG_BYTES))
            for c in ckpts
        },
    }


def expected_of(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "record"}


@pytest.mark.parametrize("version", ["v1"])
@pytest.mark.parametrize("readonly", [True, False])
def test_golden_store_answers_as_recorded(tmp_path, version, readonly):
    path, expected = golden_copy(tmp_path, version)
    assert set(expected["volumes"]) == {"one", "multi8", "hybrid", "crashed"}
    with tiered.open(path, readonly=readonly) as store:
        assert store.volumes() == sorted(expected["volumes"])
        for name, entry in expected["volumes"].items():
            assert answers_of(store, name) == expected_of(entry), name
    # Whatever a writer rewrote on open or close reads the same afterwards.
    with tiered.open(path, readonly=True) as store:
        for name, entry in expected["volumes"].items():
            assert answers_of(store, name) == expected_of(entry), name


@pytest.mark.parametrize("version", ["v1"])
def test_golden_store_keeps_tracking(tmp_path, version):
    """A writer carries on with an old store: new marks, checkpoints and
    removals answer as on a new store."""
    path, expected = golden_copy(tmp_path, version)
    with tiered.open(path) as store:
        for name in ("one", "multi8", "hybrid"):
            vol = store.volume(name)
            last = vol.checkpoints()[-1].name
            vol.checkpoint("new")
            vol.mark(PAGE_BYTES + 3 * 512, 512)
            got = vol.changed_since("new")
            assert list(got) == [(PAGE_BYTES + 3 * 512, 512)] and got.exact
            before = extents_digest(vol.changed_since(last))
            vol.remove_checkpoint("new")
            assert extents_digest(vol.changed_since(last)) == before
    with tiered.open(path, readonly=True) as store:
        for name in ("one", "multi8", "hybrid"):
            vol = store.volume(name)
            first = vol.checkpoints()[0].name
            got = vol.changed_since(first, PAGE_BYTES + 3 * 512, 512)
            assert list(got) == [(PAGE_BYTES + 3 * 512, 512)]
