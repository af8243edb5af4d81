"""One generate convention everywhere: greedy unless temperature > 0; a list of prompts works."""

from __future__ import annotations

import pytest
import torch

import fastlm
from fastlm.models import SimpleLSTM_LM, SimpleTransformer_LM


@pytest.mark.parametrize("cls", [SimpleLSTM_LM, SimpleTransformer_LM])
def test_model_classes_are_greedy_by_default(cls):
    torch.manual_seed(0)
    model = cls(vocab_size=50, num_layers=1)
    greedy = model.generate([1, 2], max_length=12, temperature=0)
    assert model.generate([1, 2], max_length=12) == greedy
    sampled = {
        tuple(model.generate([1, 2], max_length=12, temperature=5.0, seed=s)) for s in range(4)
    }
    assert len(sampled) > 1  # sampling is still there when asked for


@pytest.mark.parametrize("backend", ["eager", "compile"])
def test_engine_is_greedy_by_default_on_every_torch_backend(backend):
    model = fastlm.load("lstm", backend=backend, device="cpu", threads=1)
    greedy = model.generate("The old house", max_new_tokens=10, temperature=0)
    assert model.generate("The old house", max_new_tokens=10) == greedy
    assert model.generate(["The old house", "A"], max_new_tokens=10) == [
        greedy,
        model.generate("A", max_new_tokens=10, temperature=0),
    ]


def test_a_list_of_prompts_cannot_stream():
    model = fastlm.load("lstm", backend="eager", device="cpu", threads=1)
    with pytest.raises(TypeError, match="one prompt"):
        model.generate(["a", "b"], stream=True)
    assert model.generate([5, 6], max_new_tokens=3) == model.generate(
        [5, 6], max_new_tokens=3, temperature=0
    )  # a list of ints is still token ids
