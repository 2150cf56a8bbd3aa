"""Every replica checks each adapter folder for itself, on its own disk, before it loads it.

The replica's own code (`EngineReplica._apply`, as its constructor and its follower run it) on a
real torch engine and the real `AdapterRegistry` class; only Ray's transport is left out: the
registry's methods are called in-process. The folder changes on disk after the gateway accepted it,
which is what a replica on another node (or one starting later) can meet.
"""

import inspect
import json
import shutil
from types import SimpleNamespace

import pytest
import pytest_asyncio

from llmdoctor.server.config import ServerSettings
from llmdoctor.server.engine.protocol import DoctorWeight, Guidance
from llmdoctor.server.engine.torch_engine import TorchEngine
from llmdoctor.server.errors import EngineDeadError
from llmdoctor.server.replicas.engine_replica import EngineReplica
from llmdoctor.server.replicas.registry import AdapterRegistry, Snapshot
from tests.server.engine.engine_calls import collect, make_request


class InProcess:
    """An actor's methods called here: `handle.method.remote(...)` awaits the method itself."""

    def __init__(self, actor):
        self.actor = actor

    def __getattr__(self, name):
        method = getattr(self.actor, name)

        async def remote(*args, **kwargs):
            result = method(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return SimpleNamespace(remote=remote)


@pytest.fixture(scope="module")
def tokenizer(embedded_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model.folder)


@pytest_asyncio.fixture(scope="module")
async def replica_engine(embedded_model):
    engine = TorchEngine(embedded_model, max_batch=4, max_queue=8)
    await engine.start()
    yield engine
    await engine.shutdown(grace_seconds=1)


@pytest_asyncio.fixture
async def replica(replica_engine):
    """A replica as its constructor leaves it, before it applied any adapter set."""
    replica = EngineReplica.__new__(EngineReplica)
    replica.settings = ServerSettings(max_lora_rank=16)
    replica.replica_id, replica.engine = "replica-under-test", replica_engine
    replica.registry = InProcess(AdapterRegistry("SERVE_REPLICA::test#EngineReplica#"))
    replica.doctors, replica.failures, replica.snapshot = {}, {}, Snapshot(-1)
    yield replica
    for adapter in replica_engine.adapters():
        await replica_engine.unload_adapter(adapter.name)


@pytest.fixture
def doctor_copy(doctor_adapter_dir, adapter_root, request):
    return shutil.copytree(doctor_adapter_dir, adapter_root / "replica-checks" / request.node.name)


def set_option(folder, **changes):
    file = folder / "adapter_config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))


async def propose_and_apply(replica, name, folder):
    """The gateway accepted `folder`; the replica applies the registry's new set and acks it."""
    version, _ = await replica.registry.propose.remote(name, "doctor", str(folder))
    await replica._apply(await replica.registry.snapshot.remote())
    return replica.registry.actor.acks[replica.replica_id]


async def test_replica_loads_a_folder_that_passes_its_checks(replica, doctor_copy, tokenizer):
    version, failures = await propose_and_apply(replica, "cheerful", doctor_copy)
    assert failures == {} and replica.doctors == {"cheerful": 1}
    guided = make_request(tokenizer, "Hello", Guidance(doctors=(DoctorWeight("cheerful", 1.0),)), max_tokens=4)
    assert len((await collect(replica, guided))[0]) == 4


async def test_replica_refuses_a_folder_changed_on_its_disk_and_reports_it(replica, doctor_copy, tokenizer):
    set_option(doctor_copy, use_dora=True)  # after the gateway's check, before this replica's
    _, failures = await propose_and_apply(replica, "cheerful", doctor_copy)
    assert "use_dora" in failures["cheerful"] and replica.engine.adapters() == []
    assert "use_dora" in replica.failures["cheerful"]  # in every heartbeat as adapter_failures
    guided = make_request(tokenizer, "Hello", Guidance(doctors=(DoctorWeight("cheerful", 1.0),)), max_tokens=4)
    with pytest.raises(EngineDeadError, match="use_dora"):
        await collect(replica, guided)
    plain = make_request(tokenizer, "Hello", max_tokens=4)
    assert len((await collect(replica, plain))[0]) == 4  # everything else is still served


async def test_replica_applies_its_own_settings_rank_cap(replica, second_doctor_adapter_dir, adapter_root):
    replica.settings = ServerSettings(max_lora_rank=4)  # the torch engine alone would take rank 8
    _, failures = await propose_and_apply(replica, "terse", second_doctor_adapter_dir)
    assert "rank" in failures["terse"] and replica.engine.adapters() == []


async def test_replica_forgets_a_refusal_once_the_adapter_is_gone(replica, doctor_copy):
    set_option(doctor_copy, bias="all")
    _, failures = await propose_and_apply(replica, "cheerful", doctor_copy)
    assert "bias" in failures["cheerful"]
    await replica.registry.remove.remote("cheerful")
    await replica._apply(await replica.registry.snapshot.remote())
    assert replica.failures == {}
