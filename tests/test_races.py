"""Two processes changing one library (or one run folder) at the same instant.

Each round forks two real processes that wait on a barrier file and then act at once; ten rounds
each. Without the library lock, entries and files were lost (issue 18, cases 1-3)."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from lego_studio.core.concepts import Concept, load_concept
from lego_studio.core.library import ConceptLibrary, NameTaken

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="fork start method"), pytest.mark.slow]  # two processes each
ROUNDS = 10


def _concept(name: str, seed: int) -> Concept:
    generator = torch.Generator().manual_seed(seed)
    return Concept(name, f"<{name}>", torch.randn(2, 32, generator=generator), {"seed": seed})


def _wait(barrier: Path) -> None:
    while not barrier.exists():
        time.sleep(0.0005)


def _worker(action: str, root: str, barrier: str, result: str, *arguments) -> None:
    try:
        library = ConceptLibrary(root)
        _wait(Path(barrier))
        if action == "add":
            name, seed, on_conflict = arguments
            entry = library.add(_concept(name, seed), name=name, on_conflict=on_conflict)
            outcome = {"ok": entry.name}
        elif action == "rename":
            old, new = arguments
            outcome = {"ok": library.rename(old, new).name}
        elif action == "tags":
            name, tag = arguments
            library.set_tags(name, [tag])
            outcome = {"ok": name}
        else:
            raise AssertionError(action)
    except NameTaken as exc:
        outcome = {"taken": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported to the test
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    Path(result).write_text(json.dumps(outcome))
    os._exit(0)  # no atexit handlers of the parent (pytest) in the forked child


def _race(tmp_path: Path, round_: int, *jobs) -> list[dict]:
    """Start every job (action, args...) in its own process; release them all at once."""
    context = multiprocessing.get_context("fork")
    barrier = tmp_path / f"go-{round_}"
    processes, results = [], []
    for i, (action, root, *arguments) in enumerate(jobs):
        result = tmp_path / f"result-{round_}-{i}.json"
        process = context.Process(target=_worker, args=(action, str(root), str(barrier), str(result), *arguments))
        process.start()
        processes.append(process)
        results.append(result)
    time.sleep(0.3)  # both are waiting on the barrier
    barrier.touch()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    return [json.loads(path.read_text()) for path in results]


def test_two_imports_under_one_name_never_overwrite(tmp_path):
    for round_ in range(ROUNDS):
        root = tmp_path / f"lib{round_}"
        ConceptLibrary(root)
        outcomes = _race(tmp_path, round_, ("add", root, "frost", 1, "error"), ("add", root, "frost", 2, "error"))
        assert sorted(next(iter(o)) for o in outcomes) == ["ok", "taken"], outcomes
        winner = 1 if "ok" in outcomes[0] else 2
        stored = load_concept(ConceptLibrary(root).concept_path("frost"))
        assert stored.metadata["seed"] == winner  # the file is the one the winner reported
        assert "already has a concept named 'frost'" in next(o["taken"] for o in outcomes if "taken" in o)


def test_two_imports_under_one_name_with_rename_get_two_names(tmp_path):
    for round_ in range(ROUNDS):
        root = tmp_path / f"lib{round_}"
        ConceptLibrary(root)
        outcomes = _race(tmp_path, round_, ("add", root, "frost", 1, "rename"), ("add", root, "frost", 2, "rename"))
        names = sorted(o["ok"] for o in outcomes)
        assert names == ["frost", "frost-2"], outcomes
        library = ConceptLibrary(root)
        seeds = {load_concept(library.concept_path(n)).metadata["seed"] for n in names}
        assert seeds == {1, 2}  # nothing overwritten
        assert sorted(library._read_index()) == names


def test_two_imports_under_different_names_keep_both_index_entries(tmp_path):
    for round_ in range(ROUNDS):
        root = tmp_path / f"lib{round_}"
        ConceptLibrary(root)
        outcomes = _race(tmp_path, round_, ("add", root, "alpha", 1, "error"), ("add", root, "beta", 2, "error"))
        assert all("ok" in o for o in outcomes), outcomes
        assert sorted(ConceptLibrary(root)._read_index()) == ["alpha", "beta"]


def test_rename_while_another_process_imports_keeps_both(tmp_path):
    for round_ in range(ROUNDS):
        root = tmp_path / f"lib{round_}"
        library = ConceptLibrary(root)
        library.add(_concept("old", 0), tags=["kept"])
        outcomes = _race(tmp_path, round_, ("rename", root, "old", "new"), ("add", root, "other", 3, "error"))
        assert all("ok" in o for o in outcomes), outcomes
        index = ConceptLibrary(root)._read_index()
        assert sorted(index) == ["new", "other"] and index["new"]["tags"] == ["kept"]
        assert sorted(ConceptLibrary(root).names()) == ["new", "other"]


def test_tag_edits_in_two_processes_keep_both(tmp_path):
    for round_ in range(ROUNDS):
        root = tmp_path / f"lib{round_}"
        library = ConceptLibrary(root)
        library.add(_concept("a", 1))
        library.add(_concept("b", 2))
        outcomes = _race(tmp_path, round_, ("tags", root, "a", "x"), ("tags", root, "b", "y"))
        assert all("ok" in o for o in outcomes), outcomes
        index = ConceptLibrary(root)._read_index()
        assert (index["a"]["tags"], index["b"]["tags"]) == (["x"], ["y"])
