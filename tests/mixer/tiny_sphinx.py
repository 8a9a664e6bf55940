"""A tiny SPHINX visual stack for tests: the four SPHINX encoder families at 32 px (ConvNeXt fed
at 64 px, so its 2x2 grid is repeated to the 4x4 grid of the others, as SPHINX repeats 8x8 to
16x16)."""

from sphinx_mllm.encoders import create_encoder
from sphinx_mllm.mixer import EncoderStream, VisualStack

TINY_BASE = 32
TINY_OUT_DIM = 48


def tiny_sphinx_streams(frozen: bool = True) -> list[EncoderStream]:
    return [
        EncoderStream(create_encoder("tiny_clip_vit", frozen=frozen), name="clip"),
        EncoderStream(
            create_encoder("tiny_clip_convnext", frozen=frozen),
            image_size=64,
            resize="nearest",
            name="convnext",
        ),
        EncoderStream(
            create_encoder("tiny_dinov2", img_size=32, patch_size=8, frozen=frozen), name="dinov2"
        ),
        EncoderStream(create_encoder("tiny_blip2_qformer", frozen=frozen), name="qformer"),
    ]


def tiny_sphinx_stack(grid: int = 1, frozen: bool = True, **mixer_options) -> VisualStack:
    splitter = (
        ("single", {"base_size": TINY_BASE})
        if grid == 1
        else ("global_grid", {"base_size": TINY_BASE, "grid": grid})
    )
    return VisualStack(
        splitter[0],
        tiny_sphinx_streams(frozen),
        "channel_concat",
        out_dim=TINY_OUT_DIM,
        splitter_options=splitter[1],
        mixer_options=mixer_options,
    )
