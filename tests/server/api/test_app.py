"""create_app without an engine builds one from the settings in its lifespan, and shuts it down."""

from fastapi.testclient import TestClient

from llmdoctor.server.api.app import create_app
from llmdoctor.server.config import ServerSettings
from llmdoctor.server.shipped_doctors import shipped_doctors


def test_app_without_engine_builds_the_configured_one_and_serves():
    app = create_app(ServerSettings(max_batch=1, max_queue=1))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        models = client.get("/v1/models").json()["data"]
        # the embedded default comes with its shipped doctors
        assert [m["id"] for m in models] == ["SmolLM2-135M-Instruct", *sorted(e.name for e in shipped_doctors())]
        engine = app.state.services.engine
    assert not engine.healthy  # the lifespan shut it down
