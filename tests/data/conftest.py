"""Tokenizers shared by the template tests: the real SentencePiece model of the mistral-common
wheel and a byte-level BPE trained offline (built once per session)."""

import pytest

from tests.data.test_templates import _byte_level_bpe, _sentencepiece


@pytest.fixture(scope="session")
def sentencepiece_model():
    return _sentencepiece()


@pytest.fixture(scope="session")
def bpe_model():
    return _byte_level_bpe()
