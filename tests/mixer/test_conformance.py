"""Sweeps of the mixer and view-splitter registries: every registered entry, with a tiny
configuration, keeps its declared counts. Registering one is enough to get it tested."""

import pytest
import torch
from PIL import Image

from sphinx_mllm.encoders import EncoderOutput
from sphinx_mllm.mixer import get_mixer, get_view_splitter, list_mixers, list_view_splitters
from sphinx_mllm.mixer.mixing import StreamSpec

STREAMS = [
    StreamSpec("vit", 8, (4, 4), True, 17),
    StreamSpec("convnet", 12, (2, 2), False, 4),
    StreamSpec("queries", 6, None, False, 3),
]


def fake_outputs(views: int) -> list[EncoderOutput]:
    return [
        EncoderOutput(torch.randn(views, s.num_tokens, s.embed_dim), s.grid, s.leading_token)
        for s in STREAMS
    ]


@pytest.mark.parametrize("name", list_mixers())
@pytest.mark.parametrize(
    "options", [{}, {"wrap_views": True, "row_separators": True, "tile_pool": (2, 2)}]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_mixer_keeps_its_declared_counts_and_dtype(name, options, dtype):
    mixer = get_mixer(name)(STREAMS, 16, dtype=dtype, **options)
    for kind in ("global", "tile"):
        tokens = mixer(fake_outputs(5), kind)
        assert tokens.shape == (5, mixer.num_tokens(kind), 16)
        assert tokens.dtype == dtype
        assert sum(length for _, length in mixer.view_segments(kind)) == mixer.num_tokens(kind)


@pytest.mark.parametrize("name", list_mixers())
def test_every_mixer_builds_on_the_meta_device(name):
    mixer = get_mixer(name)(STREAMS, 4096, device="meta")
    assert all(p.is_meta for p in mixer.parameters())


@pytest.mark.parametrize("name", list_view_splitters())
@pytest.mark.parametrize("size", [(97, 61), (61, 97), (64, 64), (500, 120)])
def test_every_splitter_gives_the_views_its_layout_declares(name, size):
    splitter = get_view_splitter(name)(base_size=32)
    views, layout = splitter.split(Image.new("RGB", size, (10, 200, 30)))
    assert views.shape == (layout.num_views, 3, 32, 32)
    assert layout.num_views == splitter.num_views(size)
    assert layout.views[0].kind == "global" and all(v.kind == "tile" for v in layout.views[1:])
    assert (
        views.dtype == torch.float32
        and float(views.min()) >= 0.0
        and float(views.max()) <= 1.0 + 1e-3
    )
    if splitter.fixed_views is not None:
        assert layout.num_views == splitter.fixed_views
