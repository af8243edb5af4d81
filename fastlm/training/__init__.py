"""Training core: data pipeline, loop, evaluation."""

from fastlm.training.evaluate import EvalResult, evaluate_file
from fastlm.training.trainer import TrainConfig, train

__all__ = ["EvalResult", "TrainConfig", "evaluate_file", "train"]
