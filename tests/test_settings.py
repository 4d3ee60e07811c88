import json
import os

import pytest

from lego_studio.core import paths
from lego_studio.core.errors import InputError, ModelError
from lego_studio.core.settings import MAX_RECENT_PROJECTS, Settings, inspect_model_spec, settings_path


def _fake_diffusers_folder(root, width=768):
    root.mkdir(parents=True)
    (root / "model_index.json").write_text("{}")
    (root / "text_encoder").mkdir()
    (root / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": width}))
    return root


def test_defaults_when_no_file_and_round_trip():
    settings = Settings.load()
    assert settings.first_run is True
    assert settings.models == [] and settings.load_warning is None
    assert settings.library_path() == paths.data_dir() / "library"

    settings.first_run = False
    settings.window_state = b"\x00\x01qt-state\xff"
    settings.default_device = "cpu"
    settings.save()
    assert settings_path().is_file()

    again = Settings.load()
    assert again.first_run is False
    assert again.window_state == b"\x00\x01qt-state\xff"
    assert again.default_device == "cpu"
    assert again.load_warning is None


def test_corrupt_settings_are_backed_up_and_reported():
    path = settings_path()
    path.write_text("{ this is not json")
    settings = Settings.load()
    assert settings.models == []
    assert "settings.json" in settings.load_warning and "\n" not in settings.load_warning
    backup = path.with_name("settings.json.bad")
    assert backup.read_text() == "{ this is not json"
    assert not path.exists()
    settings.save()
    assert Settings.load().load_warning is None


def test_invalid_field_falls_back_alone_and_unknown_keys_survive():
    settings_path().write_text(
        json.dumps({"first_run": "yes", "default_device": "cpu", "from_the_future": {"a": 1}})
    )
    settings = Settings.load()
    assert settings.first_run is True  # default, bad value dropped
    assert settings.default_device == "cpu"  # good value kept
    assert "first_run" in settings.load_warning
    settings.save()
    assert json.loads(settings_path().read_text())["from_the_future"] == {"a": 1}


def test_recent_projects_are_unique_most_recent_first_and_capped(tmp_path):
    settings = Settings()
    folders = [tmp_path / f"p{i}" for i in range(MAX_RECENT_PROJECTS + 3)]
    for folder in folders:
        settings.add_recent_project(folder)
    settings.add_recent_project(folders[5])
    assert len(settings.recent_projects) == MAX_RECENT_PROJECTS
    assert settings.recent_projects[0] == str(folders[5].resolve())
    assert settings.recent_projects.count(str(folders[5].resolve())) == 1
    assert str(folders[0].resolve()) not in settings.recent_projects  # oldest fell off

    (folders[5]).mkdir()
    (folders[5] / "project.json").write_text("{}")
    assert settings.existing_recent_projects() == [folders[5].resolve()]


def test_add_model_accepts_diffusers_folder_and_infers_family(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGO_STUDIO_RESOURCES", str(tmp_path / "resources"))
    (tmp_path / "resources" / "models" / "shapeworld").mkdir(parents=True)
    settings = Settings()
    sd2 = _fake_diffusers_folder(tmp_path / "my-sd2", width=1024)
    entry = settings.add_model(sd2)
    assert (entry.kind, entry.family, entry.name) == ("diffusers", "sd2", "my-sd2")
    assert settings.default_model == "my-sd2"
    # Same spec again updates instead of duplicating.
    settings.add_model(sd2)
    assert len(settings.models) == 1
    builtin = settings.add_model("shapeworld")
    assert builtin.kind == "builtin"
    settings.save()
    loaded = Settings.load()
    assert [m.name for m in loaded.models] == ["my-sd2", "shapeworld"]
    assert loaded.model().spec == str(sd2.resolve())


def test_add_model_single_file_and_hf_cache(tmp_path, monkeypatch):
    weights = tmp_path / "v1-5.safetensors"
    _sd1_header_file(weights)
    entry = inspect_model_spec(weights)
    assert (entry.kind, entry.family) == ("single-file", "sd1")

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--sd-model" / "snapshots" / "abc123"
    _fake_diffusers_folder(snapshot, width=768)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    entry = inspect_model_spec("someone/sd-model")
    assert (entry.kind, entry.family, entry.spec) == ("hf-cache", "sd1", "someone/sd-model")


def _sd1_header_file(path, shapes=None):
    """A .safetensors file whose header describes an SD 1.x checkpoint (the weights are zeros)."""
    import json
    import struct

    shapes = shapes or {
        "model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, 768],
        "first_stage_model.decoder.conv_out.weight": [3, 128, 3, 3],
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
    }
    header, offset = {}, 0
    for key, shape in shapes.items():
        header[key] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + 2]}
        offset += 2
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * max(offset, 2048))
    return path


def test_a_random_file_named_safetensors_is_refused_when_added(tmp_path):
    settings = Settings()
    for name, content in [("random.safetensors", os.urandom(8192)), ("zeros.safetensors", b"\0" * 4096),
                          ("huge-header.safetensors", (10 ** 12).to_bytes(8, "little") + b"{" + b"x" * 4096),
                          ("random.ckpt", b"GIF89a" + os.urandom(4096))]:
        with pytest.raises(ModelError) as info:
            settings.add_model(_made(tmp_path / name, content))
        assert name in str(info.value) and "\n" not in str(info.value)
    lora = _sd1_header_file(tmp_path / "lora.safetensors", {"lora_unet_down.alpha": [], "lora_te_x.weight": [4, 768]})
    with pytest.raises(ModelError, match="not a Stable Diffusion checkpoint"):
        settings.add_model(lora)
    assert settings.models == [] and settings.default_model is None


def test_a_model_added_with_make_default_false_is_not_the_default(tmp_path):
    settings = Settings()
    entry = settings.add_model(_sd1_header_file(tmp_path / "sd.safetensors"), make_default=False)
    assert settings.model(entry.name) is entry and settings.default_model is None
    settings.add_model(_sd1_header_file(tmp_path / "sd.safetensors"), make_default=True)
    assert settings.default_model == entry.name


def _made(path, content):
    """Create a folder (content None) or a file, return its path."""
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "make_spec, fragment",
    [
        (lambda d: d / "missing", "no such model"),
        (lambda d: _made(d / "empty", None), "not a diffusers model folder"),
        (lambda d: _made(d / "notes.txt", b"x" * 5000), "not a model file"),
        (lambda d: _made(d / "tiny.ckpt", b"x"), "too small"),
        (lambda d: "nobody/not-cached", "not found in the local Hugging Face cache"),
    ],
)
def test_add_model_rejects_unusable_specs_with_one_line(tmp_path, monkeypatch, make_spec, fragment):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    spec = make_spec(tmp_path)
    settings = Settings()
    with pytest.raises(ModelError) as info:
        settings.add_model(spec)
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert str(spec) in message
    assert settings.models == []


def test_sam_checkpoint_must_exist(tmp_path):
    settings = Settings()
    with pytest.raises(InputError, match="no such SAM checkpoint"):
        settings.set_sam_checkpoint(tmp_path / "sam.pth")
    (tmp_path / "sam.pth").write_bytes(b"x")
    settings.set_sam_checkpoint(tmp_path / "sam.pth")
    assert settings.sam_checkpoint.endswith("sam.pth")
    settings.set_sam_checkpoint(None)
    assert settings.sam_checkpoint is None


def test_add_model_recognises_a_real_tiny_model_folder(tiny_model_dir):
    entry = Settings().add_model(tiny_model_dir, name="Tiny")
    assert (entry.name, entry.kind, entry.family) == ("Tiny", "diffusers", "tiny")
