"""Reading safetensors headers and shard indexes without PyTorch: every malformed header is a
`CheckpointError` naming the file (and the tensor), and an index may name only shards inside its
own directory that hold exactly the tensors it lists."""

import json
import struct

import pytest

from sphinx_mllm.core.weight_files import (
    CheckpointError,
    find_weight_files,
    index_shards,
    read_safetensors_header,
)


def safetensors_bytes(header: object, body: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + body


def tensor(offsets=(0, 8), dtype="F32", shape=(2,)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def test_a_well_formed_header_is_read(tmp_path):
    path = tmp_path / "model.safetensors"
    header = {"__metadata__": {"format": "pt"}, "b": tensor((8, 12), shape=(1,)), "a": tensor()}
    path.write_bytes(safetensors_bytes(header, bytes(12)))
    parsed = read_safetensors_header(path)
    assert list(parsed.tensors) == ["a", "b"] and parsed.metadata == {"format": "pt"}
    assert parsed.tensors["b"].shape == (1,) and parsed.tensors["b"].nbytes == 4


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ([1, 2], "a JSON object is expected, got list"),
        ("text", "a JSON object is expected, got str"),
        ({"x": 5}, "tensor 'x' is described by 5, not an object"),
        ({"x": {"dtype": "F32", "shape": [2]}}, r"tensor 'x' lacks \['data_offsets'\]"),
        ({"x": {"shape": [2], "data_offsets": [0, 8]}}, r"tensor 'x' lacks \['dtype'\]"),
        ({"x": tensor(dtype=5)}, "tensor 'x' has dtype 5; expected one of"),
        ({"x": tensor(dtype="F99")}, "tensor 'x' has dtype 'F99'; expected one of"),
        ({"x": {**tensor(), "shape": "2"}}, "tensor 'x' has shape '2'; expected a list"),
        ({"x": tensor(shape=(2.0,))}, r"tensor 'x' has shape \[2.0\]; expected a list"),
        ({"x": tensor(shape=(-2,))}, r"tensor 'x' has shape \[-2\]"),
        ({"x": tensor(shape=(True,))}, r"tensor 'x' has shape \[true\]|shape \[True\]"),
        ({"x": {**tensor(), "data_offsets": "ab"}}, "tensor 'x' has data_offsets 'ab'"),
        ({"x": tensor(offsets=(0,))}, r"tensor 'x' has data_offsets \[0\]"),
        ({"x": tensor(offsets=(8, 0))}, r"tensor 'x' has data_offsets \[8, 0\]"),
        ({"x": tensor(offsets=(0, "8"))}, r"tensor 'x' has data_offsets \[0, '8'\]"),
        ({"x": tensor(offsets=(0, 4))}, "tensor 'x' has inconsistent offsets"),
        ({"x": tensor(), "y": tensor()}, "has inconsistent offsets"),
        ({"__metadata__": [1], "x": tensor()}, "__metadata__ must map strings to strings"),
        ({"__metadata__": {"a": 1}, "x": tensor()}, "__metadata__ must map strings to strings"),
    ],
)
def test_every_malformed_header_is_a_checkpoint_error_naming_the_file(tmp_path, header, expected):
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes(header, bytes(8)))
    with pytest.raises(CheckpointError, match=expected) as raised:
        read_safetensors_header(path)
    assert str(raised.value).startswith(str(path))


def shard(directory, name, tensors):
    """A shard holding `tensors` (name -> element count of F32)."""
    header, offset = {}, 0
    for tensor_name, count in tensors.items():
        header[tensor_name] = tensor((offset, offset + 4 * count), shape=(count,))
        offset += 4 * count
    (directory / name).write_bytes(safetensors_bytes(header, bytes(offset)))


@pytest.fixture
def checkpoint(tmp_path):
    directory = tmp_path / "model"
    directory.mkdir()
    shard(directory, "model-00001-of-00002.safetensors", {"a": 2, "b": 1})
    shard(directory, "model-00002-of-00002.safetensors", {"c": 3})
    return directory


def write_index(directory, weight_map):
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


FIRST, SECOND = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
GOOD = {"a": FIRST, "b": FIRST, "c": SECOND}


def test_a_consistent_index_gives_its_shards_in_order(checkpoint):
    write_index(checkpoint, GOOD)
    assert find_weight_files(checkpoint) == [checkpoint / FIRST, checkpoint / SECOND]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"c": "../other/model.safetensors"}, r"entry 'c' names the shard '\.\./other/model"),
        ({"c": "/etc/passwd"}, "entry 'c' names the shard '/etc/passwd'"),
        ({"c": "sub/model.safetensors"}, "entry 'c' names the shard 'sub/model.safetensors'"),
        ({"c": ".."}, "entry 'c' names the shard '..'"),
        ({"c": 7}, "entry 'c' names the shard 7"),
        ({"c": "model-00003-of-00003.safetensors"}, "names shards that do not exist"),
        ({"ghost": FIRST}, f"entry 'ghost' names {FIRST}, which holds no such tensor"),
        ({"a": None}, f"tensor 'a' is stored in {FIRST} but the index lists no shard"),
        ({"b": SECOND}, f"tensor 'b' is stored in {FIRST} but the index lists {SECOND}"),
    ],
)
def test_an_index_is_refused_naming_itself_and_the_entry(checkpoint, edit, expected):
    weight_map = {name: value for name, value in {**GOOD, **edit}.items() if value is not None}
    index = write_index(checkpoint, weight_map)
    with pytest.raises(CheckpointError, match=expected) as raised:
        index_shards(index)
    assert str(raised.value).startswith(str(index))


@pytest.mark.parametrize("text", ["[1]", "{}", '{"weight_map": []}', '{"weight_map": {}}', "{"])
def test_an_index_without_a_weight_map_is_refused(checkpoint, text):
    index = checkpoint / "model.safetensors.index.json"
    index.write_text(text)
    with pytest.raises(CheckpointError, match=r"index\.json"):
        find_weight_files(checkpoint)
