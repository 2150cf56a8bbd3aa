import pytest

from llmdoctor.server.model_store import (
    EMBEDDED_NAME,
    ModelNotFoundError,
    converted_model_name,
    embedded_gguf_path,
    resolve_model,
)


def test_resolve_embedded_gives_the_cached_folder(embedded_model):
    assert embedded_model.name == EMBEDDED_NAME
    assert (embedded_model.folder / "config.json").is_file()
    assert (embedded_model.folder / "model.safetensors").is_file()


def test_resolve_hf_folder_is_used_in_place_and_keeps_its_served_name(embedded_model):
    again = resolve_model(str(embedded_model.folder))
    assert again.folder == embedded_model.folder and again.name == EMBEDDED_NAME and again.converted_seconds is None


def test_resolve_missing_path_names_what_was_expected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="expected 'embedded', a transformers folder"):
        resolve_model(str(tmp_path / "nope"))


def test_resolve_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_converted_model_name_of_other_paths_is_none(tmp_path):
    assert converted_model_name(tmp_path) is None and converted_model_name("org/some-model") is None


@pytest.mark.slow
def test_resolve_gguf_converts_once_into_the_cache_dir(tmp_path):
    gguf = embedded_gguf_path()
    first = resolve_model(str(gguf), cache_dir=tmp_path)
    assert first.converted_seconds is not None and first.folder.parent == tmp_path / "models"
    assert (first.folder / "config.json").is_file() and not list(tmp_path.glob("models/*.partial"))
    second = resolve_model(str(gguf), cache_dir=tmp_path)
    assert second.converted_seconds is None and second.folder == first.folder
