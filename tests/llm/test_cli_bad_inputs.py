"""Generated bad inputs to `sphinx-merge` (property tests): configs with wrong types,
out-of-range values, unknown methods or keys and missing models; corrupt safetensors files; bad
shard indexes. Each ends with exit status 2, exactly one line on stderr naming the input (the
config file, the model's file, the index, or the parameter), and nothing written: OUT does not
exist afterwards and no partial directory is left beside it."""

import json
import math
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sphinx_mllm.core.weight_files import DTYPE_BYTES
from sphinx_mllm.llm import list_merge_methods
from sphinx_mllm.llm.merging.config import DTYPES, MERGEKIT_KEYS, MERGEKIT_UNSUPPORTED, OUR_KEYS
from tests.llm.merge_helpers import llama_tensors, run_cli, write_model

EXAMPLES = settings(max_examples=30, deadline=None, database=None)
SHARD = "model-00001-of-00001.safetensors"

not_a_fraction = st.one_of(
    st.floats().filter(lambda value: not 0 <= value <= 1),  # NaN and infinities included
    st.text(max_size=5),
    st.booleans(),
    st.lists(st.floats().filter(lambda value: not 0 <= value <= 1), min_size=1, max_size=3),
)
not_a_finite_number = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf]), st.text(max_size=5), st.booleans()
)
not_a_mapping = st.one_of(
    st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2), st.booleans()
)
not_patterns = st.one_of(
    st.integers(), st.lists(st.integers(), min_size=1, max_size=2), st.booleans(),
    st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2),
)  # fmt: skip
missing_path = st.text("abcdefgh", min_size=1, max_size=8).map(lambda name: f"missing-{name}")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    for label, seed in (("a", 1), ("b", 2)):
        write_model(root / label, llama_tensors(seed, layers=1), layers=1, tokenizer=False)
    return root


def assert_refused(case: Path, config: dict | str, names: list[str]) -> str:
    """Run the command on `config`; assert status 2, one stderr line naming one of `names`,
    and nothing written. Returns the line."""
    path = case / "merge.yml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    code, errors = run_cli(path, case / "out", "--no-progress")
    assert code == 2, errors
    assert len(errors) == 1, errors
    assert any(name in errors[0] for name in names), (names, errors[0])
    assert not (case / "out").exists()
    assert not [p for p in case.iterdir() if p.name.startswith(".out.") and p.is_dir()]
    return errors[0]


def new_case(workspace: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=workspace))


# -- configs --------------------------------------------------------------------------------------


def mergekit_case(workspace, slot, bad):
    """A valid mergekit config with one slot spoiled; returns (config, parameter named)."""
    a, b = str(workspace / "a"), str(workspace / "b")
    method = "slerp" if slot == "t" else "ties"
    config = {
        "merge_method": method,
        "base_model": a,
        "models": [{"model": b, "parameters": {"weight": 1.0, "density": 0.5}}],
        "parameters": {"t": 0.5} if method == "slerp" else {},
    }
    if method == "slerp":
        del config["models"][0]["parameters"]
    if slot in ("density", "weight"):
        config["models"][0]["parameters"][slot] = bad
    elif slot == "t":
        config["parameters"]["t"] = bad
    elif slot == "model":
        config["models"][0]["model"] = bad
    elif slot == "unknown key":
        config[bad] = 1
    else:  # a top-level key
        config[slot] = bad
    return config, {"density": "'density'", "weight": "'weight'", "t": "'t'"}.get(slot)


MERGEKIT_SLOTS = st.one_of(
    st.tuples(st.just("density"), not_a_fraction),
    st.tuples(st.just("weight"), not_a_finite_number),
    st.tuples(st.just("t"), not_a_fraction),
    st.tuples(st.just("model"), missing_path),
    st.tuples(st.just("base_model"), missing_path),
    st.tuples(
        st.just("merge_method"),
        st.one_of(
            st.text(max_size=8).filter(lambda n: n not in list_merge_methods()), not_patterns
        ),
    ),
    st.tuples(
        st.just("dtype"),
        st.one_of(
            st.text(min_size=1, max_size=8).filter(
                lambda n: n.removeprefix("torch.") not in DTYPES
            ),
            st.integers(),
        ),
    ),
    st.tuples(st.just("parameters"), not_a_mapping),
    st.tuples(
        st.just("unknown key"),
        st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10).filter(
            lambda key: key not in MERGEKIT_KEYS and key not in MERGEKIT_UNSUPPORTED
        ),
    ),
)


@EXAMPLES
@given(spoiled=MERGEKIT_SLOTS)
def test_generated_bad_mergekit_configs(workspace, spoiled):
    case = new_case(workspace)
    config, parameter = mergekit_case(workspace, *spoiled)
    line = assert_refused(case, config, [str(case / "merge.yml")])
    assert parameter is None or parameter in line


def ours_case(slot, bad):
    config = {"models": {"a": "../a", "b": "../b"}, "merge": "0.5 * a + 0.5 * b"}
    if slot == "density":
        config["merge"] = f"ties(base=a, models=[b], weight=1, density={bad!r})"
    elif slot == "model":
        config["models"]["b"] = bad
    elif slot == "method":
        config["merge"] = f"{bad}(base=a, models=[b])"
    elif slot == "exclude everything":
        config.update(exclude="*", copy_from=None)
    elif slot == "unknown key":
        config[bad] = 1
    else:
        config[slot] = bad
    return config


OURS_SLOTS = st.one_of(
    st.tuples(st.just("density"), not_a_fraction.filter(lambda v: not isinstance(v, list))),
    st.tuples(st.just("model"), missing_path),
    st.tuples(
        st.just("method"),
        st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10).filter(
            lambda name: name not in list_merge_methods() and name not in ("a", "b")
        ),
    ),
    st.tuples(st.sampled_from(["include", "exclude"]), not_patterns),
    st.tuples(st.just("seed"), st.one_of(st.none(), st.floats(), st.text(max_size=4))),
    st.tuples(
        st.sampled_from(["compute_dtype", "out_dtype"]),
        st.text(min_size=1, max_size=8).filter(lambda n: n.removeprefix("torch.") not in DTYPES),
    ),
    st.tuples(st.sampled_from(["reference", "copy_from"]), st.sampled_from(["c", 3, "A", [1]])),
    st.tuples(
        st.just("unknown key"),
        st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10).filter(
            lambda key: key not in OUR_KEYS
        ),
    ),
    st.tuples(st.just("exclude everything"), st.none()),
)


@EXAMPLES
@given(spoiled=OURS_SLOTS)
def test_generated_bad_configs_of_ours(workspace, spoiled):
    case = new_case(workspace)
    names = ["exclude"] if spoiled[0] == "exclude everything" else [str(case / "merge.yml")]
    assert_refused(case, ours_case(*spoiled), names)


# -- corrupt safetensors files -------------------------------------------------------------------


def with_header(header: object, body: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + body


json_junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-9, 99), st.text(max_size=4)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=5,
)
TENSORS = sorted(llama_tensors(2, layers=1))


@st.composite
def corruptions(draw, size: int):
    """A function from the original file's bytes to corrupt ones (the same bytes when an edit
    happens to change nothing)."""
    kind = draw(st.sampled_from(["truncate", "junk", "field", "drop field", "not an object"]))
    if kind == "truncate":
        cut = draw(st.integers(0, size - 1))
        return lambda data: data[:cut]
    if kind == "junk":
        junk = draw(st.binary(max_size=64))
        return lambda data: junk
    if kind == "not an object":
        value = draw(json_junk.filter(lambda v: not isinstance(v, dict)))
        return lambda data: with_header(value, b"")
    name = draw(st.sampled_from(TENSORS))
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
    value = draw(json_junk.filter(lambda v: not (isinstance(v, str) and v in DTYPE_BYTES)))

    def edit_header(data: bytes) -> bytes:
        (length,) = struct.unpack("<Q", data[:8])
        header, body = json.loads(data[8 : 8 + length]), data[8 + length :]
        if kind == "drop field":
            del header[name][field]
        elif header[name][field] == value:
            return data
        else:
            header[name][field] = value
        return with_header(header, body)

    return edit_header


@EXAMPLES
@given(data=st.data())
def test_generated_corrupt_safetensors_files(workspace, data):
    case = new_case(workspace)
    shutil.copytree(workspace / "b", case / "b")
    weights = case / "b" / "model.safetensors"
    original = weights.read_bytes()
    corrupted = data.draw(corruptions(len(original)))(original)
    assume(corrupted != original)
    weights.write_bytes(corrupted)
    config = {"models": {"a": "../a", "b": "./b"}, "merge": "0.5 * a + 0.5 * b"}
    assert_refused(case, config, [str(weights), "'b'"])


# -- bad shard indexes ---------------------------------------------------------------------------


@st.composite
def index_edits(draw):
    """A function from the valid index (a dict) to a bad one (a dict, or text)."""
    kind = draw(st.sampled_from(["text", "weight_map", "entry", "extra", "drop"]))
    if kind == "text":
        text = draw(st.text(max_size=30))
        return lambda index: text
    if kind == "weight_map":
        value = draw(json_junk)
        return lambda index: {**index, "weight_map": value}
    name = draw(st.sampled_from(TENSORS))
    if kind == "drop":
        return lambda index: {
            **index, "weight_map": {k: v for k, v in index["weight_map"].items() if k != name}
        }  # fmt: skip
    if kind == "extra":
        name = draw(st.text(min_size=1, max_size=10).filter(lambda n: n not in TENSORS))
    shard = draw(
        st.one_of(
            st.sampled_from(["../a/model.safetensors", "/etc/passwd", "sub/x.safetensors", "."]),
            st.sampled_from(["..", "", "missing.safetensors"]),
            json_junk.filter(lambda v: not isinstance(v, str)),
        )
        if kind == "entry"
        else st.just(SHARD)
    )
    return lambda index: {**index, "weight_map": {**index["weight_map"], name: shard}}


@EXAMPLES
@given(edit=index_edits())
def test_generated_bad_shard_indexes(workspace, edit):
    case = new_case(workspace)
    shutil.copytree(workspace / "b", case / "b")
    (case / "b" / "model.safetensors").rename(case / "b" / SHARD)
    index = case / "b" / "model.safetensors.index.json"
    edited = edit({"metadata": {}, "weight_map": dict.fromkeys(TENSORS, SHARD)})
    index.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    config = {"models": {"a": "../a", "b": "./b"}, "merge": "0.5 * a + 0.5 * b"}
    assert_refused(case, config, [str(index)])
