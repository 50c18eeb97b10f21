"""Typed configuration, loaded once at an entry point: YAML file < environment < flags.

Every service has a pydantic model of its settings. `load_config` merges a YAML file, then
`DUPLEX_<FIELD>` environment variables (lists comma-separated), then command-line overrides,
and validates the result once; modules receive the typed object, never the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from duplex.errors import InvalidInput

C = TypeVar("C", bound=BaseModel)


def _from_env(model: type[BaseModel], env: Mapping[str, str], prefix: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        raw = env.get(f"{prefix}{name.upper()}")
        if raw is None:
            continue
        origin = get_origin(field.annotation)
        if origin in (list, tuple, set):
            values[name] = [item.strip() for item in raw.split(",") if item.strip()]
        elif origin is dict:
            pairs = (item.split("=", 1) for item in raw.split(",") if "=" in item)
            values[name] = {k.strip(): v.strip() for k, v in pairs}
        else:
            values[name] = raw
    return values


def load_config(
    model: type[C],
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    prefix: str = "DUPLEX_",
) -> C:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InvalidInput(f"cannot read config {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise InvalidInput(f"config {path} must be a mapping at the top level")
        data.update(loaded)
    data.update(_from_env(model, os.environ if env is None else env, prefix))
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"invalid configuration: {exc}") from exc
