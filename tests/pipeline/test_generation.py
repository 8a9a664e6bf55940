"""Generation for `SphinxModel` through transformers' `generate` (KV cache, left padding,
sampling, beams, stopping, streaming) and box drawing, on the tiny `demo` preset."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.drawing import draw_boxes, find_boxes
from sphinx_mllm.pipeline.generation import ReplyStreamer, answer, generate

NO_EOS: list[int] = []  # rows run to max_new_tokens unless a stop string ends them


def _varied_weights(model):
    """A random Llama at the usual init (std 0.02) repeats one token; larger weights make it
    produce varied tokens, so that comparing two decodings means something."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.llm.parameters():
            if parameter.ndim >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _varied_weights(build_model("demo"))


@pytest.fixture(scope="module")
def prefix_model(model):
    prefix = build_model("demo", placement="prefix")
    prefix.load_state_dict(model.state_dict())
    return prefix.eval()


def _image(width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


IMAGES = [_image(40, 30, 0), _image(64, 20, 1)]
QUESTIONS = ["What color?", "Describe the picture in detail, please."]


def _ask(questions):
    return [[{"from": "human", "value": question}] for question in questions]


def _batch(model, questions=QUESTIONS, images=IMAGES):
    inputs = model.processor(_ask(questions), [[image] for image in images], generation=True)
    return inputs.input_ids, inputs.pixel_values, inputs.attention_mask


def test_prompts_reserve_the_visual_tokens_and_end_with_the_assistant_prefix(model):
    inputs = model.processor(_ask(["What color?", "Hi"]), [[IMAGES[0]], []], generation=True)
    prompt, short = inputs.input_ids.tolist()
    assert prompt.count(model.image_token_id) == model.num_visual_tokens() == 67
    assert prompt[0] == model.bos_token_id and prompt[1] == model.image_token_id
    assert model.tokenizer.decode(prompt).endswith("### Human: What color?\n### Assistant:")
    pad = inputs.attention_mask[1].tolist().index(1)
    assert pad > 67 and short[:pad] == [model.processor.pad_token_id] * pad  # left padded
    assert inputs.labels is None and inputs.images_per_row == [1, 0]


def test_greedy_with_the_cache_matches_recomputing_the_whole_sequence(model):
    input_ids, pixels, attention_mask = _batch(model, QUESTIONS[:1], IMAGES[:1])
    output = generate(
        model, input_ids, pixels, attention_mask=attention_mask, max_new_tokens=12,
        eos_token_id=NO_EOS,
    )  # fmt: skip
    expected, sequence = [], input_ids
    with torch.no_grad():
        for _ in range(int(output.lengths[0])):
            token = model(sequence, pixels).logits[:, -1].argmax(dim=-1)
            expected.append(int(token))
            sequence = torch.cat([sequence, token[:, None]], dim=1)
    assert output.lengths[0] >= 8
    delegated = model.generate(
        input_ids, pixels, attention_mask=attention_mask, max_new_tokens=12, eos_token_id=NO_EOS
    )
    assert torch.equal(delegated.sequences, output.sequences)
    assert output.sequences[0, : output.lengths[0]].tolist() == expected
    assert len(set(expected)) > 1


def _previous_loop(model, input_ids, pixels, attention_mask, steps):
    """The generation loop this toolkit had before it used transformers' `generate`: one
    prefill through `embed_inputs`, then one greedy token per step with the LLM's KV cache."""
    from transformers import DynamicCache

    embedded = model.embed_inputs(input_ids, pixels, attention_mask)
    mask, cache = embedded.sequence.attention_mask, DynamicCache(config=model.llm.config)
    logits = model.llm(
        inputs_embeds=embedded.inputs_embeds, attention_mask=mask, use_cache=True,
        position_ids=embedded.sequence.position_ids, cache=cache,
    ).logits[:, -1]  # fmt: skip
    tokens = []
    for _ in range(steps):
        tokens.append(logits.argmax(dim=-1))
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        logits = model.llm(
            input_ids=tokens[-1][:, None], attention_mask=mask, use_cache=True,
            position_ids=mask.sum(dim=1, keepdim=True) - 1, cache=cache,
        ).logits[:, -1]  # fmt: skip
    return torch.stack(tokens, dim=1)


@pytest.mark.parametrize("placement", ["placeholder", "prefix"])
def test_greedy_output_equals_the_previous_loop(model, prefix_model, placement):
    chosen = model if placement == "placeholder" else prefix_model
    input_ids, pixels, attention_mask = _batch(chosen)
    with torch.no_grad():
        expected = _previous_loop(chosen, input_ids, pixels, attention_mask, 16)
    output = generate(chosen, input_ids, pixels, attention_mask=attention_mask,
                      max_new_tokens=16, eos_token_id=NO_EOS)  # fmt: skip
    assert torch.equal(output.sequences, expected)


def test_a_left_padded_batch_gives_the_tokens_of_each_prompt_alone(model):
    input_ids, pixels, attention_mask = _batch(model)
    assert not attention_mask.all()  # the prompts differ in length
    batch = generate(
        model, input_ids, pixels, attention_mask=attention_mask, max_new_tokens=10,
        eos_token_id=NO_EOS,
    )  # fmt: skip
    for row, (question, image) in enumerate(zip(QUESTIONS, IMAGES, strict=True)):
        alone = generate(model, *_batch(model, [question], [image])[:2], max_new_tokens=10,
                         eos_token_id=NO_EOS)  # fmt: skip
        length = int(batch.lengths[row])
        assert length == int(alone.lengths[0])
        assert batch.sequences[row, :length].tolist() == alone.sequences[0, :length].tolist()
        assert batch.texts[row] == alone.texts[0]


def test_sampling_is_reproducible_with_a_seed_and_leaves_the_global_state(model):
    input_ids, pixels, attention_mask = _batch(model)

    def sample(seed, **options):
        options = {"temperature": 1.0, "top_p": 0.95, **options}
        return generate(
            model, input_ids, pixels, attention_mask=attention_mask, max_new_tokens=12,
            do_sample=True, seed=seed, eos_token_id=NO_EOS, **options,
        ).sequences  # fmt: skip

    state = torch.random.get_rng_state()
    assert torch.equal(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))
    assert torch.equal(torch.random.get_rng_state(), state)
    greedy = generate(model, input_ids, pixels, attention_mask=attention_mask, max_new_tokens=12,
                      eos_token_id=NO_EOS).sequences  # fmt: skip
    assert torch.equal(sample(3, top_k=1), greedy)  # top-k 1 is greedy
    assert torch.equal(sample(3, top_p=1e-6), greedy)  # so is a tiny nucleus


def test_beam_search_and_repetition_penalty_change_the_search(model):
    input_ids, pixels, attention_mask = _batch(model, QUESTIONS[:1], IMAGES[:1])
    options = {"attention_mask": attention_mask, "max_new_tokens": 12, "eos_token_id": NO_EOS}
    greedy = generate(model, input_ids, pixels, **options)
    with pytest.raises(ValueError, match="Beam search needs an end-of-sequence token"):
        generate(model, input_ids, pixels, num_beams=4, **options)
    beams = generate(model, input_ids, pixels, num_beams=4, **{**options, "eos_token_id": 700})
    assert beams.sequences.shape == (1, 12) and beams.finished_by == ["length"]

    def log_likelihood(sequence):
        ids = torch.cat([input_ids, sequence], dim=1)
        with torch.no_grad():
            logits = model(ids, pixels).logits[:, input_ids.shape[1] - 1 : -1].log_softmax(-1)
        return float(logits.gather(-1, sequence.unsqueeze(-1)).sum())

    assert log_likelihood(beams.sequences) >= log_likelihood(greedy.sequences) - 1e-4
    plain = build_model("demo").eval()  # at the usual init a random Llama repeats itself
    inputs = plain.processor(_ask(QUESTIONS[:1]), [IMAGES[:1]], generation=True)
    repeating = generate(plain, **inputs, max_new_tokens=12, eos_token_id=NO_EOS)
    penalised = generate(
        plain, **inputs, max_new_tokens=12, eos_token_id=NO_EOS, repetition_penalty=50.0
    )
    tokens, penalised_tokens = repeating.sequences[0].tolist(), penalised.sequences[0].tolist()
    assert len(set(penalised_tokens)) > len(set(tokens))


def test_the_reply_streamer_writes_the_text_as_it_comes_without_the_stop_string(model):
    input_ids, pixels, attention_mask = _batch(model, QUESTIONS[:1], IMAGES[:1])
    options = {"attention_mask": attention_mask, "max_new_tokens": 16, "eos_token_id": NO_EOS}
    text = generate(model, input_ids, pixels, **options).texts[0]
    stop = text[6:8]
    pieces = []
    streamer = ReplyStreamer(model.processor, pieces.append, stop_strings=[stop])
    output = generate(model, input_ids, pixels, stop_strings=[stop], streamer=streamer, **options)
    assert len(pieces) > 1  # written as it came, not at the end
    assert "".join(pieces) == output.texts[0] == text[: text.index(stop)]


@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_sampling_refuses_a_non_positive_temperature(model, temperature):
    input_ids, pixels, _ = _batch(model, QUESTIONS[:1], IMAGES[:1])
    with pytest.raises(ValueError, match=r"temperature must be > 0 when sampling"):
        generate(model, input_ids, pixels, do_sample=True, temperature=temperature)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 0"):
        generate(model, input_ids, pixels, do_sample=True, top_p=0)
    greedy = generate(model, input_ids, pixels, temperature=temperature, max_new_tokens=1)
    assert greedy.sequences.shape == (1, 1)  # the temperature only matters when sampling


def test_right_padding_is_refused(model):
    with pytest.raises(ValueError, match="pad the batch on the left"):
        generate(model, torch.tensor([[1, 5, 0]]), attention_mask=torch.tensor([[1, 1, 0]]))


def test_a_stop_string_ends_the_row_and_is_cut_from_its_text(model):
    input_ids, pixels, attention_mask = _batch(model, QUESTIONS[:1], IMAGES[:1])
    options = {"attention_mask": attention_mask, "max_new_tokens": 16, "eos_token_id": NO_EOS}
    full = generate(model, input_ids, pixels, **options)
    text = full.texts[0]
    start = next(i for i in range(3, len(text) - 1) if text[i : i + 2].isascii()
                 and text[i : i + 2].isalpha())  # fmt: skip
    stop = text[start : start + 2]
    stopped = generate(model, input_ids, pixels, stop_strings=[stop], **options)
    assert stopped.finished_by == ["stop"]
    assert stopped.texts[0] == text[: text.index(stop)]
    length = int(stopped.lengths[0])
    assert length < 16
    assert stopped.sequences[0].tolist() == full.sequences[0, :length].tolist()
    template = model.processor.template
    model.processor.template = dataclasses.replace(template, stop_strings=(stop,))
    try:
        by_template = generate(model, input_ids, pixels, **options)
    finally:
        model.processor.template = template
    assert by_template.texts == stopped.texts and by_template.finished_by == ["stop"]


def test_eos_ends_one_row_while_the_other_continues(model):
    input_ids, pixels, attention_mask = _batch(model)
    options = {"attention_mask": attention_mask, "max_new_tokens": 12}
    free = generate(model, input_ids, pixels, eos_token_id=NO_EOS, **options)
    assert free.finished_by == ["length", "length"]
    first, second = free.sequences.tolist()
    at = next(i for i in range(1, 10) if first[i] not in first[:i] and first[i] not in second)
    ended = generate(model, input_ids, pixels, eos_token_id=first[at], **options)
    assert ended.finished_by == ["eos", "length"]
    assert ended.lengths.tolist() == [at + 1, 12]
    pad = model.processor.pad_token_id
    assert ended.sequences[0].tolist() == first[: at + 1] + [pad] * (11 - at)
    assert ended.sequences[1].tolist() == second


def test_prefix_placement_generates_like_images_placed_after_bos(model, prefix_model):
    """Prefix placement deletes `<image>` from the messages and puts the images after BOS: the
    prompt equals the SPHINX template's own image slot (the placeholder model here)."""
    processor = prefix_model.processor
    with_text = processor(_ask(["<image>\nWhat color?"]), [IMAGES[:1]], generation=True)
    plain = processor(_ask(["What color?"]), [IMAGES[:1]], generation=True)
    assert torch.equal(with_text.input_ids, plain.input_ids)
    prefix_ids, pixels, prefix_mask = _batch(prefix_model)
    prefix = generate(prefix_model, prefix_ids, pixels, attention_mask=prefix_mask,
                      max_new_tokens=8, eos_token_id=NO_EOS)  # fmt: skip
    ids, _, mask = _batch(model)
    assert torch.equal(ids, prefix_ids)
    placeholder = generate(model, ids, pixels, attention_mask=mask, max_new_tokens=8,
                           eos_token_id=NO_EOS)  # fmt: skip
    assert torch.equal(prefix.sequences, placeholder.sequences)
    two = processor(_ask(["Compare them."]), [IMAGES], generation=True).input_ids[0].tolist()
    assert two[1 : 1 + 2 * 67] == [model.image_token_id] * (2 * 67)


def test_generation_runs_in_eval_mode_and_restores_each_training_flag(model):
    model.train()
    model.visual.eval()
    seen = []
    hook = model.llm.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    try:
        input_ids, pixels, attention_mask = _batch(model, QUESTIONS[:1], IMAGES[:1])
        generate(model, input_ids, pixels, attention_mask=attention_mask, max_new_tokens=2)
        assert seen and not any(seen)
        assert model.training and model.llm.training and not model.visual.training
        assert not any(module.training for module in model.visual.modules())
    finally:
        hook.remove()
        model.eval()


def test_answer_batches_and_strips_the_replies(model):
    one_by_one = answer(model, IMAGES, QUESTIONS, batch_size=1, max_new_tokens=6)
    together = answer(model, IMAGES, QUESTIONS, batch_size=2, max_new_tokens=6)
    assert one_by_one == together
    assert all(reply == reply.strip() for reply in together)
    with pytest.raises(ValueError, match="2 images for 1 questions"):
        answer(model, IMAGES, QUESTIONS[:1])


def test_a_conversation_prompt_carries_the_earlier_turns(model):
    turns = [
        {"from": "human", "value": "What color?"},
        {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "Sure?"},
    ]
    sample = model.processor.render(turns, num_images=0, generation=True)
    text = model.tokenizer.decode(sample.input_ids)
    assert text.endswith(
        "Human: What color?\n### Assistant: Red.\n### Human: Sure?\n### Assistant:"
    )


def test_draw_boxes_maps_the_padded_square_frame_back_to_the_image():
    image = Image.new("RGB", (200, 160), (128, 128, 128))
    text = "<p>the thing</p> [0.10,0.20,0.50,0.60]"
    # Padded to a 200 px square with 20 px above: x 20..100, y 0.2 * 200 - 20 = 20..100.
    (found,) = find_boxes(text, image.size)
    assert found.phrase == "the thing"
    assert found.box == pytest.approx((20, 20, 100, 100))
    drawn = draw_boxes(image, text)
    assert drawn is not image and image.getpixel((20, 60)) == (128, 128, 128)
    for edge in [(20, 60), (100, 60), (60, 100)]:
        assert drawn.getpixel(edge) != (128, 128, 128), edge
    for untouched in [(60, 60), (150, 140), (10, 60), (110, 60)]:
        assert drawn.getpixel(untouched) == (128, 128, 128), untouched
    assert find_boxes("no boxes here", image.size) == []


def test_evaluation_limits_replies_by_the_models_task_limits(model, tmp_path, monkeypatch):
    import json

    from sphinx_mllm.pipeline import evaluation
    from sphinx_mllm.pipeline.training.data import DataSource

    IMAGES[0].save(tmp_path / "a.png")
    tasks = ["vqa", "caption", "rec", "vqa", "caption"]
    records = [
        {
            "id": f"r{index}",
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is it?"},
                {"from": "gpt", "value": "yes " * (index + 1)},
            ],
            "meta": {"task": task, "bbox_xyxy": [0, 0, 10, 10], "image_size": [40, 30]},
        }
        for index, task in enumerate(tasks)
    ]
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    limited = build_model("demo", **{"generation.task_max_new_tokens": {"vqa": 3, "rec": 7}})
    limited.load_state_dict(model.state_dict())
    calls = []

    def recording(model, input_ids, *args, max_new_tokens, **options):
        calls.append((len(input_ids), max_new_tokens))
        return generate(model, input_ids, *args, max_new_tokens=max_new_tokens, **options)

    monkeypatch.setattr(evaluation, "generate", recording)
    # the last record's reference is the longest, of the captions and of all
    longest = len(model.processor.tokenizer(records[4]["conversations"][1]["value"])["input_ids"])

    report = evaluation.evaluate(limited, [DataSource.parse(str(data))], extra_tokens=2)
    assert sorted(calls) == sorted([(2, 3), (2, longest + 2), (1, 7)])  # (records, new tokens)
    assert [p.record_id for p in report.predictions] == [f"r{i}" for i in range(5)]
    assert [p.task for p in report.predictions] == tasks
    rows = report.by_task()  # "caption" is no task `auto` knows: exact match
    assert {task: row["metric"] for task, row in rows.items()} == {
        "caption": "exact", "rec": "rec", "vqa": "vqa"
    }  # fmt: skip
    assert rows["vqa"]["count"] == 2 and "miou" in rows["rec"]
    assert all(0.0 <= p.score <= 1.0 for p in report.predictions)

    calls.clear()  # a model without task limits: one batch under the reference-length rule
    evaluation.evaluate(model, [DataSource.parse(str(data))], extra_tokens=2)
    assert calls == [(5, longest + 2)]


def test_evaluation_gives_a_multi_image_record_all_its_images(model, tmp_path):
    import json

    from sphinx_mllm.pipeline import evaluation
    from sphinx_mllm.pipeline.training.data import DataSource

    for name, image in zip(("a.png", "b.png"), IMAGES[:2], strict=True):
        image.save(tmp_path / name)
    question = [{"from": "human", "value": "<image>\nand <image>\nThe same?"}]
    records = [
        {
            "id": "pair",
            "image": ["a.png", "b.png"],
            "conversations": [*question, {"from": "gpt", "value": "no"}],
            "meta": {"task": "vqa", "answers": ["no"]},
        }
    ]
    data = tmp_path / "val.jsonl"
    data.write_text(json.dumps(records[0]) + "\n")
    report = evaluation.evaluate(model, [DataSource.parse(str(data))], extra_tokens=2)
    [prediction] = report.predictions
    assert prediction.images == [tmp_path / "a.png", tmp_path / "b.png"]
    assert report.to_dict()["predictions"][0]["images"] == [str(p) for p in prediction.images]
    inputs = model.processor([question], [[IMAGES[0], IMAGES[1]]], generation=True)
    max_new = len(model.processor.tokenizer("no")["input_ids"]) + 2
    expected = generate(model, **inputs, max_new_tokens=max_new).texts[0].strip()
    assert prediction.prediction == expected
