"""The official `openai` client, pointed at Tessera with base_url, gets real embeddings back."""

import numpy as np
import openai

from tests.conftest import live_server, settings_for


def test_openai_client_float_and_default_base64(default_models_dir) -> None:
    with live_server(settings_for(default_models_dir)) as base_url:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused")
        texts = ["The quick brown fox.", "A fast auburn fox.", "Interest rates rose again."]
        default = client.embeddings.create(model="minilm-l6", input=texts)  # client asks for base64
        floats = client.embeddings.create(model="minilm-l6", input=texts, encoding_format="float")
        a = np.array([d.embedding for d in default.data])
        b = np.array([d.embedding for d in floats.data])
        assert a.shape == (3, 384)
        np.testing.assert_allclose(a, b, atol=1e-6)
        assert a[0] @ a[1] > a[0] @ a[2]
        assert default.usage.prompt_tokens > 0 and default.model == "minilm-l6"
        short = client.embeddings.create(model="minilm-l6", input="hello", dimensions=128)
        assert len(short.data[0].embedding) == 128
        try:
            client.embeddings.create(model="unknown", input="x")
        except openai.NotFoundError as exc:
            assert exc.body["code"] == "model_not_found"
        else:
            raise AssertionError("unknown model was accepted")
