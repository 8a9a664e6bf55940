"""The contract every package's public `list_<kind>` / `get_<kind>` pair must keep."""

from collections.abc import Callable
from typing import Any

import pytest

from sphinx_mllm.core import ComponentRegistry, UnknownComponentError


def check_list_and_get(
    registry: ComponentRegistry,
    list_components: Callable[[str], list[str]],
    get_component: Callable[[str], Any],
) -> None:
    """A run-time registration shows through the package's functions, filtered by wildcard, and
    a misspelt name raises an error that names it; the registration is removed afterwards."""
    assert registry.group == f"sphinx_mllm_{registry.kind}"
    assert list_components.__name__ == f"list_{registry.kind}"
    assert get_component.__name__ == f"get_{registry.singular}"
    name = f"zz_contract_{registry.singular}"

    def component():
        """A component registered by the contract test."""

    before = list_components("*")
    registry.register(name, func=component)
    try:
        assert list_components("zz_contract_*") == [name]
        assert sorted([*before, name]) == list_components("*")
        assert get_component(name) is component
        with pytest.raises(UnknownComponentError, match=f"Did you mean: {name}"):
            get_component(name[:-2] + name[-1] + name[-2])
    finally:
        registry.unregister(name)
    assert name not in list_components("*")
