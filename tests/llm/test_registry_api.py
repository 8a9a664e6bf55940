from sphinx_mllm.llm import MERGE_METHODS, get_merge_method, list_merge_methods
from tests.registry_contract import check_list_and_get


def test_merge_methods_registry_keeps_the_contract():
    check_list_and_get(MERGE_METHODS, list_merge_methods, get_merge_method)
