"""VM names: a wrong one is explained in words, not with the regular expression."""

from __future__ import annotations

import pytest

from common.errors import ProtocolError
from common.ids import VM_NAME_RULE, vm_name, vm_name_problem


@pytest.mark.parametrize("name", ["web-1", "a", "0", "x" * 63])
def test_good_vm_names(name: str) -> None:
    assert vm_name_problem(name) is None
    assert vm_name(name) == name


@pytest.mark.parametrize("name", ["Web-1", "web_1", "web.1", "", "x" * 64, "héllo", "a b", "web>"])
def test_bad_vm_names_say_what_names_may_contain(name: str) -> None:
    problem = vm_name_problem(name)
    assert problem is not None
    assert VM_NAME_RULE in problem and "^" not in problem and "{" not in problem
    with pytest.raises(ProtocolError, match="lowercase letters"):
        vm_name(name)
