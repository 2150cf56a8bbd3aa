import subprocess
import sys

import pytest

from llmdoctor.server.cli import COMMANDS, build_parser, main, settings_from_args


def parse(*argv):
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_cli_serve_flags_become_settings():
    settings = parse("--port", "8123", "--max-batch", "4", "--engine", "torch", "--api-key", "k")
    assert (settings.port, settings.max_batch, settings.engine) == (8123, 4, "torch")


def test_cli_repeatable_flags_collect_every_value():
    settings = parse("--doctor", "a=/x", "--doctor", "b=/y", "--adapter-root", "/r1", "--adapter-root", "/r2")
    assert [d.name for d in settings.doctor] == ["a", "b"] and len(settings.adapter_root) == 2


def test_cli_flag_wins_over_env_var(monkeypatch):
    monkeypatch.setenv("LLMDOCTOR_MAX_QUEUE", "7")
    assert parse().max_queue == 7
    assert parse("--max-queue", "9").max_queue == 9


def test_cli_help_names_each_env_var(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for env in ("LLMDOCTOR_MODEL", "LLMDOCTOR_DOCTOR", "LLMDOCTOR_MAX_BATCH", "LLMDOCTOR_REQUEST_TIMEOUT"):
        assert env in text


def test_cli_bad_value_exits_2_naming_the_flag(capsys):
    assert main(["serve", "--max-batch", "0"]) == 2
    expected = "--max-batch (env LLMDOCTOR_MAX_BATCH): Input should be greater than or equal to 1"
    assert expected in capsys.readouterr().err


def test_cli_vllm_engine_where_vllm_does_not_import_exits_2_naming_the_extras(capsys, monkeypatch):
    # a missing or broken vLLM cannot be caused in a venv that has it: stand in for the failed import
    from llmdoctor.server.engine import vllm_engine

    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)
    assert main(["serve", "--engine", "vllm"]) == 2
    assert "--engine vllm: vLLM does not import here" in capsys.readouterr().err


def test_cli_unknown_model_path_exits_2(capsys, tmp_path):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "--model" in capsys.readouterr().err


def test_cli_commands_are_a_registry_with_serve():
    assert {"serve", "data"} <= {c.name for c in COMMANDS}


def test_cli_without_a_command_shows_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2 and "COMMAND" in capsys.readouterr().err


def test_cli_start_logs_model_cache_and_ready_time(live_server):
    log = live_server.log()
    assert "model cache:" in log and "ready in" in log


def test_cli_missing_startup_adapter_exits_2_naming_the_flag(capsys, tmp_path):
    assert main(["serve", "--doctor", f"helpful={tmp_path / 'missing'}"]) == 2
    assert "--doctor helpful=" in capsys.readouterr().err


def test_cli_startup_adapter_of_the_wrong_kind_exits_2(capsys, patient_adapter_dir):
    assert main(["serve", "--doctor", f"pirate={patient_adapter_dir}"]) == 2
    assert "patient adapter" in capsys.readouterr().err


def test_serve_with_too_long_max_model_len_exits_2_with_one_line(capsys):
    from llmdoctor.server.cli import main

    assert main(["serve", "--max-model-len", "999999", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "--max-model-len 999999 exceeds the model's 8192 positions" in err and "Traceback" not in err


def test_without_replicas_nothing_of_ray_is_imported():
    # the embedded default stays in-process: building the CLI and the app never touches Ray
    code = ("import sys\n"
            "from llmdoctor.server.cli import build_parser\n"
            "build_parser().parse_args(['serve'])\n"
            "import llmdoctor.server.api.server_runner, llmdoctor.server.api.app\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ray_address_without_replicas_exits_2(capsys):
    assert main(["serve", "--ray-address", "auto"]) == 2
    assert "--ray-address needs --replicas N" in capsys.readouterr().err


def test_replicas_must_be_at_least_one(capsys):
    assert main(["serve", "--replicas", "0"]) == 2
    assert "--replicas (env LLMDOCTOR_REPLICAS): Input should be greater than or equal to 1" in capsys.readouterr().err


def test_cli_bool_setting_is_a_switch_with_a_no_form(monkeypatch):
    monkeypatch.setenv("LLMDOCTOR_AUTH_ALL_ROUTES", "true")
    assert parse("--api-key", "k").auth_all_routes is True
    assert parse("--api-key", "k", "--no-auth-all-routes").auth_all_routes is False
    monkeypatch.delenv("LLMDOCTOR_AUTH_ALL_ROUTES")
    assert parse("--api-key", "k", "--auth-all-routes").auth_all_routes is True
