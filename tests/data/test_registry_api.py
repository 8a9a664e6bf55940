import pytest

from sphinx_mllm import data
from tests.registry_contract import check_list_and_get


@pytest.mark.parametrize(
    ("registry", "list_components", "get_component"),
    [
        (data.TASK_BUILDERS, data.list_task_builders, data.get_task_builder),
        (data.CHAT_TEMPLATES, data.list_chat_templates, data.get_chat_template),
    ],
    ids=["task_builders", "chat_templates"],
)
def test_data_registries_keep_the_contract(registry, list_components, get_component):
    check_list_and_get(registry, list_components, get_component)
