"""docs/protocol.md is exactly what tools/gen_protocol_doc.py generates (no NATS needed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
DOC = ROOT / "docs" / "protocol.md"
REGENERATE = "python tools/gen_protocol_doc.py > docs/protocol.md"


def load_generator() -> ModuleType:
    if str(TOOLS) not in sys.path:  # as when run as a script: it imports its sibling modules
        sys.path.insert(0, str(TOOLS))
    spec = importlib.util.spec_from_file_location("gen_protocol_doc", TOOLS / "gen_protocol_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_committed_doc_matches_the_generator() -> None:
    expected = load_generator().render()
    assert DOC.read_text() == expected, f"docs/protocol.md is stale: run {REGENERATE}"


def test_every_subject_is_described() -> None:
    generator = load_generator()
    missing = generator.undocumented_subjects()
    assert missing == [], f"describe these in tools/gen_protocol_doc.py SUBJECTS: {missing}"


def test_every_error_code_is_described() -> None:
    generator = load_generator()
    assert generator.UNDOCUMENTED not in "\n".join(generator.render_errors())


def test_every_message_type_is_in_the_doc() -> None:
    generator = load_generator()
    text = generator.render()
    for cls in generator.message_types():
        assert f"### {cls.__name__}\n" in text


def test_every_stream_and_bucket_name_is_in_the_doc() -> None:
    from common import subjects

    text = load_generator().render()
    names = [
        value
        for name, value in vars(subjects).items()
        if name.isupper()
        and name != "ROOT"
        and isinstance(value, str)
        and not value.startswith(subjects.ROOT + ".")
    ]
    assert names, "common.subjects has stream names"
    for value in names:
        assert f"`{value}`" in text, f"describe {value} in tools/gen_protocol_doc.py"
