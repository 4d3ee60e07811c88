"""``lego-studio runs PATH``: the training runs of a project (or a runs folder), one line each."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="list the training runs of a project or a runs folder",
        description="List the training runs under a project folder, its runs/ folder or one run folder: "
                    "id, method, status (finished, cancelled, failed with the reason, interrupted, "
                    "running in pid N), step, and the concept file.",
    )
    parser.add_argument("path", type=Path, metavar="PATH", help="project folder, runs folder, or one run folder")
    parser.set_defaults(func=run)


def runs_folder(path: Path) -> tuple[Path, bool]:
    """(folder, single): the runs folder PATH names, or PATH itself when it is one run."""
    from lego_studio.core.errors import InputError

    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such folder")
    if not path.is_dir():
        raise InputError(f"{path}: not a folder (give a project folder or its runs folder)")
    if (path / "runs").is_dir():
        return path / "runs", False
    if is_run_folder(path):
        return path, True
    return path, False


def is_run_folder(path: Path) -> bool:
    from lego_studio.core.runs import RUN_FILE

    return any((path / name).is_file() for name in (RUN_FILE, "config.json", "log.jsonl"))


def status_text(info, record: dict) -> str:
    from lego_studio.core import runs

    if info.status == runs.RUN_FAILED:
        return f"failed: {info.message}" if info.message else "failed"
    if info.status == runs.RUN_RUNNING:
        pid = record.get("pid")
        return f"running in pid {pid}" if isinstance(pid, int) else "running"
    return info.status


def describe(info) -> str:
    from lego_studio.core.runs import read_record

    total = info.total_steps if info.total_steps else "?"
    concept = str(info.concept_path) if info.concept_path else "-"
    return "  ".join([info.id, info.method or "?", status_text(info, read_record(info.path)),
                      f"step {info.step}/{total}", concept])


def run(args: argparse.Namespace) -> int:
    from lego_studio.core.runs import list_runs, read_run

    folder, single = runs_folder(args.path)
    # Only folders a run wrote (a folder of other things lists nothing, not every sub-folder).
    infos = [read_run(folder)] if single else [info for info in list_runs(folder) if is_run_folder(info.path)]
    if not infos:
        print(f"no training runs under {args.path}")
        return 0
    for info in infos:
        print(describe(info))
    return 0
