"""Odd adapter paths through POST /v1/adapters: OS errors are 4xx naming `path`, never a 500, and no
message shows the server's resolved adapter root (the client's own given path may be echoed).

The checks themselves live in server/adapter_folders.py.
"""

import json

import httpx
import pytest

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
LONG_NAME = "a" * 300  # one component past NAME_MAX (255)
TOO_MANY = "/".join(["a" * 250] * 20)  # past PATH_MAX (4096)


def _load(live_server, path: str) -> httpx.Response:
    body = json.dumps({"name": "odd", "path": path, "kind": "doctor"})
    with live_server.client() as client:
        return client.post("/v1/adapters", content=body, headers={"Content-Type": "application/json"})


def _plain_request_succeeds(live_server) -> None:
    with live_server.client() as client:
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "a\u0000b",
        LONG_NAME,  # these three were 500s: Path.exists raised ENAMETOOLONG
        f"{LONG_NAME}/x",
        TOO_MANY,
        "\ud800",
        "missing",
        "/etc",
        "../../..",
    ],
)
def test_adapter_path_os_errors_are_4xx_naming_path(live_server, path):
    response = _load(live_server, path)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["param"] == "path"
    _plain_request_succeeds(live_server)


def test_adapter_path_absolute_too_long_inside_the_root_is_4xx(live_server, adapter_root):
    response = _load(live_server, f"{adapter_root}/{LONG_NAME}")
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize(
    "path",
    [
        "missing",
        "/etc",  # these two printed the resolved root
        "a\u0000b",
    ],
)
def test_adapter_path_error_does_not_show_the_adapter_root(live_server, adapter_root, path):
    response = _load(live_server, path)
    assert 400 <= response.status_code < 500
    message = response.json()["error"]["message"]
    assert str(adapter_root.resolve()) not in message and str(adapter_root) not in message


def test_adapter_refused_by_the_engine_does_not_show_the_adapter_root(live_server, adapter_root, doctor_adapter_dir):
    # Shapes that do not fit the model are the engine's check (against its own model's layers): its
    # message named the folder by its resolved, absolute path.
    import shutil

    from safetensors.torch import load_file, save_file

    folder = adapter_root / "path-errors-bad-shape"
    shutil.copytree(doctor_adapter_dir, folder, dirs_exist_ok=True)
    tensors = load_file(folder / "adapter_model.safetensors")
    q0 = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors[f"{q0}.lora_A.weight"], tensors[f"{q0}.lora_B.weight"] = tensors[f"{q0}.lora_A.weight"][:, :500], \
        tensors[f"{q0}.lora_B.weight"][:500]
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "adapter_model.safetensors")
    response = _load(live_server, folder.name)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "q_proj" in message
    assert str(adapter_root.resolve()) not in message and str(adapter_root) not in message
    _plain_request_succeeds(live_server)
