"""The examples of README.md and docs/*.md run as tests, so they cannot drift.

Each document's fenced blocks run in order, in a fresh directory, sharing one
namespace (as a reader meets them):

- ```` ```python ```` blocks are executed; a block of ``>>>`` lines is a
  doctest whose output must match.
- a block whose lines start with ``$ tiered`` is a transcript: each command
  runs and its output (stdout then stderr) must match the lines after it,
  with ``...`` standing for any text and volatile values (times, durations)
  normalised on both sides.
- ```` ```sh ```` blocks: every ``tiered`` command line is parsed by the real
  argument parser; the store commands (not ``compare``) also run against the
  stores the document's Python made, and must succeed.
- ```` ```text ```` blocks and blocks in other languages are prose.

The store path ``/var/lib/cbt`` in a document stands for a store in the test's
directory.  A block preceded by ``<!-- not run: REASON -->`` is skipped.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import json
import uuid
import re
import shlex
from pathlib import Path

import pytest

import tiered
from tiered.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
STORE_PATH = "/var/lib/cbt"

_FENCE = re.compile(r"^```(\w*)\s*$")
_SKIP = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")
# Values that differ from run to run: creation times, measured durations, and
# disk bytes (stored records hold creation times of varying length).
_VOLATILE = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"), "<time>"),
    (re.compile(r'("?seconds"?:\s*)[0-9.]+'), r"\1<seconds>"),
    (re.compile(r'("?disk_bytes"?:\s*).*'), r"\1<bytes>"),
]


def blocks(text: str) -> list[tuple[int, str, str, str | None]]:
    """(line number, language, body, skip reason) of each fenced block."""
    found = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i + 1, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        skip = _SKIP.search(prev)
        found.append((start, lang, "\n".join(lines[i + 1 : j]), skip.group(1) if skip else None))
        i = j + 1
    return found


def run_cli(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()


def normalise(text: str) -> str:
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return text


def stable(document: object) -> object:
    """A JSON document without its volatile values (a generation id is
    random: any valid UUID matches any other)."""
    if isinstance(document, dict):
        return {
            k: str(uuid.UUID(v).version) if k == "generation_id" else stable(v)
            for k, v in document.items()
            if k not in ("seconds", "disk_bytes")
        }
    if isinstance(document, list):
        return [stable(v) for v in document]
    return document


def check_transcript(body: str, where: str) -> None:
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    commands: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        else:
            assert commands, f"{where}: a transcript starts with '$ tiered'"
            commands[-1][1].append(line)
    for command, expected in commands:
        argv = shlex.split(command, comments=True)
        assert argv[0] == "tiered", f"{where}: {command!r}"
        _, got = run_cli(argv[1:])
        if expected and expected[0] == "{":
            # JSON is compared as data: layout aside, only volatile keys may differ.
            assert stable(json.loads(got)) == stable(json.loads("\n".join(expected))), (
                f"{where}: `{command}` printed\n{got}"
            )
            continue
        want = normalise("\n".join(expected) + "\n")
        assert checker.check_output(want, normalise(got), flags), (
            f"{where}: `{command}` printed\n{got}\ninstead of\n{want}"
        )


def check_shell(body: str, where: str) -> None:
    for line in body.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if not argv or argv[0] != "tiered":
            continue
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit as exc:
            pytest.fail(f"{where}: `{line}` does not parse (exit {exc.code})")
        if argv[1] != "compare":
            code, got = run_cli(argv[1:])
            assert code == 0, f"{where}: `{line}` failed:\n{got}"


def run_python(body: str, namespace: dict, where: str) -> None:
    if body.lstrip().startswith(">>>"):
        test = doctest.DocTestParser().get_doctest(body, namespace, where, where, 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        out = io.StringIO()
        runner.run(test, out=out.write, clear_globs=False)
        assert not runner.failures, out.getvalue()
        return
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(body, where, "exec"), namespace)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_document_examples(document, tmp_path, monkeypatch):
    text = (ROOT / document).read_text().replace(STORE_PATH, str(tmp_path / "var-lib-cbt"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__doc_example__"}
    ran = 0
    try:
        for line, lang, body, skip in blocks(text):
            where = f"{document}:{line}"
            if skip:
                continue
            if lang == "python":
                run_python(body, namespace, where)
            elif lang == "sh":
                check_shell(body, where)
            elif body.startswith("$ tiered"):
                check_transcript(body, where)
            else:
                continue
            ran += 1
    finally:
        for value in list(namespace.values()):
            if isinstance(value, tiered.Store):
                value.close()
    if document in ("README.md", "docs/api.md"):
        assert ran, f"{document}: no example ran"


def test_blocks_are_found():
    text = "x\n<!-- not run: slow -->\n```python\na = 1\n```\n```\n$ tiered volumes s\n```\n"
    assert blocks(text) == [(3, "python", "a = 1", "slow"), (6, "", "$ tiered volumes s", None)]
