"""The two seed language models and their configs."""

from fastlm.models.config import (
    CONFIGS as CONFIGS_BY_NAME,
)
from fastlm.models.config import (
    LSTMConfig,
    ModelConfig,
    TransformerConfig,
    config_from_dict,
)
from fastlm.models.lstm import SimpleLSTM_LM
from fastlm.models.transformer import SimpleTransformer_LM

MODEL_CLASSES = {"lstm": SimpleLSTM_LM, "transformer": SimpleTransformer_LM}


def build_model(config: ModelConfig):
    """Instantiate the model class that matches `config.architecture`."""
    return MODEL_CLASSES[config.architecture].from_config(config)


__all__ = [
    "CONFIGS_BY_NAME",
    "LSTMConfig",
    "ModelConfig",
    "MODEL_CLASSES",
    "SimpleLSTM_LM",
    "SimpleTransformer_LM",
    "TransformerConfig",
    "build_model",
    "config_from_dict",
]
