"""The page `asr serve` serves, in a real browser: headless Chromium driven by selenium uploads a
file and reads the transcript from the page; with a streaming model, it records from Chromium's
fake microphone (a WAV file) and the page shows the live transcript."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import tone_utterance
from tests.test_server import SR, live_server, model, utterances  # noqa: F401  (fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="no chromium and chromedriver (apt-get install chromium chromium-driver)")


def _browser(fake_audio: Path | None = None):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--use-fake-ui-for-media-stream", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    if fake_audio is not None:
        options.add_argument("--use-fake-device-for-media-stream")
        options.add_argument(f"--use-file-for-fake-audio-capture={fake_audio}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _text_of(driver, element_id: str, timeout: float = 60) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.ID, element_id).text.strip())
    return driver.find_element(By.ID, element_id).text.strip()


def test_page_uploads_a_file_and_shows_the_transcript_with_word_times(live_server, model, utterances, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    import asr

    wav = tmp_path / "tones.wav"
    sf.write(wav, utterances[4], SR)
    expected = asr.transcribe(model, wav)
    driver = _browser()
    try:
        driver.get(live_server + "/")
        header = _text_of(driver, "model")
        assert header.startswith("blstm, 1 layer x 64 units per direction, ") and "trained on" in header and "model" not in header, header
        driver.find_element(By.ID, "key").send_keys("k")
        driver.find_element(By.ID, "file").send_keys(str(wav))
        driver.find_element(By.ID, "send").click()
        assert _text_of(driver, "transcript") == expected.text
        rows = driver.find_elements(By.CSS_SELECTOR, "#words tr.word")
        assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == expected.text.split()
        times = [float(r.find_elements(By.TAG_NAME, "td")[1].text) for r in rows]
        assert times == sorted(times) and all(abs(t - w.start) < 0.006 for t, w in zip(times, expected.words, strict=True))
        confidences = [float(r.find_elements(By.TAG_NAME, "td")[3].text) for r in rows]
        assert all(abs(c - w.confidence) < 0.006 for c, w in zip(confidences, expected.words, strict=True))
        spans = driver.find_elements(By.CSS_SELECTOR, "#transcript span.w")
        assert [s.text for s in spans] == expected.text.split()
        for span, w in zip(spans, expected.words, strict=True):  # shaded by confidence, the figure in the tooltip
            assert abs(float(span.get_attribute("data-confidence")) - w.confidence) < 0.001
            assert f"confidence {w.confidence:.2f}" in span.get_attribute("title")
            assert span.value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "transparent")
        assert driver.find_element(By.ID, "srt").is_enabled()
    finally:
        driver.quit()


def test_page_tells_a_person_to_enter_the_key_and_keeps_it(live_server, utterances, tmp_path: Path) -> None:  # noqa: F811
    """A 401 asks for the key in the page's own words (not "send Authorization: Bearer"); the key
    entered stays in the tab across a reload and is sent as a Bearer token."""
    import time

    from selenium.webdriver.common.by import By

    wav = tmp_path / "tones.wav"
    sf.write(wav, utterances[1], SR)
    driver = _browser()
    try:
        driver.get(live_server + "/")
        driver.find_element(By.ID, "file").send_keys(str(wav))
        driver.find_element(By.ID, "send").click()
        deadline = time.time() + 30
        while "API key" not in driver.find_element(By.ID, "status").text and time.time() < deadline:
            time.sleep(0.1)
        status = driver.find_element(By.ID, "status").text
        assert "enter it in the API key field" in status and "Authorization" not in status and "Bearer" not in status, status
        assert driver.switch_to.active_element.get_attribute("id") == "key"
        driver.find_element(By.ID, "key").send_keys("k")
        driver.refresh()
        assert driver.find_element(By.ID, "key").get_attribute("value") == "k"
        driver.find_element(By.ID, "file").send_keys(str(wav))
        driver.find_element(By.ID, "send").click()
        assert _text_of(driver, "transcript")
    finally:
        driver.quit()


def test_record_is_disabled_for_a_model_that_cannot_stream(live_server) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    driver = _browser()
    try:
        driver.get(live_server + "/")
        assert "cannot stream" in _text_of(driver, "live-note")
        assert not driver.find_element(By.ID, "record").is_enabled()
    finally:
        driver.quit()


def test_page_shows_errors_of_bad_audio(live_server, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    bad = tmp_path / "notes.wav"
    bad.write_text("not audio at all\n")
    driver = _browser()
    try:
        driver.get(live_server + "/")
        driver.find_element(By.ID, "key").send_keys("k")
        driver.find_element(By.ID, "file").send_keys(str(bad))
        driver.find_element(By.ID, "send").click()
        import time

        deadline = time.time() + 30
        while "400" not in driver.find_element(By.ID, "status").text and time.time() < deadline:
            time.sleep(0.1)
        assert "400: notes.wav: not readable as audio" in driver.find_element(By.ID, "status").text
    finally:
        driver.quit()


def fake_microphone_file(path: Path, words: list[str]) -> Path:
    """A WAV for --use-file-for-fake-audio-capture: the tone words, then silence."""
    x = tone_utterance(words, np.random.default_rng(3))
    sf.write(path, np.concatenate([x, np.zeros(3 * SR, np.float32)]), SR, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def streaming_server(trained_streaming: Path):
    """A real uvicorn server with the streaming tone model, no API key."""
    import threading
    import time

    import uvicorn

    import asr
    from asr.server import ServerConfig, create_app
    from tests.test_server import _free_port

    port = _free_port()
    app = create_app(asr.load_model(trained_streaming / "best.pt"), config=ServerConfig(port=port), name="tones-live")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_page_records_the_fake_microphone_and_shows_the_live_transcript(streaming_server, tmp_path: Path) -> None:
    """Chromium's fake microphone plays a WAV of tone words (looped); the page captures it with an
    AudioWorklet (not the deprecated ScriptProcessorNode), streams it over the WebSocket and shows
    partial results, then each final on its own line with its times and word confidences."""
    import re
    import time

    from selenium.webdriver.common.by import By

    from tests.conftest import WORDS

    mic = fake_microphone_file(tmp_path / "mic.wav", ["CAB", "DAD", "BAD"])
    driver = _browser(fake_audio=mic)
    try:
        driver.get(streaming_server + "/")
        header = _text_of(driver, "model")
        assert header.startswith("lstm, 1 layer x 64 units, ") and "trained on" in header, header
        assert driver.find_element(By.ID, "live-note").text == ""  # the model can stream
        driver.execute_script(
            """
            window.usedScriptProcessor = false; window.worklets = 0;
            AudioContext.prototype.createScriptProcessor = function () { window.usedScriptProcessor = true; throw new Error("deprecated"); };
            const Real = window.AudioWorkletNode;
            window.AudioWorkletNode = class extends Real { constructor(...a) { super(...a); window.worklets += 1; } };
            """
        )
        driver.find_element(By.ID, "record").click()
        seen: set[str] = set()
        deadline = time.time() + 60
        while time.time() < deadline and len(driver.find_elements(By.CSS_SELECTOR, "#live-final .line")) < 2:
            seen.add(driver.find_element(By.ID, "live-partial").text.strip())
            time.sleep(0.05)
        lines = driver.find_elements(By.CSS_SELECTOR, "#live-final .line")
        texts = [line.text for line in lines]
        words = [[w.text for w in line.find_elements(By.CSS_SELECTOR, "span.w")] for line in lines]
        confidences = [float(w.get_attribute("data-confidence")) for line in lines for w in line.find_elements(By.CSS_SELECTOR, "span.w")]
        driver.find_element(By.ID, "stop").click()
        assert driver.execute_script("return window.worklets") == 1 and not driver.execute_script("return window.usedScriptProcessor")
        assert len(lines) >= 2, f"finals: {texts}; partials seen: {sorted(seen)}"
        spans = []
        for text, ws in zip(texts, words, strict=True):  # "0.20-1.68 s CAB DAD": one utterance a line
            m = re.fullmatch(r"(\d+\.\d\d)-(\d+\.\d\d) s (.+)", text)
            assert m and ws and m.group(3).split() == ws, text
            spans.append((float(m.group(1)), float(m.group(2))))
        assert all(a < b <= c for (a, b), (c, _) in zip(spans, spans[1:], strict=False)), spans
        letters = "".join(w for ws in words for w in ws)  # the small tone model may run two words together
        assert set(letters) <= set("".join(WORDS)) and any(w in letters for w in ("CAB", "DAD", "BAD")), words
        assert all(0 <= c <= 1 for c in confidences)
        assert any(p for p in seen), "no partial result was shown before the final"
    finally:
        driver.quit()


MAPS = ("cv-forget", "cv-input", "cv-output", "cv-cell", "cv-post")
DRAWN = """
const c = document.getElementById(arguments[0]), d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] !== 250 || d[i + 1] !== 250 || d[i + 2] !== 250) n++;
return n;
"""


def _drawn(driver, canvas: str) -> int:
    """Pixels of a canvas that are not the empty background."""
    return driver.execute_script(DRAWN, canvas)


def test_page_draws_the_network_live_while_audio_plays(streaming_server, tmp_path: Path) -> None:
    """With the fake microphone, the page asks the WebSocket for the network's internals and draws
    the gates, the cell state and the CTC posteriors; the picture scrolls with the audio, stands
    still while paused, and hovering a frame tells its time, top tokens and gate means."""
    import time

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    mic = fake_microphone_file(tmp_path / "mic.wav", ["CAB", "DAD", "BAD"])
    driver = _browser(fake_audio=mic)
    try:
        driver.get(streaming_server + "/")
        _text_of(driver, "model")
        options = [o.text for o in driver.find_elements(By.CSS_SELECTOR, "#layer option")]
        assert options == ["layer 1 (lstm, 64 units)"]
        driver.find_element(By.ID, "record").click()
        view = driver.execute_script("return viewFrames()")
        deadline = time.time() + 40
        while time.time() < deadline and driver.execute_script("return scope.last") < view + 25:
            time.sleep(0.2)
        assert driver.execute_script("return scope.last") >= view + 25, "the page got too few inspect frames"
        for canvas in MAPS:
            assert _drawn(driver, canvas) > 0.5 * 720 * int(driver.find_element(By.ID, canvas).get_attribute("height")), canvas
        before = driver.execute_script("return [firstFrame(), document.getElementById('cv-forget').toDataURL(), document.getElementById('cv-post').toDataURL()]")
        time.sleep(1.0)
        after = driver.execute_script("return [firstFrame(), document.getElementById('cv-forget').toDataURL(), document.getElementById('cv-post').toDataURL()]")
        assert after[0] > before[0] and after[1] != before[1] and after[2] != before[2], "the picture did not scroll"
        driver.find_element(By.ID, "pause").click()
        time.sleep(0.3)
        frozen = driver.execute_script("return [firstFrame(), scope.last, document.getElementById('cv-forget').toDataURL()]")
        time.sleep(1.0)
        still = driver.execute_script("return [firstFrame(), scope.last, document.getElementById('cv-forget').toDataURL()]")
        assert still[0] == frozen[0] and still[2] == frozen[2] and still[1] > frozen[1], "paused: the picture moved or the data stopped"
        ActionChains(driver).move_to_element_with_offset(driver.find_element(By.ID, "cv-forget"), 30, 10).perform()
        hover = driver.find_element(By.ID, "hover").text
        assert " s (frame " in hover and "top tokens: " in hover and "forget " in hover and "|c| " in hover, hover
        driver.find_element(By.ID, "stop").click()
        assert driver.execute_script("return scope.paused"), "stopping does not unfreeze the picture"
        deadline = time.time() + 20
        while time.time() < deadline and not driver.find_element(By.ID, "record").is_enabled():
            time.sleep(0.2)
        driver.find_element(By.ID, "record").click()  # a new recording starts unfrozen
        deadline = time.time() + 40
        while time.time() < deadline and not driver.execute_script("return scope.live"):
            time.sleep(0.2)
        assert driver.execute_script("return [scope.live, scope.paused]") == [True, False]
        assert driver.find_element(By.ID, "pause").text == "Pause"
        driver.find_element(By.ID, "stop").click()
    finally:
        driver.quit()


def test_the_slider_scrolls_back_through_a_recording_once_it_has_stopped(streaming_server, tmp_path: Path) -> None:
    """After Stop (the stream closed), the picture no longer follows the newest frame: the slider
    scrolls back through the whole recording without pressing Pause first."""
    import time

    from selenium.webdriver.common.by import By

    mic = fake_microphone_file(tmp_path / "mic.wav", ["CAB", "DAD", "BAD"])
    driver = _browser(fake_audio=mic)
    try:
        driver.get(streaming_server + "/")
        _text_of(driver, "model")
        driver.find_element(By.ID, "record").click()
        view = driver.execute_script("return viewFrames()")
        deadline = time.time() + 40
        while time.time() < deadline and driver.execute_script("return scope.last") < view + 40:
            time.sleep(0.2)
        assert driver.execute_script("return scope.last") >= view + 40, "the page got too few inspect frames"
        driver.find_element(By.ID, "stop").click()
        deadline = time.time() + 10
        while time.time() < deadline and driver.execute_script("return socket.readyState") != 3:
            time.sleep(0.1)
        time.sleep(0.3)
        end = driver.execute_script("return firstFrame()")
        assert end > 0 and driver.find_element(By.ID, "scroll").get_attribute("disabled") is None
        spans = driver.execute_script("return ['scroll', 'cv-post'].map((id) => { const r = document.getElementById(id).getBoundingClientRect(); return [r.left, r.right]; })")
        assert abs(spans[0][0] - spans[1][0]) <= 2 and abs(spans[0][1] - spans[1][1]) <= 2, f"the slider does not span the frames it scrolls: {spans}"
        shown = driver.execute_script("return document.getElementById('cv-forget').toDataURL()")
        for position in (0, end // 2):
            driver.execute_script("const s = document.getElementById('scroll'); s.value = arguments[0]; s.dispatchEvent(new Event('input'));", position)
            time.sleep(0.3)
            assert driver.execute_script("return firstFrame()") == position
            now = driver.execute_script("return document.getElementById('cv-forget').toDataURL()")
            assert now != shown, f"the picture did not move to frame {position}"
            shown = now
        assert driver.find_element(By.ID, "pause").text == "Pause"  # not paused: the stream has ended
    finally:
        driver.quit()


def test_page_draws_the_network_of_an_uploaded_file_both_directions(live_server, model, utterances, tmp_path: Path) -> None:  # noqa: F811
    """A file through the page's own route with the BLSTM: every layer's gates in both directions
    and the posteriors, drawn, with the file's words over them."""
    from selenium.webdriver.common.by import By

    wav = tmp_path / "tones.wav"
    sf.write(wav, utterances[3], SR)
    driver = _browser()
    try:
        driver.get(live_server + "/")
        driver.find_element(By.ID, "key").send_keys("k")
        driver.find_element(By.ID, "file").send_keys(str(wav))
        driver.find_element(By.ID, "send").click()
        _text_of(driver, "transcript")
        frames = driver.execute_script("return scope.last + 1")
        expected = model.model.encoder_input(torch.zeros(1, len(model.extractor(torch.from_numpy(utterances[3]))), model.extractor.dim), torch.tensor([1]))[0].shape[1]
        assert frames == expected
        assert driver.execute_script("return [!!scope.gates[1].forward, !!scope.gates[1].backward, scope.words.length]") == [True, True, len(driver.find_elements(By.CSS_SELECTOR, "#transcript span.w"))]
        for canvas in MAPS:
            assert _drawn(driver, canvas) > 0, canvas
        assert _drawn(driver, "cv-words") > 0
    finally:
        driver.quit()
