"""The shape every benchmark reports in: figures measured against a baseline from the same run."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator


@dataclass
class Figure:
    name: str
    measured: float
    baseline: float
    unit: str
    ratio: float
    target: str
    passed: bool | None  # None: a diagnostic row, shown for context, with no target to pass
    digits: int = 2


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type for a count: an int no smaller than `minimum`, else a usage error naming the bound."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    parse.__name__ = "count"
    return parse


def print_table(figures: list[Figure], notes: dict[str, str]) -> None:
    """One row per figure (measured, baseline, ratio, target, PASS/FAIL), then what each baseline is."""
    rows = [(f.name, f"{f.measured:.{f.digits}f} {f.unit}", f"{f.baseline:.{f.digits}f} {f.unit}",
             f"{f.ratio:.3f}x", f.target,
             "—" if f.passed is None else "PASS" if f.passed else "FAIL") for f in figures]
    header = ("figure", "measured", "baseline", "ratio", "target", "result")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print()
    for number, row in enumerate([header, *rows]):
        print("  ".join(cell.ljust(widths[i]) if i in (0, 4, 5) else cell.rjust(widths[i])
                        for i, cell in enumerate(row)).rstrip())
        if number == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    print()
    for name, note in notes.items():
        print(f"  {name}: {note}")


def add_work_dir_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the temporary work dir goes; must not be inside the repository")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (data, server log) for inspection")


@contextmanager
def work_dir(parser: argparse.ArgumentParser, args: argparse.Namespace, prefix: str) -> Iterator[Path]:
    """A temporary directory outside the repository for the benchmark's data, removed unless --keep."""
    if args.tmp.resolve().is_relative_to(Path(__file__).resolve().parent.parent):
        parser.error("--tmp is inside the repository; benchmark data (gigabytes) belongs outside it, e.g. /tmp")
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=args.tmp))
    try:
        yield work
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def client_environment(work: Path, xet: bool) -> None:
    """Set what huggingface_hub reads when first imported: a fresh HF_HOME in the work dir (hf_xet keeps its
    shard cache there), no progress bars or telemetry, long timeouts, no ambient token, and Xet on or off."""
    os.environ.update({
        "HF_HOME": str(work / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_ETAG_TIMEOUT": "60",
        "HF_HUB_DOWNLOAD_TIMEOUT": "300",
    })
    for name in ("HF_TOKEN", "HF_XET_CACHE", "HF_HUB_DISABLE_XET"):
        os.environ.pop(name, None)
    if not xet:
        os.environ["HF_HUB_DISABLE_XET"] = "1"
