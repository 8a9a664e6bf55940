from sphinx_mllm.encoders import ENCODERS, get_encoder, list_encoders
from tests.registry_contract import check_list_and_get


def test_encoders_registry_keeps_the_contract():
    check_list_and_get(ENCODERS, list_encoders, get_encoder)
