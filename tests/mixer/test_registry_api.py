import pytest

from sphinx_mllm import mixer
from tests.registry_contract import check_list_and_get


@pytest.mark.parametrize(
    ("registry", "list_components", "get_component"),
    [
        (mixer.MIXERS, mixer.list_mixers, mixer.get_mixer),
        (mixer.PROJECTORS, mixer.list_projectors, mixer.get_projector),
        (mixer.VIEW_SPLITTERS, mixer.list_view_splitters, mixer.get_view_splitter),
    ],
    ids=["mixers", "projectors", "view_splitters"],
)
def test_mixer_registries_keep_the_contract(registry, list_components, get_component):
    check_list_and_get(registry, list_components, get_component)
