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

# Keywords Gemini's Schema object understands.
KEEP = frozenset(("type", "format", "description", "nullable", "enum", "properties", "required", "items",
                  "minItems", "maxItems", "minimum", "maximum", "minLength", "maxLength", "pattern",
                  "anyOf", "propertyOrdering"))
_MAX_DEPTH = 32


def clean_schema(schema: Any) -> dict:
    """A copy of ``schema`` Gemini will accept."""
    if not isinstance(schema, dict):
        return {"type": "object"}
    defs = {}
    for key in ("definitions", "$defs"):  # a client's schema: anything may be anything
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    return _clean(schema, defs, 0)


def _resolve(ref: str, defs: dict) -> Any:
    for prefix in ("#/$defs/", "#/definitions/"):
        if ref.startswith(prefix):
            return defs.get(ref[len(prefix):])
    return None


def _clean(node: Any, defs: dict, depth: int) -> dict:
    if not isinstance(node, dict) or depth > _MAX_DEPTH:
        return {"type": "string"} if depth > _MAX_DEPTH else {}
    if isinstance(node.get("$ref"), str):
        target = _resolve(node["$ref"], defs)
        merged = {**(target if isinstance(target, dict) else {}), **{k: v for k, v in node.items() if k != "$ref"}}
        return _clean(merged, defs, depth + 1)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _clean(sub, defs, depth + 1) for name, sub in value.items()}
        elif key == "items":
            out[key] = _clean(value, defs, depth + 1) if isinstance(value, dict) else {"type": "string"}
        elif key == "anyOf" and isinstance(value, list):
            options = [v for v in value if not (isinstance(v, dict) and v.get("type") == "null")]
            if len(options) < len(value):
                out["nullable"] = True
            if len(options) == 1:
                out.update(_clean(options[0], defs, depth + 1))
            else:
                out[key] = [_clean(v, defs, depth + 1) for v in options]
        elif key == "oneOf" and isinstance(value, list):  # Gemini knows anyOf only
            out["anyOf"] = [_clean(v, defs, depth + 1) for v in value]
        elif key == "const":
            out["enum"] = [value]
        elif key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            if len(types) < len(value):
                out["nullable"] = True
            out["type"] = types[0] if types else "string"
        elif key in KEEP:
            out[key] = value
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
        out["required"] = [r for r in out["required"] if isinstance(r, str) and r in out["properties"]]
    return out
