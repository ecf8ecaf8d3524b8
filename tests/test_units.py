"""Sizes, counts, rates and times as the command line reads them: one
parser (tiered/units.py), one rule."""

from __future__ import annotations

import argparse

import pytest

from tiered.cli import parse_size


# The rule (tiered/units.py): K, M, G... and KiB, MiB... are binary; kB, MB,
# GB... (with the B) decimal; counts and rates decimal; case does not matter.
@pytest.mark.parametrize(
    "text, expected",
    [
        ("0", 0),
        ("4096", 4096),
        ("64K", 64 << 10),
        ("64k", 64 << 10),
        ("64KiB", 64 << 10),
        ("64kib", 64 << 10),
        ("64kB", 64_000),
        ("64kb", 64_000),
        ("64KB", 64_000),
        ("1M", 1 << 20),
        ("32MiB", 32 << 20),
        ("32MB", 32_000_000),
        ("1.5G", 3 << 29),
        ("1.5GB", 1_500_000_000),
        ("1T", 1 << 40),
        ("1P", 1 << 50),
        ("2E", 2 << 60),
        ("512b", 512),
        (" 8 MiB ", 8 << 20),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "K", "-1", "0x10", "12Q", "1 Mx", "1Ki", "1.3K", "0.5", "1e3", "1,5M"])
def test_parse_size_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="invalid size"):
        parse_size(text)


def test_one_size_parser():
    """Every byte size of the command line goes through tiered.units."""
    from tiered import units
    from tiered.cli import common

    assert common.parse_size("32MB") == units.parse_size("32MB") == 32_000_000
    assert units.format_size(3 << 29) == "1536M" and units.parse_size(units.format_size(3 << 29)) == 3 << 29
    assert units.format_bytes(5.7 * 2**20) == "5.7 MiB" and units.format_bytes(812) == "812 bytes"


def test_counts_rates_and_times_as_people_write_them():
    from tiered.cli.compare import add_compare_arguments

    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    args = parser.parse_args([
        "--writes", "100k", "--iops", "1.5M", "--min-writes-per-s", "1M", "--max-query-ms", "20ms",
        "--max-checkpoint-ms", "1s", "--checkpoint-seconds", "500ms", "--max-ram", "32MB", "--cache", "8MiB,16M",
        "--granularity", "4k,64KiB",
    ])
    assert args.writes == 100_000 and args.iops == 1_500_000 and args.min_writes_per_s == 1_000_000
    assert args.max_query_ms == pytest.approx(20) and args.max_checkpoint_ms == pytest.approx(1000)
    assert args.checkpoint_seconds == pytest.approx(0.5)
    assert args.max_ram == 32_000_000 and args.cache == [8 << 20, 16 << 20] and args.granularity == [4096, 65536]
    bare = parser.parse_args(["--max-query-ms", "20", "--checkpoint-seconds", "2", "--writes", "5000"])
    assert (bare.max_query_ms, bare.checkpoint_seconds, bare.writes) == (20, 2, 5000)
