"""Hot-loading adapters over HTTP on the live server (its --adapter-root is `adapter_root`)."""

import pytest


@pytest.fixture
def http(live_server):
    with live_server.client() as client:
        yield client


def load(http, name, path, kind="doctor"):
    return http.post("/v1/adapters", json={"name": name, "path": str(path), "kind": kind})


def test_adapter_hot_load_lists_serves_and_unloads(http, openai_client, second_doctor_adapter_dir):
    loaded = load(http, "terse", second_doctor_adapter_dir)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["kind"] == "doctor" and loaded.json()["rank"] == 8
    assert "terse" in [a["name"] for a in http.get("/v1/adapters").json()["data"]]
    guided = openai_client.completions.create(model=None, prompt="Hi", max_tokens=2,
                                              extra_body={"guidance": {"doctors": {"terse": 0.5}}})
    assert guided.usage.completion_tokens == 2
    assert http.delete("/v1/adapters/terse").json() == {"object": "adapter.deleted", "name": "terse", "deleted": True}
    assert "terse" not in [m.id for m in openai_client.models.list().data]


def test_adapter_relative_path_resolves_under_the_root(http, second_doctor_adapter_dir):
    assert load(http, "terse-rel", second_doctor_adapter_dir.name).status_code == 200
    assert http.delete("/v1/adapters/terse-rel").status_code == 200


def test_adapter_unload_of_unknown_name_is_404(http):
    assert http.delete("/v1/adapters/never-loaded").status_code == 404


def test_adapter_path_outside_the_roots_is_403(http, tmp_path):
    error = load(http, "outside", tmp_path).json()["error"]
    assert error["code"] == 403 and error["param"] == "path"


def test_adapter_wrong_kind_is_400_saying_which(http, patient_adapter_dir):
    error = load(http, "pirate-doctor", patient_adapter_dir, kind="doctor").json()["error"]
    assert error["code"] == 400 and "patient adapter" in error["message"]


def test_adapter_name_in_use_is_409(http, second_doctor_adapter_dir):
    assert load(http, "cheerful", second_doctor_adapter_dir).status_code == 409


def test_adapter_bad_name_is_400(http, second_doctor_adapter_dir):
    error = load(http, "no spaces/allowed", second_doctor_adapter_dir).json()["error"]
    assert error["code"] == 400 and error["param"] == "name"


def test_adapters_load_and_unload_during_traffic_leave_in_flight_requests_intact(
    live_server, second_doctor_adapter_dir, patient_adapter_dir
):
    """Requests in flight while adapters come and go finish exactly as they would alone."""
    from concurrent.futures import ThreadPoolExecutor

    client = live_server.openai()
    prompt = "Write a few sentences about the sea."

    def complete(model=None, guidance=None, tokens=40):
        extra = {"ignore_eos": True, **({"guidance": guidance} if guidance else {})}
        reply = client.completions.create(model=model, prompt=prompt, max_tokens=tokens, temperature=0,
                                          extra_body=extra)
        return reply.choices[0].text

    with live_server.client() as http:
        bare_alone = complete()
        assert load(http, "traffic-doc", second_doctor_adapter_dir).status_code == 200
        guided_alone = complete(guidance={"doctors": {"traffic-doc": 1.0}})
        with ThreadPoolExecutor(4) as pool:
            bare = [pool.submit(complete) for _ in range(2)]
            guided = pool.submit(complete, guidance={"doctors": {"traffic-doc": 1.0}})
            # while those decode: a patient adapter arrives, gets used, and the doctor leaves
            assert load(http, "traffic-pat", patient_adapter_dir, kind="patient").status_code == 200
            patient_reply = complete(model="traffic-pat", tokens=8)
            assert http.delete("/v1/adapters/traffic-doc").status_code == 200
            assert [f.result() for f in bare] == [bare_alone, bare_alone]
            assert guided.result() == guided_alone
        assert patient_reply and complete(model="traffic-pat", tokens=8) == patient_reply
        assert http.delete("/v1/adapters/traffic-pat").status_code == 200
    with pytest.raises(Exception, match="traffic-doc"):
        complete(guidance={"doctors": {"traffic-doc": 1.0}})
