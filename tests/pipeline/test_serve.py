"""`sphinx-pipeline serve`: the real server (uvicorn on a free port, in a thread) on the `demo`
preset's random weights, asked with the official `openai` client and with raw HTTP."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import torch
import uvicorn
from PIL import Image

from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.generation import answer, generate
from sphinx_mllm.pipeline.serving import create_app
from tests.command_line import sphinx_pipeline

MAX_IMAGE_BYTES = 64 * 1024
MAX_IMAGE_PIXELS = 256 * 256


def png(size=(48, 32), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def ask(question: str, url: str | None = None) -> list[dict]:
    parts = [{"type": "text", "text": question}]
    return [{"role": "user", "content": parts if url is None else [image_part(url), *parts]}]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("demo")


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    (root / "red.png").write_bytes(png())
    (root / "big.png").write_bytes(png((300, 300)))
    (root.parent / "outside.png").write_bytes(png())
    return root


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """`app` served by uvicorn on a free local port, in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        running.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def server(model, image_root):
    app = create_app(
        model,
        model_name="demo",
        image_root=image_root,
        max_image_bytes=MAX_IMAGE_BYTES,
        max_image_pixels=MAX_IMAGE_PIXELS,
        max_new_tokens=8,
    )
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="x", max_retries=0, timeout=60)


def expected_reply(model, conversation, images, max_new_tokens=8) -> str:
    inputs = model.processor([conversation], [images], generation=True)
    output = generate(model, **inputs, max_new_tokens=max_new_tokens)
    return output.texts[0].strip()


def test_a_plain_completion_with_a_data_url_image(model, client):
    completion = client.chat.completions.create(
        model="anything", messages=ask("What color?", data_url(png())), max_tokens=6
    )
    assert completion.model == "anything"
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    image = Image.open(io.BytesIO(png())).convert("RGB")
    conversation = [{"role": "user", "content": "<image>\nWhat color?"}]
    assert choice.message.content
    assert choice.message.content == expected_reply(model, conversation, [image], 6)
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > model.processor.num_visual_tokens((48, 32))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 1 <= usage.completion_tokens <= 6


def test_a_text_question_answers_as_answer_does(model, client):
    completion = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "Hello?"}], temperature=0
    )
    assert (
        completion.choices[0].message.content
        == answer(model, None, ["Hello?"], max_new_tokens=8)[0]
    )
    assert completion.choices[0].finish_reason == "length" or completion.usage.completion_tokens < 8


def test_streaming_deltas_make_the_plain_reply(client):
    messages = [
        {"role": "system", "content": "Be brief."},
        *ask("Describe it.", data_url(png())),
        {"role": "assistant", "content": "A red image."},
        {"role": "user", "content": "Where?"},
    ]
    plain = client.chat.completions.create(model="demo", messages=messages, max_tokens=12)
    chunks = list(
        client.chat.completions.create(
            model="demo",
            messages=messages,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert text == plain.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == plain.choices[0].finish_reason
    assert not any(reasons[:-1])
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_the_stream_ends_with_done(server):
    body = {"messages": ask("Hi"), "stream": True, "max_tokens": 3}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [line for line in reply.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in events)
    assert '"role":"assistant"' in events[0]
    assert "null," not in "".join(events[1:-2]).replace('"finish_reason":null', "")


def test_an_image_file_under_the_image_root(model, client):
    plain = client.chat.completions.create(model="demo", messages=ask("What?", "red.png"))
    by_url = client.chat.completions.create(model="demo", messages=ask("What?", "file://red.png"))
    inline = client.chat.completions.create(model="demo", messages=ask("What?", data_url(png())))
    assert plain.choices[0].message.content == inline.choices[0].message.content
    assert by_url.choices[0].message.content == inline.choices[0].message.content


def test_models_lists_the_model(client):
    assert [m.id for m in client.models.list().data] == ["demo"]


def test_the_page(server):
    reply = httpx.get(f"{server}/")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/html")
    assert "/v1/chat/completions" in reply.text


def test_boxes_of_an_answer(server):
    text = "<p>the cat</p> [0.10,0.20,0.50,0.60]"
    reply = httpx.post(f"{server}/boxes", json={"text": text, "width": 100, "height": 100})
    assert reply.status_code == 200
    (found,) = reply.json()["boxes"]
    assert found["phrase"] == "the cat"
    assert len(found["box"]) == 4


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("../outside.png", 403, "leaves the image root"),
        ("file://../outside.png", 403, "leaves the image root"),
        ("/etc/passwd", 403, "is an absolute path"),
        ("file:///etc/passwd", 403, "is an absolute path"),
        ("missing.png", 400, "is not a file under the image root"),
        ("http://example.com/cat.png", 400, "fetches no images over http"),
        ("https://example.com/cat.png", 400, "fetches no images over https"),
        ("ftp://example.com/cat.png", 400, "unsupported image URL scheme"),
        ("big.png", 413, "the limit is 65536"),
        (data_url(b"\x89PNG not really"), 400, "cannot read the image"),
        ("data:image/png;base64,***", 400, "not valid base64"),
        ("data:text/plain;base64,aGk=", 400, "not an image"),
        ("data:image/png,rawbytes", 400, "must be base64"),
        (data_url(png((300, 300), (1, 2, 3))), 413, "the limit is 65536 pixels"),
        (data_url(bytes(MAX_IMAGE_BYTES + 1)), 413, "the limit is 65536"),
    ],
)
def test_refused_images(client, url, status, message):
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="demo", messages=ask("What?", url))
    assert caught.value.status_code == status
    error = caught.value.body
    assert message in error["message"], error
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages[0].content[0]"


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"model": "demo", "messages": []}, "messages is empty"),
        ({"model": "demo"}, "messages: Field required"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "role 'tool' is not supported"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "where the user was expected"),
        ({"messages": [{"content": "x"}]}, "messages.0.role: Field required"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages.0.content"),
        ({"messages": "hi"}, "messages: Input should be a valid list"),
        ({"messages": [*ask("a"), {"role": "assistant", "content": "b"}]}, "must be from the user"),
        ({"messages": [*ask("a"), {"role": "system", "content": "b"}]}, "must come first"),
        ({"messages": ask("a <image>")}, "send images as image_url parts"),
        ({"messages": ask("a"), "max_tokens": 0}, "max_tokens: Input should be greater"),
        ({"messages": ask("a"), "max_tokens": 100000}, "at most"),
        ({"messages": ask("a"), "temperature": "hot"}, "temperature: Input should be a valid"),
        ({"messages": ask("a"), "n": 2}, "n must be 1"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "has type 'audio'"),
    ],
)
def test_bad_requests(server, request_body, message):
    reply = httpx.post(f"{server}/v1/chat/completions", json=request_body, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert message in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_bad_json_and_unknown_endpoints(server):
    reply = httpx.post(
        f"{server}/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert reply.status_code == 400
    assert "not valid JSON" in reply.json()["error"]["message"]
    reply = httpx.post(f"{server}/v1/chat/completions", json=[1, 2])
    assert reply.status_code == 400
    assert "must be a JSON object" in reply.json()["error"]["message"]
    reply = httpx.get(f"{server}/v1/nothing")
    assert reply.status_code == 404
    assert "no such endpoint" in reply.json()["error"]["message"]
    reply = httpx.get(f"{server}/v1/chat/completions")
    assert reply.status_code == 405


def test_requests_queue_one_generation_at_a_time(server, monkeypatch):
    from sphinx_mllm.pipeline.serving import app as serving

    body = {"messages": ask("Hi"), "max_tokens": 8}
    results, running, most = [], [0], [0]
    run_generation = serving.run_generation

    def counted(*args, **kwargs):
        running[0] += 1
        most[0] = max(most[0], running[0])
        time.sleep(0.2)  # long enough for the other requests to arrive meanwhile
        try:
            return run_generation(*args, **kwargs)
        finally:
            running[0] -= 1

    monkeypatch.setattr(serving, "run_generation", counted)

    def post():
        results.append(httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60))

    threads = [threading.Thread(target=post) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in results] == [200] * 3
    assert len({r.json()["choices"][0]["message"]["content"] for r in results}) == 1
    assert most == [1]


def test_files_are_refused_without_an_image_root(model):
    from fastapi.testclient import TestClient

    with TestClient(create_app(model)) as test:
        reply = test.post("/v1/chat/completions", json={"messages": ask("What?", "red.png")})
    assert reply.status_code == 403
    assert "started without --image-root" in reply.json()["error"]["message"]


def test_serve_refuses_a_missing_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = sphinx_pipeline("serve", "no-such-ckpt", "--port", "0")
    assert result.status == 2
    assert len(result.error_lines) == 1
    assert "no-such-ckpt does not exist, and 'no-such-ckpt' is no model preset" in result.stderr


def test_serve_refuses_a_missing_image_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = sphinx_pipeline("serve", "demo", "--image-root", "nowhere")
    assert result.status == 2
    assert result.stderr == "sphinx-pipeline: image root nowhere is not a directory\n"


def test_serve_has_help_with_an_example():
    from typer.testing import CliRunner

    from sphinx_mllm.pipeline.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "sphinx-pipeline serve" in result.output
    for option in ("--host", "--port", "--image-root", "--max-image-mb", "--seed", "--top-p"):
        assert option in result.output


def test_a_stream_whose_client_leaves_stops_generating(server, monkeypatch):
    from sphinx_mllm.pipeline.serving import app as serving

    ended = []
    run_generation = serving.run_generation

    def recorded(*args, **kwargs):
        try:
            output = run_generation(*args, **kwargs)
        except Exception as error:
            ended.append(type(error).__name__)
            raise
        ended.append(output.finished_by[0])
        return output

    monkeypatch.setattr(serving, "run_generation", recorded)
    body = {"messages": ask("Hi"), "stream": True, "max_tokens": 800}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as reply:
        for line in reply.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # the first piece of the reply: leave
    deadline = time.monotonic() + 30
    while not ended and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ended == ["_Cancelled"]


# -- decoding: the server's options, else the model's defaults -------------------------------------


@pytest.fixture(scope="module")
def sampling_model(model):
    """The demo model with a config that samples at temperature 0.1, top-p 0.6, 5 new tokens."""
    sampling = build_model(
        "demo",
        **{"generation.temperature": 0.1, "generation.top_p": 0.6, "generation.max_new_tokens": 5},
    )
    sampling.load_state_dict(model.state_dict())
    return sampling


def served_options(monkeypatch, app, request_bodies) -> list[dict]:
    """The `generate` options the server used for each request (which still generates)."""
    from fastapi.testclient import TestClient

    from sphinx_mllm.pipeline.serving import app as serving

    options = []
    run_generation = serving.run_generation

    def recorded(model, prepared, streamer=None):
        options.append(dict(prepared.options))
        return run_generation(model, prepared, streamer)

    monkeypatch.setattr(serving, "run_generation", recorded)
    with TestClient(app) as test:
        for body in request_bodies:
            reply = test.post("/v1/chat/completions", json={"messages": ask("Hi"), **body})
            assert reply.status_code == 200, reply.text
    return options


def test_requests_without_options_get_the_models_decoding(sampling_model, monkeypatch):
    bodies = [{}, {"temperature": 0}, {"top_p": 0.9, "max_tokens": 3}, {"temperature": 0.5}]
    options = served_options(monkeypatch, create_app(sampling_model), bodies)
    assert [{k: o.get(k) for k in ("max_new_tokens", "do_sample", "temperature", "top_p")}
            for o in options] == [
        {"max_new_tokens": 5, "do_sample": True, "temperature": 0.1, "top_p": 0.6},
        {"max_new_tokens": 5, "do_sample": False, "temperature": None, "top_p": None},
        {"max_new_tokens": 3, "do_sample": True, "temperature": 0.1, "top_p": 0.9},
        {"max_new_tokens": 5, "do_sample": True, "temperature": 0.5, "top_p": 0.6},
    ]  # fmt: skip


def test_the_servers_options_override_the_models(sampling_model, monkeypatch):
    app = create_app(sampling_model, temperature=0.0, max_new_tokens=4)
    (options,) = served_options(monkeypatch, app, [{}])
    assert (options["do_sample"], options["max_new_tokens"]) == (False, 4)
    app = create_app(sampling_model, top_p=0.3)
    (options,) = served_options(monkeypatch, app, [{}])
    assert (options["temperature"], options["top_p"]) == (0.1, 0.3)


def test_a_sampled_reply_with_a_seed_is_reproducible(sampling_model):
    from fastapi.testclient import TestClient

    body = {"messages": ask("What color?", data_url(png())), "seed": 7}
    with TestClient(create_app(sampling_model)) as test:
        replies = [test.post("/v1/chat/completions", json=body).json() for _ in range(2)]
    assert replies[0]["choices"] == replies[1]["choices"]
    assert replies[0]["usage"]["completion_tokens"] <= 5


def test_bad_decoding_options_of_the_server_name_the_field(model):
    from sphinx_mllm.pipeline.config import ConfigError

    with pytest.raises(ConfigError, match=r"^top_p must be at most 1, got 1.5$"):
        create_app(model, top_p=1.5)
    with pytest.raises(ConfigError, match=r"^temperature must be >= 0, got -1$"):
        create_app(model, temperature=-1)


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--top-p", "0"], "must be in (0, 1], got 0.0"), (["--temperature", "-1"], "--temperature")],
)
def test_serve_refuses_bad_decoding_flags(tmp_path, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    result = sphinx_pipeline("serve", "demo", *flags)
    assert result.status == 2
    assert len(result.error_lines) == 1
    assert message in result.stderr
