import json

import pytest
import torch
from PIL import Image

from lego_studio.core import paths
from lego_studio.core.concepts import Concept, export_concept, load_concept
from lego_studio.core.errors import InputError
from lego_studio.core.library import ConceptLibrary, family_badge
from lego_studio.core.settings import Settings


def _concept(name="frozen", n=2, width=768, **metadata):
    torch.manual_seed(len(name) + n + width)
    return Concept(name, f"<{name}>", torch.randn(n, width), metadata)


def test_default_root_follows_settings(tmp_path):
    assert ConceptLibrary().root == paths.data_dir() / "library"
    settings = Settings()
    settings.library_dir = str(tmp_path / "elsewhere")
    settings.save()
    assert ConceptLibrary().root == tmp_path / "elsewhere"


def test_add_list_get_with_badges_tags_and_thumbnail(tmp_path):
    library = ConceptLibrary(tmp_path / "lib")
    thumb = tmp_path / "t.png"
    Image.new("RGB", (600, 300), (9, 9, 9)).save(thumb)
    entry = library.add(
        _concept("Frozen", family="sd1", subject="a toy robot"), thumbnail=thumb, tags=["ice", "cold", "ice"]
    )
    library.add(_concept("melting", n=3, width=1024))
    library.add(_concept("squares", n=1, width=32, family="shapeworld"))
    library.add(_concept("odd", n=1, width=48, family="tiny"))

    assert entry.name == "frozen" and entry.placeholder == "<frozen>"
    assert Image.open(entry.thumbnail).size == (256, 128)
    listed = {e.name: e for e in library.list()}
    assert sorted(listed) == ["frozen", "melting", "odd", "squares"]
    assert (listed["frozen"].num_vectors, listed["frozen"].text_width) == (2, 768)
    assert listed["frozen"].tags == ["ice", "cold"] and listed["frozen"].subject == "a toy robot"
    assert [listed[n].badge for n in ("frozen", "melting", "squares", "odd")] == [
        "SD 1.x", "SD 2.x", "Shape World", "tiny/custom (width 48)",
    ]
    got = library.get("melting")
    assert torch.equal(got.vectors, _concept("melting", n=3, width=1024).vectors)
    with pytest.raises(InputError, match="no concept named 'nope'"):
        library.get("nope")


def test_add_imports_other_formats_and_handles_name_collisions(tmp_path):
    library = ConceptLibrary(tmp_path / "lib")
    a1111 = export_concept(_concept("snowy"), tmp_path / "snowy.pt", "a1111")
    entry = library.add(a1111)
    assert entry.name == "snowy" and entry.source == str(a1111.resolve())
    assert load_concept(library.concept_path("snowy")).metadata  # stored in the Lego format

    second = library.add(_concept("snowy", n=4))
    assert second.name == "snowy-2" and second.placeholder == "<snowy-2>"
    with pytest.raises(InputError, match="already has a concept named 'snowy'"):
        library.add(_concept("snowy"), on_conflict="error")
    replaced = library.add(_concept("snowy", n=5), on_conflict="replace")
    assert replaced.num_vectors == 5 and len(library.list()) == 2

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"nope")
    with pytest.raises(InputError, match="broken.safetensors"):
        library.add(broken)


def test_search_rename_tags_delete(tmp_path):
    library = ConceptLibrary(tmp_path / "lib")
    library.add(_concept("frozen", subject="a teapot"), tags=["winter"])
    library.add(_concept("melting"), tags=["summer", "hot"], thumbnail=Image.new("RGB", (8, 8)))
    assert [e.name for e in library.search("WINTER")] == ["frozen"]
    assert [e.name for e in library.search("teapot frozen")] == ["frozen"]
    assert [e.name for e in library.search("")] == ["frozen", "melting"]

    renamed = library.rename("melting", "Dripping Wax")
    assert renamed.name == "dripping-wax" and renamed.placeholder == "<dripping-wax>"
    assert renamed.tags == ["summer", "hot"] and renamed.thumbnail.name == "dripping-wax.png"
    assert library.get("dripping-wax").placeholder == "<dripping-wax>"
    assert "melting" not in library
    with pytest.raises(InputError, match="already has"):
        library.rename("frozen", "dripping-wax")

    library.set_tags("frozen", "ice, cold")
    assert library.entry("frozen").tags == ["ice", "cold"]
    library.delete("dripping-wax")
    assert [e.name for e in library.list()] == ["frozen"]
    assert not (library.root / "dripping-wax.png").exists()
    assert "dripping-wax" not in json.loads(library.index_path.read_text())["entries"]


def test_export_and_compatibility(tmp_path):
    library = ConceptLibrary(tmp_path / "lib")
    library.add(_concept("frozen", width=768))
    library.add(_concept("melting", width=1024))
    out = library.export("frozen", "diffusers", tmp_path / "learned_embeds.safetensors")
    assert torch.equal(load_concept(out).vectors, library.get("frozen").vectors)

    class Family:
        text_width = 1024

    class Model:
        family = Family()

    assert [e.name for e in library.compatible_with(Model())] == ["melting"]
    assert [e.name for e in library.compatible_with(Family())] == ["melting"]
    assert [e.name for e in library.compatible_with(width=768)] == ["frozen"]


def test_move_to_moves_files_and_remembers(tmp_path):
    library = ConceptLibrary()
    library.add(_concept("frozen"), tags=["ice"], thumbnail=Image.new("RGB", (8, 8)))
    old_root = library.root
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "x.txt").write_text("mine")
    with pytest.raises(InputError, match="empty or new folder"):
        library.move_to(occupied)

    library.move_to(tmp_path / "new-lib")
    assert not old_root.exists()
    assert sorted(p.name for p in (tmp_path / "new-lib").iterdir()) == ["frozen.png", "frozen.safetensors", "index.json"]
    reopened = ConceptLibrary()  # default root now comes from the settings
    assert reopened.root.resolve() == (tmp_path / "new-lib").resolve()
    assert reopened.entry("frozen").tags == ["ice"]


def test_hand_copied_and_broken_files_in_the_folder(tmp_path):
    library = ConceptLibrary(tmp_path / "lib")
    export_concept(_concept("handmade"), library.root / "handmade.safetensors", "lego")
    (library.root / "junk.safetensors").write_bytes(b"not a concept")
    assert [e.name for e in library.list()] == ["handmade"]
    problems = library.problems()
    assert len(problems) == 1 and problems[0][0].name == "junk.safetensors"


def test_family_badge_infers_from_width():
    assert family_badge(None, 768) == "SD 1.x"
    assert family_badge("sd2-base", 1024) == "SD 2.x"
    assert family_badge(None, 64) == "unknown model, width 64"
    assert family_badge("tiny", 64) == "tiny/custom (width 64)"


def test_a1111_round_trip_keeps_the_base_model_and_the_original_record(tmp_path):
    from lego_studio.core.concepts import export_concept, load_concept

    library = ConceptLibrary(tmp_path / "lib")
    original = _concept("ice", n=2, width=96, family="shapeworld")
    original.metadata.update(base_model="/home/me/resources/models/shapeworld", method="lego", subject="a red circle")
    library.add(original, thumbnail=Image.new("RGB", (64, 64), (200, 30, 30)), tags=["ice", "demo"])
    exported = export_concept(library.get("ice"), tmp_path / "ice.pt", "a1111")
    back = load_concept(exported)
    assert back.metadata["family"] == "shapeworld" and back.metadata["base_model"].endswith("shapeworld")

    # Into another library (no original there): the file alone says which model it is for.
    other = ConceptLibrary(tmp_path / "other")
    assert other.add(exported).badge == "Shape World"
    # Into the same library: the original's record is kept, and the copy says where it came from.
    copy = library.add(exported, name="ice-copy")
    assert copy.badge == "Shape World" and copy.metadata["method"] == "lego" and copy.subject == "a red circle"
    assert copy.metadata["imported_from"]["format"] == "a1111"
    # ...and its picture and tags (the walkthrough saw a copy without either).
    assert copy.thumbnail is not None and copy.tags == ["ice", "demo"]

    # A file that carries no model at all (a plain A1111 embedding of an odd width) says so.
    import torch

    bare = tmp_path / "bare.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(1, 96)}, "name": "bare"}, bare)
    assert other.add(bare).badge == "unknown model, width 96"


def test_a_taken_name_can_be_refused_instead_of_renamed(tmp_path):
    from lego_studio.core.library import NameTaken

    library = ConceptLibrary(tmp_path / "lib")
    library.add(_concept("ice"))
    with pytest.raises(NameTaken) as caught:
        library.add(_concept("ice"), on_conflict="error")
    assert (caught.value.name, caught.value.free_name) == ("ice", "ice-2")


def test_saved_and_exported_files_get_the_usual_file_mode_not_a_private_one(tmp_path):
    # Walkthrough: an exported A1111 embedding came out -rw------- (the temp file's mode), so
    # another user or a web UI running as another account could not read it.
    import os
    import stat

    old = os.umask(0o022)
    try:
        exported = export_concept(Concept("ice", "<ice>", torch.randn(1, 32), {}), tmp_path / "ice.pt", "a1111")
        assert stat.S_IMODE(exported.stat().st_mode) == 0o644
        kept = tmp_path / "notes.json"
        kept.write_text("{}")
        os.chmod(kept, 0o600)  # a file the user made private stays private when rewritten
        paths.atomic_write_json(kept, {"a": 1})
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    finally:
        os.umask(old)
