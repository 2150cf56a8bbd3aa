import pytest
from transformers import AutoTokenizer


@pytest.fixture(scope="session")
def tokenizer(embedded_model):
    """The embedded model's real tokenizer (byte-level BPE, vocab 49152, with a chat template)."""
    return AutoTokenizer.from_pretrained(embedded_model.folder)
