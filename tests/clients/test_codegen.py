"""The client's models are generated from the server's OpenAPI document and kept in step with it."""

from llmdoctor_client import _codegen


def test_generated_models_match_the_current_server():
    # On failure: python -m llmdoctor_client._codegen (then commit llmdoctor_client/_generated.py)
    assert _codegen.main(["--check"]) == 0, f"stale; refresh with: {_codegen.REFRESH_COMMAND}"
