"""ComponentRegistry: run-time registration, wildcard listing, did-you-mean, provenance."""

import pytest

from sphinx_mllm.core import ComponentRegistry, UnknownComponentError


@pytest.fixture
def widgets():
    registry = ComponentRegistry("test_widgets")
    yield registry
    for name in list(registry.names()):
        registry.unregister(name)


def test_registered_component_is_listed_and_returned(widgets):
    @widgets.register("blue_widget")
    def blue_widget(size=1):
        """A blue widget."""
        return "blue" * size

    widgets.register("red_widget", func=lambda: "red")
    assert widgets.names() == ["blue_widget", "red_widget"]
    assert widgets.get("blue_widget")(size=2) == "blueblue"
    assert "red_widget" in widgets and "green_widget" not in widgets


def test_wildcards_follow_shell_rules(widgets):
    for name in ("clip_vit_l14", "clip_vit_l14_336", "dinov2_vitg14", "dinov2_vitg14_reg4"):
        widgets.register(name, func=object)
    assert widgets.names("clip*") == ["clip_vit_l14", "clip_vit_l14_336"]
    assert widgets.names("*_reg?") == ["dinov2_vitg14_reg4"]
    assert widgets.names("*vit*[gl]14") == ["clip_vit_l14", "dinov2_vitg14"]
    assert widgets.names("CLIP*") == []


def test_unknown_name_lists_close_matches(widgets):
    for name in ("clip_vit_l14", "clip_vit_l14_336", "dinov2_vitg14"):
        widgets.register(name, func=object)
    with pytest.raises(UnknownComponentError) as raised:
        widgets.get("clip_vit_l41")
    message = str(raised.value)
    assert "Unknown test_widget 'clip_vit_l41'" in message
    assert "Did you mean: clip_vit_l14" in message
    assert "dinov2_vitg14" not in message
    assert "sphinx_mllm_test_widgets" in message
    assert isinstance(raised.value, LookupError)


def test_unknown_name_without_close_match_lists_what_exists(widgets):
    widgets.register("alpha", func=object)
    with pytest.raises(UnknownComponentError, match=r"Registered test_widgets: alpha\."):
        widgets.get("zzzzzz")


def test_empty_registry_says_so(widgets):
    with pytest.raises(UnknownComponentError, match="No test_widgets are registered"):
        widgets.get("anything")


def test_info_reports_runtime_provenance_and_summary(widgets):
    @widgets.register("documented")
    def documented():
        """First line of the summary.

        Details that the summary leaves out.
        """

    info = widgets.info("documented")
    assert info.summary == "First line of the summary."
    assert info.distribution == "<registered at run time>"
    assert info.target.endswith(
        ":test_info_reports_runtime_provenance_and_summary.<locals>.documented"
    )


def test_unregister_unknown_name_raises(widgets):
    with pytest.raises(UnknownComponentError, match="was registered at run time"):
        widgets.unregister("never_registered")


@pytest.mark.parametrize("kind", ["Encoders", "encoder", "my-things", ""])
def test_kind_must_be_plural_snake_case(kind):
    with pytest.raises(ValueError, match="plural snake_case"):
        ComponentRegistry(kind)
