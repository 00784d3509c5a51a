"""Config validation: the JSON schema (``workflow/schemas/config.schema.yaml``) first,
then checks a schema cannot express (k <= d, enough distinct strings, ...).

Every problem is reported with the config key that holds it and what is allowed;
all problems are collected before raising, so one run shows them all.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from memgen import MemgenError
from memgen.provenance import PACKAGE_DIR

DEFAULT_SCHEMA = PACKAGE_DIR.parents[1] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(MemgenError):
    pass


def _key(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _message(err) -> str:
    """One line per schema violation: key, offending value, what is allowed."""
    key = _key(err.absolute_path)
    v = err.validator
    if v == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        where = key if err.absolute_path else "top level"
        return f"{where}: unknown key(s) {', '.join(map(repr, extra))}; allowed: {', '.join(allowed)}"
    if v == "enum":
        return f"{key}: {err.instance!r} is not allowed; allowed: {', '.join(map(repr, err.validator_value))}"
    if v == "type":
        return f"{key}: {err.instance!r} has the wrong type; expected {err.validator_value}"
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        rel = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[v]
        return f"{key}: {err.instance!r} is out of range; must be {rel} {err.validator_value}"
    if v == "minItems":
        return f"{key}: needs at least {err.validator_value} item(s), got {len(err.instance)}"
    if v == "required":
        return f"{key}: {err.message}"
    return f"{key}: {err.message}"


def _with_defaults(validator_class):
    """Validator that fills in ``default`` values of the schema (like Snakemake's)."""
    from jsonschema import validators

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


def load_schema(path: str | Path = DEFAULT_SCHEMA) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _numbers(obj):
    """YAML 1.1 reads ``1e-3`` (no dot or no exponent sign) as a string: make it a float."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    if isinstance(obj, str) and _FLOAT.match(obj):
        return float(obj)
    return obj


def _cast_integers(value, schema):
    """Integral floats (``1e2``) in integer-typed fields become ints, so params JSON,
    hashes and code see the type the schema promises."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key, sub in props.items():
            if key in value:
                value[key] = _cast_integers(value[key], sub)
        return value
    if isinstance(value, list):
        return [_cast_integers(v, schema.get("items", {})) for v in value]
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    if "integer" in types and "number" not in types and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def validate(config: dict[str, Any], schema_path: str | Path = DEFAULT_SCHEMA) -> dict[str, Any]:
    """Validate ``config`` in place (defaults filled in) and return it.

    Numbers written like ``1e-3`` (read as strings by YAML 1.1) are converted first.
    Raises :class:`ConfigError` listing every problem.
    """
    from jsonschema import Draft202012Validator

    fixed = _numbers(config)
    config.clear()
    config.update(fixed)
    schema = load_schema(schema_path)
    validator = _with_defaults(Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    problems = [_message(e) for e in errors]
    if not problems:
        _cast_integers(config, schema)
        problems = semantic_problems(config)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return config


def semantic_problems(config: dict[str, Any]) -> list[str]:
    """Checks a JSON schema cannot state: the families exist, and each family's ``check``
    of its block (memgen.families)."""
    from memgen.families import registry

    fams = registry()
    out = [f"families: unknown family {f!r}; known: {', '.join(fams)}" for f in config.get("families", [])
           if f not in fams]
    for name, fam in fams.items():
        if isinstance(config.get(name), dict):
            out += [f"{name}.{problem}" for problem in fam.check(config[name])]
    return out


def load(path: str | Path, schema_path: str | Path = DEFAULT_SCHEMA) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as fh:
        config = yaml.safe_load(fh) or {}
    return validate(config, schema_path)
