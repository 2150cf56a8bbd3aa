from pathlib import Path

import pytest
from pydantic import ValidationError

from llmdoctor.server.config import NamedPath, ServerSettings, describe_validation_error


def test_settings_defaults_match_the_documented_ones(monkeypatch):
    settings = ServerSettings()
    assert (settings.port, settings.max_batch, settings.max_queue, settings.request_timeout) == (8000, 32, 256, 600)
    assert (settings.engine, settings.max_model_len, settings.max_lora_rank, settings.model) == ("auto", None, 64, None)


def test_settings_read_env_vars_with_prefix(monkeypatch):
    monkeypatch.setenv("LLMDOCTOR_MAX_BATCH", "4")
    monkeypatch.setenv("LLMDOCTOR_API_KEY", "k")
    settings = ServerSettings()
    assert settings.max_batch == 4 and settings.api_key.get_secret_value() == "k"


def test_settings_list_env_vars_accept_commas(monkeypatch):
    monkeypatch.setenv("LLMDOCTOR_DOCTOR", "helpful=/a,concise=/b")
    monkeypatch.setenv("LLMDOCTOR_ADAPTER_ROOT", "/r1,/r2")
    settings = ServerSettings()
    assert settings.doctor == [NamedPath(name="helpful", path=Path("/a")), NamedPath(name="concise", path=Path("/b"))]
    assert settings.adapter_root == [Path("/r1"), Path("/r2")]


def test_settings_list_env_vars_accept_json(monkeypatch):
    monkeypatch.setenv("LLMDOCTOR_LORA", '["pirate=/p"]')
    assert ServerSettings().lora == [NamedPath(name="pirate", path=Path("/p"))]


def test_settings_init_values_override_env(monkeypatch):
    monkeypatch.setenv("LLMDOCTOR_PORT", "9000")
    assert ServerSettings(port="9001").port == 9001


def test_settings_named_path_without_equals_is_refused():
    with pytest.raises(ValidationError, match="expected NAME=PATH"):
        ServerSettings(doctor=["helpful"])


def test_settings_duplicate_adapter_name_is_refused():
    with pytest.raises(ValidationError, match="given twice: a"):
        ServerSettings(doctor=["a=/x", "a=/y"])


def test_settings_error_description_names_flag_env_and_expectation():
    with pytest.raises(ValidationError) as err:
        ServerSettings(max_batch="many")
    text = describe_validation_error(err.value)
    assert text.startswith("--max-batch (env LLMDOCTOR_MAX_BATCH): Input should be a valid integer")
    assert "'many'" in text


@pytest.mark.parametrize("field", ["request_timeout", "shutdown_grace"])
def test_settings_non_finite_seconds_are_refused(field):
    with pytest.raises(ValidationError, match="finite"):
        ServerSettings(**{field: "inf"})


def test_settings_auth_all_routes_without_api_key_is_refused():
    with pytest.raises(ValidationError) as err:
        ServerSettings(auth_all_routes=True)
    expected = "--auth-all-routes (env LLMDOCTOR_AUTH_ALL_ROUTES): needs --api-key"
    assert describe_validation_error(err.value).startswith(expected)


def test_settings_max_request_bytes_defaults_to_4_mib():
    assert ServerSettings().max_request_bytes == 4 * 1024 * 1024


def test_settings_completions_are_not_logged_by_default(monkeypatch):
    monkeypatch.delenv("LLMDOCTOR_FEEDBACK_DB", raising=False)
    monkeypatch.delenv("LLMDOCTOR_LOG_COMPLETIONS", raising=False)
    assert ServerSettings().completion_log_url is None


def test_settings_log_completions_defaults_to_sqlite_in_the_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMDOCTOR_FEEDBACK_DB", raising=False)
    settings = ServerSettings(log_completions=True, cache_dir=tmp_path)
    assert settings.completion_log_url == f"sqlite:///{tmp_path / 'feedback.db'}"


def test_settings_feedback_db_alone_turns_logging_on_unless_told_off(monkeypatch):
    monkeypatch.delenv("LLMDOCTOR_LOG_COMPLETIONS", raising=False)
    url = "postgresql+psycopg://ann@db/feedback"
    assert ServerSettings(feedback_db=url).completion_log_url == url
    assert ServerSettings(feedback_db=url, log_completions=False).completion_log_url is None
    monkeypatch.setenv("LLMDOCTOR_LOG_COMPLETIONS", "false")
    assert ServerSettings(feedback_db=url).completion_log_url is None
