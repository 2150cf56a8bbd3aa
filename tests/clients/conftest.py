import pytest
from llmdoctor_client import AsyncClient, Client


@pytest.fixture(scope="session")
def sdk(live_server):
    """The SDK's sync client on the shared live server (API key "test-key")."""
    with Client(live_server.url, api_key=live_server.api_key, timeout=60) as client:
        yield client


@pytest.fixture
async def async_sdk(live_server):
    async with AsyncClient(live_server.url, api_key=live_server.api_key, timeout=60) as client:
        yield client
