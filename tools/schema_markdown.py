"""How the protocol doc renders the wire structs: a JSON Schema node (from
``msgspec.json.schema_components``) as a short readable type with its constraints, each struct
as one table of its fields with the notes read from the struct's source (the string right after
a field), and a tagged union as one line. Used by tools/gen_protocol_doc.py, which says what the
document contains."""

from __future__ import annotations

import ast
import inspect
import json
import sys
from collections.abc import Iterable, Mapping

Schema = Mapping[str, object]
"""One JSON Schema node."""


def link(name: str) -> str:
    return f"[{name}](#{name.lower()})"


def ref_name(schema: Schema) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def schema_list(value: object) -> list[Schema]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def type_of(schema: Schema) -> str:
    """A short, readable type for one JSON Schema node."""
    name = ref_name(schema)
    if name is not None:
        return link(name)
    if "anyOf" in schema:
        return " \\| ".join(type_of(option) for option in schema_list(schema["anyOf"]))
    if "enum" in schema and isinstance(schema["enum"], list):
        return " \\| ".join(f'`"{value}"`' for value in schema["enum"])
    kind = schema.get("type")
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"list[{type_of(schema['items'])}]"  # type: ignore[arg-type]
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"dict[string, {type_of(schema['additionalProperties'])}]"  # type: ignore[arg-type]
    if kind == "string" and schema.get("format") == "date-time":
        return "datetime (RFC 3339)"
    return str(kind) if kind is not None else "any"


CONSTRAINTS = (
    ("minLength", "len ≥ {}"),
    ("maxLength", "len ≤ {}"),
    ("minimum", "≥ {}"),
    ("exclusiveMinimum", "> {}"),
    ("maximum", "≤ {}"),
    ("pattern", "`{}`"),
)


def constraints_of(schema: Schema) -> str:
    nodes = [schema, *schema_list(schema.get("anyOf"))]
    found = [
        template.format(node[key]) for node in nodes for key, template in CONSTRAINTS if key in node
    ]
    return ", ".join(found)


def field_docs(types: Iterable[type]) -> dict[str, dict[str, str]]:
    """Attribute docstrings (a string right after a field) of each class, read from the source."""
    docs: dict[str, dict[str, str]] = {}
    for source in {inspect.getsource(sys.modules[cls.__module__]) for cls in types}:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                docs[node.name] = _class_field_docs(node)
    return docs


def _assigned_name(node: ast.stmt) -> str | None:
    """The name a field (``x: int = 1``) or enum member (``X = "x"``) statement defines."""
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
        return target.id if isinstance(target, ast.Name) else None
    return None


def _class_field_docs(node: ast.ClassDef) -> dict[str, str]:
    found: dict[str, str] = {}
    for before, after in zip(node.body, node.body[1:], strict=False):
        name = _assigned_name(before)
        if name and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            found[name] = " ".join(str(after.value.value).split())
    return found


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("``", "`")


def render_component(name: str, schema: Schema, docs: Mapping[str, str]) -> list[str]:
    lines = [f"### {name}", ""]
    description = schema.get("description")
    if isinstance(description, str):
        lines += [cell(" ".join(description.split())), ""]
    if "enum" in schema and isinstance(schema["enum"], list):
        values = ", ".join(f"`{value}`" for value in schema["enum"])
        return [*lines, f"String enum: {values}.", ""]
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        return [*lines, "An object with no fields: send `{}` (an empty body also works).", ""]
    required = schema.get("required")
    required_names = set(required) if isinstance(required, list) else set()
    lines += [
        "| field | type | required | default | constraints | notes |",
        "|---|---|---|---|---|---|",
    ]
    for field_name, field_schema in properties.items():
        default = field_schema.get("default", "")
        default_text = "" if field_name in required_names else json.dumps(default)
        lines.append(
            f"| `{field_name}` | {type_of(field_schema)} | "
            f"{'yes' if field_name in required_names else 'no'} | {cell(default_text)} | "
            f"{cell(constraints_of(field_schema))} | "
            f"{cell(docs.get(field_name, ''))} |"
        )
    return [*lines, ""]


def union_line(schema: Schema) -> str:
    options = [ref_name(option) for option in schema_list(schema.get("anyOf"))]
    discriminator = schema.get("discriminator")
    tag = discriminator.get("propertyName") if isinstance(discriminator, dict) else None
    names = ", ".join(link(name) for name in options if name)
    return f"One of {names}, told apart by the `{tag}` field."
