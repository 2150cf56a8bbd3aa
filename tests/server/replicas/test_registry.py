"""server/replicas/registry.py: the adapter set's changes, on the registry class itself (no Ray)."""

import pytest

from llmdoctor.server.replicas.registry import AdapterRegistry


async def test_registry_unload_while_the_load_is_in_progress_refused():
    registry = AdapterRegistry("SERVE_REPLICA::test#EngineReplica#")
    await registry.propose("doc", "doctor", "/adapters/doc")
    with pytest.raises(ValueError):  # the gateway answers 409; the load's own path commits or removes it
        await registry.unload("doc")
    registry.commit("doc", {"rank": 8})
    version = await registry.unload("doc")
    assert "doc" not in registry.snapshot().adapters and registry.snapshot().version == version
    with pytest.raises(KeyError):  # the gateway answers 404
        await registry.unload("doc")
