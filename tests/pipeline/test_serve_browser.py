"""The chat page of `sphinx-pipeline serve` as a user drives it: headless Chromium (Debian's
`chromium` and `chromium-driver`, which `scripts/setup_browser.sh` installs, through selenium)
against the real server on the `demo` preset's random weights. A photo is uploaded, a question
typed and sent; what the page shows is checked: the streamed reply (the API's own for the same
request), the photo, the boxes of a reply drawn on it, and the server's refusals.

Skipped, with what is missing, where there is no browser or no selenium."""

from __future__ import annotations

import base64
import math
import shutil
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from sphinx_mllm.pipeline.building import build_model
from sphinx_mllm.pipeline.drawing import find_boxes
from sphinx_mllm.pipeline.serving import create_app
from tests.pipeline.test_serve import serving

MAX_IMAGE_BYTES = 300 * 1024  # skimage's cat (220 KB as PNG) fits, its coffee (449 KB) does not
MAX_NEW_TOKENS = 12
WAIT_S = 30
BOX_RED = (230, 25, 75)  # the page's colour of the first box

# what the page has thrown since it was loaded (an uncaught error or a rejected promise)
CATCH_ERRORS = """
window.pageErrors = [];
addEventListener("error", (event) => pageErrors.push(String(event.message)));
addEventListener("unhandledrejection", (event) => pageErrors.push(String(event.reason)));
"""


def _browser_paths() -> tuple[str, str]:
    """Chromium and its driver, or the test is skipped saying which is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None]
    if missing:
        pytest.skip(
            f"no {' and no '.join(missing)} on PATH: run scripts/setup_browser.sh (apt-get "
            "install chromium chromium-driver) to run the browser tests"
        )
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    chromium, chromedriver = _browser_paths()
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (the root test group has it)"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1200,900"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("demo")


@pytest.fixture(scope="module")
def server(model):
    app = create_app(
        model, model_name="demo", max_image_bytes=MAX_IMAGE_BYTES, max_new_tokens=MAX_NEW_TOKENS
    )
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos saved as PNG files: `cat` (451x300) and `coffee` (over the byte limit)."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name, pixels in (("cat", data.chelsea()), ("coffee", data.coffee())):
        paths[name] = folder / f"{name}.png"
        Image.fromarray(pixels).save(paths[name])
    assert paths["coffee"].stat().st_size > MAX_IMAGE_BYTES
    return paths


@pytest.fixture
def page(browser, server):
    browser.get(f"{server}/")
    browser.execute_script(CATCH_ERRORS)
    yield browser
    assert browser.execute_script("return pageErrors") == []


# -- what a user does ------------------------------------------------------------------------------


def wait_for(browser, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_S, poll_frequency=0.05).until(
        lambda _driver: condition(), message=f"the page never showed {what}"
    )


def upload(page, path) -> None:
    """Choose `path` in the page's file input, and wait until the page has read it (and shown
    it, when the browser can decode it)."""
    from selenium.webdriver.common.by import By

    page.find_element(By.ID, "image").send_keys(str(path))
    wait_for(
        page,
        lambda: page.execute_script(
            "return canvas.width > 1 || document.getElementById('image-note').textContent"
        ),
        f"{path.name} or a note about it",
    )


def ask(page, question: str) -> dict:
    """Type `question`, send it, wait for the reply; the last line of the log (`kind`: its
    class, `text`) and every text that line showed while the reply streamed in."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    lines = page.execute_script("return log.children.length")
    page.execute_script(
        "window.shown = [];"
        "new MutationObserver(() => shown.push(log.lastElementChild.textContent))"
        ".observe(log, {childList: true, subtree: true, characterData: true});"
    )
    page.find_element(By.ID, "question").send_keys(question, Keys.ENTER)
    wait_for(
        page,
        lambda: page.execute_script(
            "return log.children.length === arguments[0] + 2"
            " && document.body.dataset.busy === 'no'",
            lines,
        ),
        f"a reply to {question!r}",
    )
    return page.execute_script(
        "const line = log.lastElementChild;"
        "return {kind: line.className, text: line.textContent, shown: shown,"
        " asked: log.children[log.children.length - 2].textContent};"
    )


def canvas_pixel(page, x: int, y: int) -> tuple[int, int, int]:
    rgba = page.execute_script(
        "return Array.from(canvas.getContext('2d').getImageData(arguments[0], arguments[1], 1, 1)"
        ".data)",
        x,
        y,
    )
    return tuple(rgba[:3])


def canvas_size(page) -> tuple[int, int]:
    return tuple(page.execute_script("return [canvas.width, canvas.height]"))


def data_url(path) -> str:
    """The data URL the page's FileReader makes of a file (the type Chromium gives `path`)."""
    media = {".png": "image/png", ".txt": "text/plain"}[path.suffix]
    return f"data:{media};base64," + base64.b64encode(path.read_bytes()).decode()


def api_reply(server: str, path, question: str) -> httpx.Response:
    """The server's answer to what the page sends: the image and the question, no options."""
    content = [
        {"type": "image_url", "image_url": {"url": data_url(path)}},
        {"type": "text", "text": question},
    ]
    body = {"model": "sphinx", "messages": [{"role": "user", "content": content}]}
    return httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)


# -- the tests -------------------------------------------------------------------------------------


def test_a_question_about_a_photo_streams_the_servers_reply(page, server, photos, monkeypatch):
    from sphinx_mllm.pipeline.generation import ReplyStreamer

    put = ReplyStreamer.put

    def slowly(streamer, value):  # tokens apart in time, as a real model's, so the page
        put(streamer, value)  # shows the reply growing however fast this machine is
        time.sleep(0.02)

    monkeypatch.setattr(ReplyStreamer, "put", slowly)
    upload(page, photos["cat"])
    photo = np.asarray(Image.open(photos["cat"]))
    assert canvas_size(page) == (451, 300)
    for x, y in ((0, 0), (225, 150), (450, 299), (100, 40)):
        assert canvas_pixel(page, x, y) == tuple(photo[y, x])

    question = "What is in the image?"
    seen = ask(page, question)

    assert seen["asked"] == question
    assert seen["kind"] == "assistant"
    expected = api_reply(server, photos["cat"], question)
    assert expected.status_code == 200, expected.text
    reply = expected.json()["choices"][0]["message"]["content"]
    assert reply  # the random demo weights say something
    assert seen["text"] == reply  # greedy: the same reply as the API gives
    partial = [text for text in dict.fromkeys(seen["shown"]) if text and text != reply]
    assert partial and all(reply.startswith(text) for text in partial)  # it streamed in


def test_a_box_in_the_reply_is_drawn_on_the_photo(page, photos, monkeypatch):
    from sphinx_mllm.pipeline.serving import app as serving_app

    text = "<p>the cat</p> [0.10,0.20,0.50,0.60]"

    def replying(_model, prepared, streamer=None):
        return SimpleNamespace(texts=[text], finished_by=["eos"], lengths=torch.tensor([9]))

    monkeypatch.setattr(serving_app, "run_generation", replying)
    upload(page, photos["cat"])
    seen = ask(page, "Where is the cat?")
    assert (seen["kind"], seen["text"]) == ("assistant", text)

    photo = np.asarray(Image.open(photos["cat"]))
    ((phrase, (x1, y1, x2, y2)),) = [(b.phrase, b.box) for b in find_boxes(text, (451, 300))]
    assert phrase == "the cat"
    middle = round((y1 + y2) / 2)
    for x, y in ((math.floor(x1), middle), (math.floor(x2), middle)):  # the box's sides
        assert tuple(photo[y, x]) != BOX_RED
        assert canvas_pixel(page, x, y) == BOX_RED
    inside = (round((x1 + x2) / 2), middle)
    assert canvas_pixel(page, *inside) == tuple(photo[inside[1], inside[0]])  # an outline only


def test_one_question_at_a_time_and_the_conversation_goes_on(page, model, photos, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from sphinx_mllm.pipeline.serving import app as serving_app

    release, prompts = threading.Event(), []

    def replying(_model, prepared, streamer=None):
        prompts.append(model.tokenizer.decode(prepared.inputs.input_ids[0]))
        assert release.wait(WAIT_S)
        reply = f"reply {len(prompts)}"
        return SimpleNamespace(texts=[reply], finished_by=["eos"], lengths=torch.tensor([2]))

    monkeypatch.setattr(serving_app, "run_generation", replying)
    upload(page, photos["cat"])
    field = page.find_element(By.ID, "question")
    field.send_keys("First?", Keys.ENTER)
    wait_for(page, lambda: prompts, "the first question sent")
    assert not page.find_element(By.ID, "send").is_enabled()
    field.send_keys("Too soon?", Keys.ENTER)  # while the first reply is awaited: not sent
    release.set()
    wait_for(page, lambda: page.execute_script("return document.body.dataset.busy === 'no'"),
             "the first reply")  # fmt: skip
    assert page.execute_script("return log.textContent") == "First?reply 1"
    field.clear()
    assert ask(page, "And then?")["text"] == "reply 2"
    assert len(prompts) == 2
    assert "First?" in prompts[1] and "reply 1" in prompts[1] and "Too soon?" not in prompts[1]


@pytest.mark.parametrize(
    ("name", "shown"),
    [("coffee", "the limit is 307200"), ("notes", "holds 'text/plain', not an image")],
)
def test_a_refused_upload_shows_the_servers_message(page, server, photos, tmp_path, name, shown):
    path = photos.get(name)
    if path is None:
        path = tmp_path / f"{name}.txt"
        path.write_text("not a picture\n")
    upload(page, path)
    seen = ask(page, "What is it?")

    refused = api_reply(server, path, "What is it?")
    assert refused.status_code in (400, 413)
    message = refused.json()["error"]["message"]
    assert shown in message
    assert (seen["kind"], seen["text"]) == ("error", message)
    if name == "notes":
        note = page.execute_script("return document.getElementById('image-note').textContent")
        assert note == "notes.txt: this browser cannot show it"
        assert canvas_size(page) == (1, 1)
