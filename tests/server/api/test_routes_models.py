def test_models_list_the_patient_its_adapters_and_the_doctors(openai_client):
    kinds = {m.id: m.model_extra["kind"] for m in openai_client.models.list().data}
    assert kinds["SmolLM2-135M-Instruct"] == "patient"
    assert kinds["pirate"] == "patient_adapter"
    assert kinds["cheerful"] == "doctor"
