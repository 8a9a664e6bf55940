from sphinx_mllm.pipeline import MODEL_PRESETS, get_model_preset, list_model_presets
from tests.registry_contract import check_list_and_get


def test_model_presets_registry_keeps_the_contract():
    check_list_and_get(MODEL_PRESETS, list_model_presets, get_model_preset)
