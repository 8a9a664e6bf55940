"""Streamed training data: ranks and workers read each record once an epoch, a resumed loader
continues with the unseen records, the batches are `TrainingData`'s, bad records are named or
skipped, and a multi-image record trains."""

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from sphinx_mllm.data.readers import AnnotationFormatError
from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.training.data import DataSource, TrainingData
from sphinx_mllm.pipeline.training.rank_loader import rank_share
from sphinx_mllm.pipeline.training.record_index import CACHE_SUFFIX, RecordLoadError
from sphinx_mllm.pipeline.training.streaming import StreamedData

MAX_LENGTH = 256


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("demo")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Synthetic image-text tasks and a text-only file of 21 records (its last global batch of
    8 holds 5: every rank of two gets records)."""
    from sphinx_mllm.data.cli import synth

    root = tmp_path_factory.mktemp("synthetic")
    synth(root, seed=3, train=12, val=4)
    text = [
        {"id": f"t{i}", "conversations": [
            {"from": "human", "value": "Continue: " + "the number " * (i % 5) + str(i)},
            {"from": "gpt", "value": f"follows {i - 1} and precedes {i + 1}."},
        ]}
        for i in range(21)
    ]  # fmt: skip
    _write_jsonl(root / "text.jsonl", text)
    return root


def _sources(root, tasks=("vqa", "rec", "detection")):
    files = [root / "tasks" / "train" / f"{task}.jsonl" for task in tasks]
    return [DataSource(file, 1.0, root) for file in files] + [DataSource(root / "text.jsonl")]


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _epoch_items(data, rank, world_size, **options):
    with data.loader(8, seed=1, rank=rank, world_size=world_size, **options) as loader:
        batches = list(loader)
    return batches, loader.report


def test_two_ranks_with_two_workers_read_each_record_once_per_epoch(model, synthetic):
    data = StreamedData.build(model.processor, _sources(synthetic), max_length=MAX_LENGTH)
    ranks = [_epoch_items(data, rank, 2, stop_epoch=1, num_workers=2) for rank in (0, 1)]
    typed = data.batches(8).sources
    every = {(source.name, item) for source in typed for item in range(len(source.lengths))}
    read = Counter(item for batches, _ in ranks for local in batches for item in local.items)
    assert read == Counter(every)  # each record once, by one rank
    order = data.batches(8, seed=1).epoch(0)
    for batches, report in ranks:
        assert [local.batch_in_epoch for local in batches] == list(range(len(order)))
        assert report.small_batches == 0 and not report.dropped
    for (_, items), first, second in zip(order, *(batches for batches, _ in ranks), strict=True):
        assert first.items + second.items == items  # contiguous shares, in order
        assert {name.split("/")[1] for name, _ in items} == {first.data_type}  # one data type
    rows = {data.record(name, item).where for name, item in read}
    assert len(rows) == sum(len(index) for index in data.indexes)  # distinct file lines


def test_a_resumed_loader_continues_with_the_next_unseen_records(model, synthetic):
    data = StreamedData.build(model.processor, _sources(synthetic), max_length=MAX_LENGTH)
    for rank in (0, 1):
        whole, _ = _epoch_items(data, rank, 2, stop_epoch=2, num_workers=2)
        with data.loader(8, seed=1, rank=rank, world_size=2, num_workers=2) as loader:
            shares = iter(loader)
            before = [next(shares) for _ in range(3)]  # then the run stops
        resumed, _ = _epoch_items(
            data, rank, 2, start=before[-1].next_position, stop_epoch=2, num_workers=2
        )
        assert [local.items for local in before + resumed] == [local.items for local in whole]
        first_epoch = [item for local in before + resumed if local.epoch == 0
                       for item in local.items]  # fmt: skip
        assert len(first_epoch) == len(set(first_epoch))


@pytest.mark.parametrize("world_size", [1, 2])
def test_streamed_batches_are_the_in_memory_ones(model, synthetic, world_size):
    """With lengths="tokens" the switch changes nothing: the same items in the same global
    batches, the same tensors, the same label-token counts."""
    sources = _sources(synthetic)
    memory = TrainingData.build(model.processor, sources, max_length=MAX_LENGTH)
    streamed = StreamedData.build(model.processor, sources, max_length=MAX_LENGTH, lengths="tokens")
    expected = memory.batches(8, seed=1)
    assert streamed.batches(8, seed=1).epoch(0) == expected.epoch(0)
    assert streamed.batches(8, seed=1).epoch(1) == expected.epoch(1)
    ranks = [_epoch_items(streamed, r, world_size, stop_epoch=1)[0] for r in range(world_size)]
    for (_, items), *shares in zip(expected.epoch(0), *ranks, strict=True):
        assert [item for local in shares for item in local.items] == items
        total = sum(memory.example(name, item).num_label_tokens for name, item in items)
        assert sum(local.label_tokens for local in shares) == total
        for local in shares:
            _assert_same_batch(local.batch, memory.collate(local.items))


def test_the_tokens_pass_drops_and_cuts_what_training_data_does(model, synthetic, tmp_path):
    def turns(*texts):
        return [{"from": ("human", "gpt")[i % 2], "value": text} for i, text in enumerate(texts)]

    records = [
        {"id": "fits", "conversations": turns("Hi?", "Hello.")},
        {"id": "no room for the answer", "conversations": turns("long " * 40, "yes")},
        {"id": "second round cut", "conversations": turns("Hi?", "Hello.", "Go on?", "x" * 90)},
    ] * 3
    sources = [
        *_sources(synthetic, ("vqa",)),
        DataSource(_write_jsonl(tmp_path / "b.jsonl", records)),
    ]
    memory = TrainingData.build(model.processor, sources, max_length=140)
    streamed = StreamedData.build(model.processor, sources, max_length=140, lengths="tokens")
    assert memory.report.dropped == {"b: answer_cut": 3} and memory.report.truncated == 3
    assert streamed.report.dropped == memory.report.dropped
    assert (streamed.report.kept, streamed.report.truncated) == (
        memory.report.kept, memory.report.truncated
    )  # fmt: skip
    assert streamed.batches(4, seed=2).epoch(0) == memory.batches(4, seed=2).epoch(0)


def test_rank_label_counts_summed_weight_the_loss_to_the_global_batch_mean(model, synthetic):
    """The trainer's contract: each rank's loss weighted by its label tokens over the all-reduced
    count adds up to the mean loss of the whole global batch."""
    data = StreamedData.build(model.processor, _sources(synthetic), max_length=MAX_LENGTH)
    whole = _epoch_items(data, 0, 1, stop_epoch=1, num_workers=0)[0][0]
    shares = [_epoch_items(data, r, 2, stop_epoch=1, num_workers=0)[0][0] for r in (0, 1)]
    total = sum(share.label_tokens for share in shares)  # what dist.sum gives each rank
    assert total == whole.label_tokens == whole.batch.num_label_tokens
    model.eval()  # BatchNorm from its running statistics: a row's output is its own
    try:
        with torch.no_grad():
            expected = _loss(model, whole.batch)
            weighted = sum(
                _loss(model, share.batch) * share.batch.num_label_tokens / total for share in shares
            )
    finally:
        model.train()
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=1e-5)


def _loss(model, batch):
    return model(batch.input_ids, batch.pixel_values, batch.attention_mask, batch.labels).loss


def test_the_characters_estimate_batches_the_same_records_into_the_same_tensors(model, synthetic):
    sources = _sources(synthetic)
    memory = TrainingData.build(model.processor, sources, max_length=MAX_LENGTH)
    memory.batches(8)
    streamed = StreamedData.build(model.processor, sources, max_length=MAX_LENGTH)
    batches, _ = _epoch_items(streamed, 0, 1, stop_epoch=1, num_workers=0)
    items = [item for local in batches for item in local.items]
    assert sorted(items) == sorted(
        item for _, b in memory.batches(8, seed=1).epoch(0) for item in b
    )
    for local in batches[:3]:
        _assert_same_batch(local.batch, memory.collate(local.items))


def _assert_same_batch(got, expected):
    for name in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
    assert got.tasks == expected.tasks and got.images_per_row == expected.images_per_row
    assert len(got.pixel_values or []) == len(expected.pixel_values or [])
    for ours, theirs in zip(got.pixel_values or [], expected.pixel_values or [], strict=True):
        assert torch.equal(ours, theirs)


def test_each_rank_gets_a_disjoint_contiguous_share_and_tiny_batches_are_passed_over(
    model, tmp_path
):
    assert [list(rank_share(range(7), rank, 3)) for rank in range(3)] == [[0, 1], [2, 3], [4, 5, 6]]
    records = [
        {"id": i, "conversations": [{"from": "human", "value": "x" * (i + 1)},
                                    {"from": "gpt", "value": "y"}]}
        for i in range(9)
    ]  # fmt: skip
    nine = DataSource(_write_jsonl(tmp_path / "t.jsonl", records))
    data = StreamedData.build(model.processor, [nine])
    batches, report = _epoch_items(data, 1, 2, stop_epoch=1, num_workers=0)
    assert [len(local.items) for local in batches] == [4]  # the batch of 1 has no share for two
    assert (report.small_batches, report.small_batch_records) == (1, 1)
    with pytest.raises(ValueError, match="not divisible by the 3 ranks"):
        data.loader(8, world_size=3)
    one = DataSource(_write_jsonl(tmp_path / "one.jsonl", records[:1]))
    alone = StreamedData.build(model.processor, [one])
    with pytest.raises(ValueError, match="No global batch of epoch 0 holds a record for each"):
        _epoch_items(alone, 0, 2, num_workers=0)  # without stop_epoch: would never end


def _images(root: Path) -> Path:
    root.mkdir(exist_ok=True)
    Image.new("RGB", (64, 48), "red").save(root / "red.png")
    Image.new("RGB", (48, 64), "blue").save(root / "blue.png")
    return root


def _record(index, image="red.png", first="human"):
    second = "gpt" if first == "human" else "human"
    return {"id": f"r{index}", "image": image, "conversations": [
        {"from": first, "value": "<image>\nWhat colour is it?"}, {"from": second, "value": "red"},
    ]}  # fmt: skip


def test_bad_records_are_named_by_file_and_line_when_indexed_or_skipped(model, tmp_path):
    _images(tmp_path)
    lines = [
        json.dumps(_record(0)),
        "{not json",
        json.dumps({"id": "no-turns"}),
        json.dumps(_record(3, image="../outside.png")),
        json.dumps(_record(4, image=["red.png", "blue.png"])),  # one <image> for two images
        json.dumps(_record(5)),
    ]
    file = tmp_path / "train.jsonl"
    file.write_text("\n".join(lines) + "\n")
    source = DataSource(file, 1.0, tmp_path)
    with pytest.raises(AnnotationFormatError, match=r"train\.jsonl line 2: invalid JSON"):
        StreamedData.build(model.processor, [source], cache=False)
    skipped = StreamedData.build(model.processor, [source], on_error="skip")
    assert skipped.report.kept == {"train": 2}
    assert sum(skipped.report.dropped.values()) == 4
    assert (tmp_path / ("train.jsonl" + CACHE_SUFFIX)).is_file()
    with pytest.raises(AnnotationFormatError, match=r"train\.jsonl line 2"):  # from the cache
        StreamedData.build(model.processor, [source])
    mismatch = r"line 3 \(record 'r4'\): the conversation holds 1 <image> placeholder\(s\) for 2"
    with pytest.raises(AnnotationFormatError, match=mismatch):
        file.write_text("\n".join([lines[0], lines[5], lines[4]]) + "\n")
        os.utime(file, ns=(1, 1))  # a new modification time: the cache is stale
        StreamedData.build(model.processor, [source])


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_bad_image_or_conversation_found_by_a_worker_is_named_or_skipped(
    model, tmp_path, on_error
):
    _images(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    records = [_record(0), _record(1, image="broken.png"), _record(2), _record(3, first="gpt")]
    source = DataSource(_write_jsonl(tmp_path / "train.jsonl", records), 1.0, tmp_path)
    data = StreamedData.build(model.processor, [source], on_error=on_error)
    if on_error == "raise":
        with pytest.raises(RecordLoadError, match=r"train\.jsonl line (2 \(record 'r1'\): "
                           r"cannot read .*broken\.png|4 \(record 'r3'\))"):  # fmt: skip
            _epoch_items(data, 0, 1, stop_epoch=1, num_workers=2)
        return
    batches, report = _epoch_items(data, 0, 1, stop_epoch=1, num_workers=2)
    assert sorted(item for local in batches for item in local.items) == [
        ("train/image-text", 0), ("train/image-text", 2)
    ]  # fmt: skip
    assert report.dropped == {
        "missing or unreadable image": 1,
        "conversation cannot be rendered": 1,
    }


def test_a_file_changed_after_indexing_is_named(model, tmp_path):
    _images(tmp_path)
    file = _write_jsonl(tmp_path / "train.jsonl", [_record(0), _record(1)])
    data = StreamedData.build(model.processor, [DataSource(file, 1.0, tmp_path)], cache=False)
    _write_jsonl(file, [_record(1), _record(0), _record(2)])
    with pytest.raises(RecordLoadError, match=r"train\.jsonl changed since it was indexed"):
        _epoch_items(data, 0, 1, stop_epoch=1, num_workers=2)


def test_a_json_array_file_streams_like_its_jsonl(model, tmp_path):
    _images(tmp_path)
    records = [_record(i) | {"id": f"ü{i}"} for i in range(5)]
    for index, record in enumerate(records):
        record["conversations"][1]["value"] = "red " * index + "ünïcode"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    array = tmp_path / "a" / "train.json"
    array.write_text(json.dumps(records, indent=2, ensure_ascii=False))
    lines = _write_jsonl(tmp_path / "b" / "train.jsonl", records)
    found = []
    for file in (array, lines):
        data = StreamedData.build(model.processor, [DataSource(file, 1.0, tmp_path)])
        batches, _ = _epoch_items(data, 0, 1, stop_epoch=1, num_workers=0)
        found.append(torch.cat([local.batch.input_ids for local in batches]))
        assert data.record("train/image-text", 4).record == records[4]
    assert torch.equal(*found)
    assert data.record("train/image-text", 4).where == f"{lines} line 5 (record 'ü4')"


def test_a_multi_image_record_trains_from_a_streamed_batch(model, tmp_path):
    _images(tmp_path)
    both = {"id": "two", "image": ["red.png", "blue.png"], "conversations": [
        {"from": "human", "value": "<image>\nThe first, then <image>\nwhich one is blue?"},
        {"from": "gpt", "value": "The second."},
    ]}  # fmt: skip
    source = DataSource(_write_jsonl(tmp_path / "t.jsonl", [_record(0), both]), 1.0, tmp_path)
    data = StreamedData.build(model.processor, [source])
    (local,) = _epoch_items(data, 0, 1, stop_epoch=1, num_workers=1)[0]
    batch = local.batch
    assert sorted(batch.images_per_row) == [1, 2] and len(batch.pixel_values) == 3
    visual = model.processor.num_visual_tokens()
    image_tokens = (batch.input_ids == model.processor.image_token_id).sum(dim=1)
    assert sorted(image_tokens.tolist()) == [visual, 2 * visual]
    model.zero_grad()
    output = model(batch.input_ids, batch.pixel_values, batch.attention_mask, batch.labels)
    output.loss.backward()
    assert torch.isfinite(output.loss)
    encoder = [p.grad for name, p in model.named_parameters() if "encoders" in name]
    assert any(grad is not None and grad.abs().sum() > 0 for grad in encoder)
