"""Adapter loads and unloads over HTTP, many at once: one name changes one way at a time (one 200,
the rest 409), and any sequence leaves the server serving its usual greedy tokens.

The real app in this process (its lifespan runs the torch engine on the embedded model), driven
with asyncio.gather through httpx's ASGI transport, so requests really overlap.
"""

import asyncio

import httpx
import pytest_asyncio

from llmdoctor.server.api.app import create_app
from llmdoctor.server.config import ServerSettings

PLAIN = {"prompt": "Tell me about the sea.", "max_tokens": 8, "temperature": 0}


@pytest_asyncio.fixture(scope="module")
async def http(adapter_root):
    app = create_app(ServerSettings(adapter_root=[adapter_root], max_batch=4, max_queue=16, default_doctors=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=120) as client:
            yield client


async def complete(http, **extra):
    reply = await http.post("/v1/completions", json={**PLAIN, **extra})
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["text"]


def load(http, name, path, kind="doctor"):
    return http.post("/v1/adapters", json={"name": name, "path": str(path), "kind": kind})


async def test_concurrent_loads_of_one_name_one_200_the_rest_409(http, doctor_adapter_dir):
    plain = await complete(http)
    replies = await asyncio.gather(*(load(http, "same-name", doctor_adapter_dir) for _ in range(4)))
    assert sorted(r.status_code for r in replies) == [200, 409, 409, 409]
    assert all(r.json()["error"]["param"] == "name" for r in replies if r.status_code == 409)
    assert await complete(http, guidance={"doctors": {"same-name": 1.5}}) != plain
    assert await complete(http) == plain
    assert (await http.delete("/v1/adapters/same-name")).status_code == 200


async def test_concurrent_load_and_unload_of_one_name_one_wins(http, doctor_adapter_dir):
    plain = await complete(http)
    replies = await asyncio.gather(load(http, "flip", doctor_adapter_dir), http.delete("/v1/adapters/flip"))
    assert replies[0].status_code == 200 and replies[1].status_code in (404, 409)
    assert [a["name"] for a in (await http.get("/v1/adapters")).json()["data"]] == ["flip"]
    assert (await http.delete("/v1/adapters/flip")).status_code == 200
    assert await complete(http) == plain


async def test_unload_every_adapter_then_load_a_new_name_serves(http, doctor_adapter_dir, patient_adapter_dir):
    plain = await complete(http)
    assert (await load(http, "cheerful", doctor_adapter_dir)).status_code == 200
    guided = await complete(http, guidance={"doctors": {"cheerful": 1.5}})
    assert (await load(http, "pirate", patient_adapter_dir, kind="patient")).status_code == 200
    for name in ("cheerful", "pirate"):
        assert (await http.delete(f"/v1/adapters/{name}")).status_code == 200
    assert (await http.get("/v1/adapters")).json()["data"] == [] and await complete(http) == plain
    assert (await load(http, "cheerful.v2", doctor_adapter_dir)).status_code == 200
    assert await complete(http, guidance={"doctors": {"cheerful.v2": 1.5}}) == guided
    assert await complete(http) == plain
    assert (await http.delete("/v1/adapters/cheerful.v2")).status_code == 200
