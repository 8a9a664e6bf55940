"""SphinxModel: visual tokens at the image-token runs of the ids, labels, loss, dtypes."""

import pytest
import torch
import torch.nn.functional as F

from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.placement import IGNORE_INDEX
from tests.pipeline.conftest import tiny_config

IMAGE = 256  # the tiny config's image-token id: the first id past the LLM's vocabulary
N = 19  # visual tokens per image: start, CLS, 4x4 grid, end


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config())


def _hand_placed_logits(model, ids, views):
    """The placement restated by hand: embed text ids, overwrite image positions in order."""
    visual = model.visual(views).tokens
    embeddings = model.llm.get_input_embeddings()(ids.clamp(max=255))
    flat = iter(visual.reshape(-1, visual.shape[-1]))
    rows = []
    for row in range(ids.shape[0]):
        rows.append(
            torch.stack(
                [
                    next(flat) if int(t) == IMAGE else embeddings[row, i]
                    for i, t in enumerate(ids[row])
                ]
            )
        )
    return model.llm(inputs_embeds=torch.stack(rows)).logits


def test_placeholder_placement_equals_the_hand_statement_with_several_images_per_sample(model):
    text = torch.randint(3, 250, (2, 30))
    ids = text.clone()
    ids[0, 2 : 2 + N] = IMAGE  # sample 0: two images
    ids[0, 24:30] = text[0, 24:30]
    ids = torch.cat([ids, text[:, :N]], dim=1)
    ids[0, 30 : 30 + N] = IMAGE
    ids[1, 5 : 5 + N] = IMAGE  # sample 1: one image
    views = torch.rand(3, 1, 3, 32, 32)
    ours = model(ids, views).logits
    torch.testing.assert_close(ours, _hand_placed_logits(model, ids, views), rtol=0, atol=1e-5)


def test_the_sphinx_sequence_is_bos_then_view_tokens_then_text(model):
    """SPHINX's form, as the processor writes it for prefix placement: [BOS][start, view
    tokens, end][text]; the logits equal the recipe computed by hand, and the labels of the
    visual positions are ignored."""
    text = torch.cat([torch.ones(2, 1, dtype=torch.long), torch.randint(3, 250, (2, 12))], 1)
    ids = torch.cat([text[:, :1], torch.full((2, N), IMAGE), text[:, 1:]], dim=1)
    labels = ids.clone()
    labels[:, : 1 + N + 4] = IGNORE_INDEX
    views = torch.rand(2, 1, 3, 32, 32)
    output = model(ids, views, labels=labels)
    visual = model.visual(views).tokens
    assert visual.shape[1] == N
    torch.testing.assert_close(visual[:, 0], model.visual.mixer.format.start[0].expand(2, -1))
    torch.testing.assert_close(visual[:, -1], model.visual.mixer.format.end[0].expand(2, -1))
    embed = model.llm.get_input_embeddings()
    sequence = torch.cat([embed(text[:, :1]), visual, embed(text[:, 1:])], dim=1)
    expected = model.llm(inputs_embeds=sequence).logits
    assert output.logits.shape == (2, 1 + N + 12, 256)
    torch.testing.assert_close(output.logits, expected, rtol=0, atol=1e-5)
    manual = F.cross_entropy(
        expected[:, :-1].reshape(-1, 256), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(output.loss, manual)


def test_left_padding_does_not_shift_positions(model):
    ids = torch.tensor([[0, 0, 1] + [IMAGE] * N + [7, 8], [1, 5, 6] + [IMAGE] * N + [7, 8]])
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    sequence = model.embed_inputs(ids, torch.rand(2, 1, 3, 32, 32), mask).sequence
    assert sequence.position_ids[0, 2] == 0 and sequence.position_ids[1, 0] == 0
    assert sequence.position_ids[0, -1] == sequence.position_ids[1, -1] - 2


def test_visual_positions_never_carry_labels(model):
    ids = torch.randint(3, 250, (1, 8 + N))
    ids[0, 1 : 1 + N] = IMAGE
    labels = ids.clone()  # a careless caller labels the image positions too
    views = torch.rand(1, 1, 3, 32, 32)
    output = model(ids, views, labels=labels)
    assert (output.labels[ids == IMAGE] == IGNORE_INDEX).all()
    clean = labels.masked_fill(ids == IMAGE, IGNORE_INDEX)
    torch.testing.assert_close(output.loss, model(ids, views, labels=clean).loss)


def test_loss_only_path_equals_the_full_logits_loss(model):
    ids = torch.randint(3, 250, (2, 6 + N))
    ids[:, 1 : 1 + N] = IMAGE
    labels = ids.clone()
    labels[:, : 2 + N] = IGNORE_INDEX
    views = torch.rand(2, 1, 3, 32, 32)
    full = model(ids, views, labels=labels)
    lean = model(ids, views, labels=labels, return_logits=False)
    assert lean.logits is None
    torch.testing.assert_close(lean.loss, full.loss)


def test_a_count_mismatch_names_both_counts(model):
    ids = torch.randint(3, 250, (1, 10 + N))
    ids[0, :5] = IMAGE
    with pytest.raises(ValueError, match=r"5 image-token positions .* give 19 visual tokens"):
        model(ids, torch.rand(1, 1, 3, 32, 32))


def test_text_only_batches_need_no_pixels(model):
    ids = torch.randint(3, 250, (2, 9))
    torch.testing.assert_close(model(ids).logits, model.llm(input_ids=ids).logits)


def test_visual_tokens_come_out_in_the_llm_dtype():
    model = build_model(tiny_config(dtype="bfloat16"))
    assert model.dtype == torch.bfloat16
    assert model.encode_images(torch.rand(1, 1, 3, 32, 32)).tokens.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_normalized_pixels_equal_unit_views_for_a_single_encoder():
    config = tiny_config()
    config.vision.encoders = config.vision.encoders[:1]
    model = build_model(config)
    views = torch.rand(2, 3, 32, 32)
    encoder = model.visual.encoders["tiny_clip_vit"]
    mean = torch.tensor(encoder.mean).view(3, 1, 1)
    std = torch.tensor(encoder.std).view(3, 1, 1)
    unit = model.encode_images(views.unsqueeze(1)).tokens
    normalized = model.encode_images((views - mean) / std, normalized=True).tokens
    torch.testing.assert_close(normalized, unit, rtol=0, atol=1e-5)


def test_normalized_pixels_are_refused_for_several_encoders(model):
    with pytest.raises(ValueError, match="single-encoder"):
        model.encode_images(torch.rand(1, 3, 32, 32), normalized=True)


def test_frozen_encoders_run_without_autograd(model):
    ids = torch.randint(3, 250, (1, 4 + N))
    ids[0, 1 : 1 + N] = IMAGE
    model(ids, torch.rand(1, 1, 3, 32, 32), labels=ids).loss.backward()
    assert all(p.grad is None for p in model.visual.encoders.parameters())
    assert all(p.grad is not None for p in model.visual.mixer.parameters())
    model.zero_grad()


def test_the_mixer_width_must_match_the_llm(model):
    from sphinx_mllm.pipeline.model import SphinxModel

    other = build_model(tiny_config(**{"llm.overrides": {"hidden_size": 32}}))
    with pytest.raises(ValueError, match="width 64, the LLM embeds width 32"):
        SphinxModel(model.visual, other.llm, image_token_id=IMAGE)
