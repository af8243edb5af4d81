"""What every model config shares: the bounds checked before anything is allocated, JSON in and
out. Each architecture's config dataclass lives in its own file (fastlm/models/<name>.py); it is
stored as config.json with the weights and describes the checkpoint."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from fastlm.limits import MAX_PARAMETERS
from fastlm.validation import check_float, check_int


class ConfigBase:
    """What every config dataclass shares: the `architecture` name (a class attribute, not a
    field) written into config.json beside the fields."""

    architecture: str

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, **dataclasses.asdict(self)}


def config_from_dict(data: dict[str, Any]):
    """Inverse of a config's `to_dict`; unknown keys are an error so a typo never passes
    silently. Types and bounds are checked (in the dataclass) before any tensor exists."""
    from fastlm.models import config_classes  # the registry's package imports this module

    if not isinstance(data, dict):
        raise TypeError(f"a model config must be a JSON object, got {type(data).__name__}")
    data = dict(data)
    arch = data.pop("architecture", None)
    known = config_classes()
    if arch not in known:
        raise ValueError(f"config architecture must be one of {sorted(known)}, got {arch!r}")
    cls = known[arch]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {arch} config keys: {sorted(unknown)}")
    return cls(**data)


def config_to_json(config) -> str:
    return json.dumps(config.to_dict(), indent=2)


def check_bounded(cfg, **limits: int) -> None:
    for name, limit in limits.items():
        check_int(getattr(cfg, name), name, min=1, max=limit)


def check_dropout(cfg) -> None:
    cfg.dropout = check_float(cfg.dropout, "dropout", min=0.0, max=1.0, max_open=True)


def check_parameters(count: int) -> None:
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"config describes ~{count:,} parameters, more than the {MAX_PARAMETERS:,} fastlm "
            "accepts; the config is damaged or not meant for fastlm"
        )
