"""JSON Schema -> the OpenAPI subset Gemini accepts for tools and JSON output.

Gemini answers 400 to ``additionalProperties``, ``$schema``, ``default``,
``title``, ``examples``, ``$defs``/``definitions``, ``const``,
``propertyNames`` (and others) and wants ``items`` on every array. So:
``$ref`` is inlined from ``$defs`` (recursion is cut at a depth bound),
``const`` becomes a one-value ``enum`` (non-string enums move into the
description: Gemini's enums are strings only), ``type: [T, "null"]`` becomes ``type:
T`` with ``nullable: true``, and only known keywords are kept. Property
*names* are never touched: a property called ``title`` stays.
"""

from __future__ import annotations

from typing import Any

import orjson

from .translate import invalid

# Keywords Gemini's Schema object understands.
KEEP = frozenset(("type", "format", "description", "nullable", "enum", "properties", "required", "items",
                  "minItems", "maxItems", "minimum", "maximum", "minLength", "maxLength", "pattern",
                  "anyOf", "propertyOrdering"))
_MAX_DEPTH = 32
TYPES = frozenset(("string", "number", "integer", "boolean", "array", "object", "null"))
_STRINGS = ("format", "description", "pattern")
_COUNTS = ("minItems", "maxItems", "minLength", "maxLength")
ANY_ITEM = {"type": "string"}  # Gemini wants a typed ``items``


def clean_schema(schema: Any, where: str = "schema") -> dict:
    """A copy of ``schema`` Gemini will accept; a 400 naming the path under ``where`` (the
    request field that holds the schema) when a keyword Gemini reads has a value of the
    wrong kind (``properties: 5``), which Gemini would refuse after a round trip."""
    if not isinstance(schema, dict):
        return {"type": "object"}
    defs = {}
    for key in ("definitions", "$defs"):  # a client's schema: anything may be anything
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    return _clean(schema, defs, 0, where)


def _resolve(ref: str, defs: dict) -> Any:
    for prefix in ("#/$defs/", "#/definitions/"):
        if ref.startswith(prefix):
            return defs.get(ref[len(prefix):])
    return None


def _sub(node: Any, defs: dict, depth: int, where: str, anything: dict | None = None) -> dict:
    """A subschema: an object, or a JSON Schema boolean (``anything``, ``{}`` by default)."""
    if isinstance(node, bool):
        return dict(anything or {})
    if not isinstance(node, dict):
        raise invalid(where, f"must be a JSON schema object, got {_kind(node)}")
    return _clean(node, defs, depth + 1, where)


def _clean(node: dict, defs: dict, depth: int, where: str) -> dict:
    if depth > _MAX_DEPTH:
        return {"type": "string"}
    if isinstance(node.get("$ref"), str):
        target = _resolve(node["$ref"], defs)
        merged = {**(target if isinstance(target, dict) else {}), **{k: v for k, v in node.items() if k != "$ref"}}
        return _clean(merged, defs, depth + 1, where)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            if not isinstance(value, dict):
                raise invalid(f"{where}.properties", f"must be an object of property schemas, got {_kind(value)}")
            out[key] = {name: _sub(sub, defs, depth, f"{where}.properties.{name}") for name, sub in value.items()}
        elif key == "items":
            # (a list is draft-07's tuple form, which Gemini lacks: any item is a string then)
            out[key] = _sub(value, defs, depth, f"{where}.items", ANY_ITEM) if not isinstance(value, list) \
                else dict(ANY_ITEM)
        elif key in ("anyOf", "oneOf"):  # Gemini knows anyOf only
            if not isinstance(value, list):
                raise invalid(f"{where}.{key}", f"must be a list of schemas, got {_kind(value)}")
            options = [(i, v) for i, v in enumerate(value) if not (isinstance(v, dict) and v.get("type") == "null")]
            if len(options) < len(value):
                out["nullable"] = True
            cleaned = [_sub(v, defs, depth, f"{where}.{key}[{i}]") for i, v in options]
            if len(cleaned) == 1:
                out.update(cleaned[0])
            else:
                out["anyOf"] = cleaned
        elif key == "const":
            out["enum"] = [value]
        elif key == "type":
            out.update(_type(value, where))
        elif key in KEEP:
            out[key] = _checked(key, value, where)
    if out.get("type") == "array" and "items" not in out:
        out["items"] = {"type": "string"}
    enum = out.get("enum")
    if isinstance(enum, list) and not all(isinstance(v, str) for v in enum):
        # Gemini's enums are strings only; rather than change the value's type,
        # the allowed values move into the description.
        del out["enum"]
        allowed = "allowed values: " + ", ".join(map(str, enum))
        out["description"] = f"{out['description']} ({allowed})" if out.get("description") else allowed
    if isinstance(out.get("required"), list) and isinstance(out.get("properties"), dict):
        out["required"] = [r for r in out["required"] if r in out["properties"]]
    return out


def _type(value: Any, where: str) -> dict:
    """``type`` as Gemini has it: one type; ``[T, "null"]`` is ``T`` and ``nullable``."""
    types = value if isinstance(value, list) else [value]
    for t in types:
        if not isinstance(t, str) or t.lower() not in TYPES:
            raise invalid(f"{where}.type", f"must be one of {', '.join(sorted(TYPES))} (or a list of them), "
                                           f"got {_kind(value)}")
    out: dict[str, Any] = {}
    kept = [t for t in types if t.lower() != "null"]
    if len(kept) < len(types):
        out["nullable"] = True
    out["type"] = kept[0] if kept else "string"
    return out


def _checked(key: str, value: Any, where: str) -> Any:
    """A kept keyword's value, when it is of the kind Gemini reads."""
    if key in _STRINGS:
        ok, kind = isinstance(value, str), "a string"
    elif key in _COUNTS:
        ok, kind = type(value) is int and value >= 0, "an integer of at least 0"
    elif key in ("minimum", "maximum"):
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif key == "nullable":
        ok, kind = isinstance(value, bool), "true or false"
    elif key == "enum":
        ok, kind = isinstance(value, list), "a list of values"
    else:  # required, propertyOrdering
        ok, kind = isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of property names"
    if not ok:
        raise invalid(f"{where}.{key}", f"must be {kind}, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    """What a JSON value is, for an error message (the value itself only when short)."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else f"a JSON {_JSON_KINDS.get(type(value), 'value')}"


_JSON_KINDS = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
