"""Pixel transforms equal the preprocessing of open_clip and timm on real photos; SPHINX's
re-normalisation for DINOv2; clear errors."""

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from skimage import data as photos
from timm.data import create_transform

from sphinx_mllm.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImageTransform,
    clip_to_imagenet,
    create_encoder,
    renormalize,
)

PHOTOS = {"astronaut": photos.astronaut(), "coffee": photos.coffee(), "chelsea": photos.chelsea()}


@pytest.mark.parametrize("photo", sorted(PHOTOS))
@pytest.mark.parametrize("size", [224, 336])
def test_equals_open_clip_preprocessing(photo, size):
    image = Image.fromarray(PHOTOS[photo])
    ours = ImageTransform((size, size), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)(image)
    theirs = open_clip.image_transform(size, is_train=False)(image)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_equals_timm_preprocessing_for_dinov2(photo):
    image = Image.fromarray(PHOTOS[photo])
    encoder = create_encoder("dinov2_vitg14", device="meta")
    theirs = create_transform(
        input_size=(3, 224, 224),
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        crop_pct=1.0,
    )(image)
    torch.testing.assert_close(encoder.transform(image), theirs, rtol=0, atol=1e-6)


def test_without_crop_the_whole_image_is_squashed():
    image = Image.fromarray(PHOTOS["coffee"])  # 600 x 400
    pixels = ImageTransform((64, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), crop=False)(image)
    expected = torch.from_numpy(np.array(image.resize((32, 64), Image.Resampling.BICUBIC)))
    assert torch.equal(pixels.permute(1, 2, 0), expected.float() / 255)


def test_clip_to_imagenet_is_sphinx_renormalisation():
    clip_pixels = torch.randn(2, 3, 8, 8)
    clip_mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    clip_std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    imagenet_mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    imagenet_std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    sphinx = (clip_pixels * clip_std + clip_mean - imagenet_mean) / imagenet_std
    torch.testing.assert_close(clip_to_imagenet(clip_pixels), sphinx)


def test_renormalisation_round_trips_and_matches_direct_normalisation():
    image = Image.fromarray(PHOTOS["astronaut"])
    clip = ImageTransform((224, 224), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)(image)
    imagenet = ImageTransform((224, 224), IMAGENET_MEAN, IMAGENET_STD)(image)
    torch.testing.assert_close(clip_to_imagenet(clip), imagenet, rtol=1e-5, atol=1e-5)
    back = renormalize(
        clip_to_imagenet(clip), (IMAGENET_MEAN, IMAGENET_STD), (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    )
    torch.testing.assert_close(back, clip, rtol=1e-5, atol=1e-5)


def test_non_images_are_refused():
    with pytest.raises(TypeError, match="expects a PIL image, got ndarray"):
        ImageTransform((32, 32), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)(PHOTOS["astronaut"])


@pytest.mark.parametrize("bad", [0, (3,), (0, 5), -1])
def test_bad_sizes_are_refused(bad):
    from sphinx_mllm.encoders.transforms import to_size

    with pytest.raises(ValueError, match="positive int or"):
        to_size(bad)
