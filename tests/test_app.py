"""The Gradio demo app (app.py): its plain functions, and the real page in headless Chromium.

The browser test needs Debian's Chromium (`apt-get install -y chromium chromium-driver`, binary /usr/bin/chromium)
and the `playwright` Python package (`pip install playwright`; never `playwright install`, which downloads a
browser); without them it is skipped (LMD_CHROMIUM names another Chromium binary). With LMD_SAVE_SCREENSHOT set,
its screenshot is also copied to docs/app_screenshot.png.
"""

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from subprocess_helpers import child_env

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("LMD_CHROMIUM", "/usr/bin/chromium")  # Debian's; never a downloaded browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL_HINT = ("the browser test needs Debian's Chromium and the playwright Python package: "
                "`apt-get update && apt-get install -y chromium chromium-driver` and `pip install playwright` "
                "(never `playwright install`)")


def _load_app():
    spec = importlib.util.spec_from_file_location("lmd_app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lmd_app"] = module
    spec.loader.exec_module(module)
    return module


app = _load_app()


@pytest.fixture(scope="module")
def pipe():
    return app.load_pipeline()


@pytest.fixture(scope="module")
def photo():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.chelsea()  # 300 x 451 RGB, not square


def _hidden_grey(image: PIL.Image.Image) -> np.ndarray:
    """Per pixel of a masked input: is it the mid-grey of a hidden patch?"""
    array = np.asarray(image, dtype=np.int16)
    return (np.abs(array - 127.5) <= 1).all(axis=-1)


# ---------------------------------------------------------------------------------------------------------------
# Plain functions: no browser, no Gradio.
# ---------------------------------------------------------------------------------------------------------------


def test_prepare_photo_converts_odd_images(tmp_path, photo):
    rgb = PIL.Image.fromarray(photo)
    ramp = (np.linspace(0, 65535, 300 * 451).reshape(300, 451)).astype(np.uint16)
    cases = {
        "gray16.png": PIL.Image.fromarray(ramp),  # 16-bit grayscale: scaled to 8 bits, not clipped to white
        "cmyk.jpg": rgb.convert("CMYK"),
        "rgba.png": rgb.convert("RGBA"),
        "palette.gif": rgb.convert("P"),
        "gray.tif": rgb.convert("L"),
    }
    for name, image in cases.items():
        path = tmp_path / name
        image.save(path)
        prepared = app.prepare_photo(path)
        assert prepared.mode == "RGB" and prepared.size == (451, 300), name  # the photo's own size
        assert np.asarray(prepared).std() > 10, f"{name} came out flat"
    assert PIL.Image.open(tmp_path / "gray16.png").mode.startswith("I")  # the file really is 16-bit
    # By their meaning, as the pipeline and training read them: a white 16-bit file is white (it came back black),
    # a dark one stays dark (it was stretched to mid-grey), transparency is white.
    PIL.Image.fromarray(np.full((40, 40), 65535, dtype=np.uint16)).save(tmp_path / "white16.png")
    assert (np.asarray(app.prepare_photo(tmp_path / "white16.png")) == 255).all()
    PIL.Image.fromarray((ramp // 32).astype(np.uint16)).save(tmp_path / "dark16.png")
    assert np.asarray(app.prepare_photo(tmp_path / "dark16.png")).mean() < 5
    # Arrays and PIL images work too; small ones keep their size, large ones shrink to MAX_SIDE, aspect kept.
    assert app.prepare_photo(photo).size == (451, 300)
    assert app.prepare_photo(rgb.resize((20, 30))).size == (20, 30)
    assert app.prepare_photo(rgb.resize((3000, 1500))).size == (app.MAX_SIDE, app.MAX_SIDE // 2)


def test_prepare_photo_rejects_bad_uploads_with_a_message(tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    with pytest.raises(app.PhotoError, match="'notes.png' is not an image file"):
        app.prepare_photo(not_image)
    tiny = tmp_path / "tiny.png"
    PIL.Image.new("RGB", (1, 1), "red").save(tiny)
    with pytest.raises(app.PhotoError, match=r"only 1x1 pixels: too small"):
        app.prepare_photo(tiny)
    huge = tmp_path / "huge.png"
    PIL.Image.new("1", (7000, 6000)).save(huge)  # 42 megapixels, a few kB on disk
    with pytest.raises(app.PhotoError, match=r"7000x6000 pixels \(42.0 megapixels\): too large"):
        app.prepare_photo(huge)
    bomb = tmp_path / "bomb.png"
    PIL.Image.new("1", (10000, 9000)).save(bomb)  # over PIL's own decompression-bomb limit
    with pytest.raises(app.PhotoError, match="too large"):
        app.prepare_photo(bomb)
    truncated = tmp_path / "truncated.jpg"
    PIL.Image.new("RGB", (200, 200), "blue").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(app.PhotoError, match="could not be decoded|not an image file"):
        app.prepare_photo(truncated)
    with pytest.raises(app.PhotoError, match="No photo yet"):
        app.prepare_photo(None)
    with pytest.raises(app.PhotoError, match="No file at"):
        app.prepare_photo(tmp_path / "missing.png")


def test_an_upload_too_narrow_to_shrink_is_refused_at_upload(pipe, tmp_path):
    """A 16 x 20,000 upload passed the minimum side as it came, was shrunk to 1 x 1,024 for the editor, and was refused
    only at Reconstruct. The limits now hold for the photo as the editor gets it, so the upload itself is refused,
    saying what came and what is needed."""
    strip = tmp_path / "strip.png"
    PIL.Image.new("RGB", (16, 20000), "green").save(strip)
    photo, message = app.photo_from_upload(strip)
    assert photo is None
    assert re.fullmatch(r"'strip\.png' is 16x20000 pixels: too long and narrow\. .* with a longer side of 20000 "
                        r"pixels, the shorter side must be at least 313\. Please crop it first\.", message), message
    with pytest.raises(app.PhotoError, match=r"the image is 16x20000 pixels: too long and narrow"):
        app.prepare_photo(np.zeros((20000, 16, 3), np.uint8))  # decoded photos are checked the same way
    # The shorter side the message asks for is enough: loaded as 16 x 1,024, and it reconstructs.
    enough = tmp_path / "enough.png"
    PIL.Image.new("RGB", (313, 20000), "green").save(enough)
    photo, message = app.photo_from_upload(enough)
    assert photo is not None and photo.size == (app.MIN_SIDE, app.MAX_SIDE), message
    rgba = np.asarray(photo.convert("RGBA"))
    result, message = app.run_from_editor(pipe, {"background": rgba, "layers": [], "composite": rgba},
                                          app.MODE_RANDOM, 0.5, 0, 1)
    assert result is not None and result.reconstruction.size == photo.size, message


@settings(max_examples=60, deadline=None)
@given(sides=st.tuples(st.integers(1, 80), st.integers(1, 6000)), tall=st.booleans())
def test_what_prepare_photo_accepts_it_accepts_again_shrunk(sides, tall):
    """The editor's photo is `prepare_photo`'s output, prepared again at Reconstruct: it must pass again. A refusal
    names the size that came, and the shorter side it asks for is accepted (one pixel less is not)."""
    shorter, longer = sorted(sides)
    width, height = (shorter, longer) if tall else (longer, shorter)
    try:
        prepared = app.prepare_photo(PIL.Image.new("L", (width, height)))
    except app.PhotoError as error:
        assert f"{width}x{height} pixels" in str(error)
        needed = re.search(r"the shorter side must be at least (\d+)", str(error))
        if needed:
            needed = int(needed.group(1))
            app.prepare_photo(PIL.Image.new("L", (needed, longer)))
            with pytest.raises(app.PhotoError, match="too long and narrow"):
                app.prepare_photo(PIL.Image.new("L", (needed - 1, longer)))
        return
    assert app.prepare_photo(prepared).size == prepared.size


def test_fill_photo_random_mode(pipe, photo):
    result = app.fill_photo(pipe, photo, mode="random", mask_ratio=0.5, seed=3)
    for image in (result.masked_image, result.reconstruction):  # the photo's own size
        assert image.mode == "RGB" and image.size == (451, 300)
    assert result.decoded.size == (app.DISPLAY_SIZE, app.DISPLAY_SIZE)  # the model's square, enlarged
    assert (result.hidden_patches, result.total_patches) == (32, 64)
    masked = np.asarray(result.masked_image)
    pasted = np.asarray(result.reconstruction)
    hidden = _hidden_grey(result.masked_image)
    assert 0.4 < hidden[:, 75:375].mean() < 0.6  # half of the centred 300 x 300 square
    assert not hidden[:, :75].any() and not hidden[:, 375:].any()
    assert np.asarray(result.decoded).std() > 10  # not blank
    assert np.abs(pasted.astype(int) - masked).max() > 50  # the hidden patches were filled in
    # Outside the hidden patches, the result is the photo itself, bit for bit.
    np.testing.assert_array_equal(pasted[~hidden], photo[~hidden])
    assert "32 of 64 patches (50%)" in result.summary
    again = app.fill_photo(pipe, photo, mode=app.MODE_RANDOM, mask_ratio=0.5, seed=3)
    np.testing.assert_array_equal(np.asarray(again.masked_image), masked)  # the seed fixes the mask
    other = app.fill_photo(pipe, photo, mode="random", mask_ratio=0.5, seed=4)
    assert not np.array_equal(np.asarray(other.masked_image), masked)


def test_fill_photo_brush_mode(pipe, photo):
    mask = np.zeros(photo.shape[:2], dtype=bool)
    mask[100:160, 200:280] = True  # a hole in the middle of the photo
    result = app.fill_photo(pipe, photo, mode="brush", mask=mask, num_inference_steps=2)
    assert 0 < result.hidden_patches < result.total_patches == 64
    hidden = _hidden_grey(result.masked_image)
    np.testing.assert_array_equal(hidden, mask)  # exactly what was painted is filled in, at the photo's size
    pasted = np.asarray(result.reconstruction)
    assert result.reconstruction.size == (451, 300)
    np.testing.assert_array_equal(pasted[~mask], photo[~mask])  # outside the painted region, the photo itself
    assert pasted[mask].std() > 5 and np.abs(pasted[mask].astype(int) - photo[mask]).mean() > 5


def test_fill_photo_bad_settings_give_messages(pipe, photo):
    shape = photo.shape[:2]
    cases = [
        ({"mode": "brush", "mask": np.zeros(shape, bool)}, "Nothing is painted yet"),
        ({"mode": "brush", "mask": None}, "Nothing is painted yet"),
        ({"mode": "brush", "mask": np.ones(shape, bool)}, "touches every latent patch"),
        ({"mode": "random", "mask_ratio": 1.0}, r"The share to hide must be in \[0, 1\), got 1.0"),
        ({"mode": "random", "mask_ratio": None}, "The share to hide"),
        ({"mode": "random", "num_inference_steps": 9}, "between 1 and 8"),
        ({"mode": "random", "seed": -1}, "0 or more"),
        ({"mode": "random", "seed": 1.9}, "The seed must be a whole number, got 1.9"),
        ({"mode": "random", "num_inference_steps": 1.5}, "num_inference_steps must be a whole number"),
        ({"mode": "sideways"}, "Unknown mode"),
    ]
    for kwargs, message in cases:
        with pytest.raises(app.PhotoError, match=message):
            app.fill_photo(pipe, photo, **kwargs)


def test_brush_mask_from_editor_layers():
    layer = np.zeros((256, 256, 4), dtype=np.uint8)
    layer[10:20, 30:40] = (255, 0, 200, 255)
    mask = app.brush_mask([layer, np.zeros((256, 256, 4), np.uint8)], (512, 512))  # a half-size canvas
    assert mask.shape == (512, 512) and mask.sum() == 20 * 20
    assert mask[20:40, 60:80].all() and not mask[:20].any()
    assert not app.brush_mask([], (64, 48)).any() and app.brush_mask(None, (64, 48)).shape == (48, 64)


def test_run_from_editor_and_upload_never_raise(pipe, photo, tmp_path):
    photo_rgba = np.asarray(app.prepare_photo(photo).convert("RGBA"))
    stroke = np.zeros_like(photo_rgba)
    stroke[100:200, 100:200] = (255, 0, 200, 255)
    editor = {"background": photo_rgba, "layers": [stroke], "composite": photo_rgba}
    result, message = app.run_from_editor(pipe, editor, app.MODE_BRUSH, 0.5, 0, 1)
    assert result is not None and 0 < result.hidden_patches < 64, message
    assert result.reconstruction.size == (451, 300)
    result, message = app.run_from_editor(pipe, editor, app.MODE_RANDOM, 0.25, 0, 1)
    assert result.hidden_patches == 16 and "brush strokes were not used" in message
    blank = {"background": np.zeros((300, 451, 4), np.uint8), "layers": [], "composite": None}
    assert app.run_from_editor(pipe, blank, app.MODE_RANDOM, 0.5, 0, 1) == (None, app.NO_PHOTO)
    assert app.run_from_editor(pipe, None, app.MODE_RANDOM, 0.5, 0, 1) == (None, app.NO_PHOTO)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00" * 100)
    assert app.photo_from_upload(bad)[0] is None and "not an image file" in app.photo_from_upload(bad)[1]
    good = tmp_path / "good.png"
    PIL.Image.fromarray(photo).save(good)
    loaded, message = app.photo_from_upload(good)
    assert loaded.size == (451, 300) and message.startswith("Loaded good.png")


def test_command_line_defaults_are_local_only(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    args = app.parse_args([])
    assert (args.host, args.port, args.share, args.model) == ("127.0.0.1", 7860, False, app.DEMO_LMD)
    args = app.parse_args(["--model", "some/checkpoint", "--host", "0.0.0.0", "--port", "9000", "--share"])
    assert (args.host, args.port, args.share, args.model) == ("0.0.0.0", 9000, True, "some/checkpoint")


def test_other_checkpoints_and_a_bad_one(tiny_checkpoint, photo, tmp_path, capsys):
    tiny = app.load_pipeline(tiny_checkpoint)  # a folder: the package's pipeline class, no remote code
    result = app.fill_photo(tiny, photo, mode="random", mask_ratio=0.5, seed=0)
    assert result.total_patches == tiny.model.config.num_patches
    assert result.reconstruction.size == (451, 300)
    assert app.main(["--model", str(tmp_path / "no-such-checkpoint")]) == 2
    assert "could not load the LMD checkpoint" in capsys.readouterr().err


def test_build_demo(pipe):
    gr = pytest.importorskip("gradio")
    demo = app.build_demo(app.DEMO_LMD, pipe=pipe)
    assert isinstance(demo, gr.Blocks)


# ---------------------------------------------------------------------------------------------------------------
# The real page in headless Chromium.
# ---------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_server(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"app.py did not answer at {url} within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


@pytest.fixture
def running_app(tmp_path):
    """`python app.py --port PORT` in a child process (the real command line, default host), until the test ends."""
    port = _free_port()
    log = tmp_path / "app.log"
    env = child_env(GRADIO_ANALYTICS_ENABLED="False", GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    env.pop("GRADIO_SERVER_NAME", None)
    with open(log, "w") as log_file:
        process = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_server(url, process, log)
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _fetch_image(page, selector: str) -> PIL.Image.Image:
    import io

    source = page.locator(f"{selector} img").first.get_attribute("src")
    response = page.request.get(source)
    assert response.ok, f"{source}: HTTP {response.status}"
    return PIL.Image.open(io.BytesIO(response.body())).convert("RGB")


@pytest.fixture
def browser_tools():
    """Playwright's sync API, or a skip (checked before the app is started)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: {INSTALL_HINT}")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip(f"playwright is not installed: {INSTALL_HINT}")
    return sync_playwright, expect


def _random_patches_in_the_page(page, status, expect, photo) -> None:
    """Random masking, 60 % of the patches with seed 7: the three results shown, the photo's own pixels outside."""
    ratio = page.locator("#lmd-mask-ratio input[type=number]")
    ratio.fill("0.6")
    ratio.press("Enter")
    page.locator("#lmd-seed input").fill("7")
    page.click("#lmd-run")
    expect(status).to_have_value(re.compile(r"^Done in .* of 64 patches"), timeout=60_000)
    hidden_patches = int(re.search(r"(\d+) of 64 patches", status.input_value()).group(1))
    assert hidden_patches == 64 - int(64 * 0.4 + 1e-6), status.input_value()  # int(L * (1 - r)) stay
    for selector in ("#lmd-masked", "#lmd-decoded", "#lmd-pasted"):
        expect(page.locator(f"{selector} img").first).to_be_visible()
    for label in ("Photo (grey = to fill in)", "What the model drew (its square, enlarged)",
                  "Result at the photo's size"):
        expect(page.get_by_text(label, exact=True).first).to_be_visible()
    masked, decoded, pasted = (_fetch_image(page, s) for s in ("#lmd-masked", "#lmd-decoded", "#lmd-pasted"))
    assert masked.size == pasted.size == (451, 300) and decoded.size == (app.DISPLAY_SIZE, app.DISPLAY_SIZE)
    masked_array, pasted_array = np.asarray(masked, dtype=int), np.asarray(pasted, dtype=int)
    hidden = _hidden_grey(masked)
    assert abs(hidden[:, 75:375].mean() - hidden_patches / 64) < 0.1  # of the photo's centred square
    assert np.asarray(decoded).std() > 10 and pasted_array.std() > 10  # not blank
    assert np.abs(pasted_array - masked_array)[hidden].mean() > 10  # filled in, not the masked input
    # Outside the fill, the photo's own pixels, as the editor's canvas handed them to the pipeline (within a level).
    assert np.abs(pasted_array - photo)[~hidden].max() <= 1


def _brush_strokes_in_the_page(page, status, expect, screenshot) -> None:
    """Brush mode: a stroke painted across the middle of the photo is inpainted."""
    page.get_by_label(app.MODE_BRUSH).check()
    canvas = page.locator("#lmd-editor canvas").first.bounding_box()
    x, y = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
    page.mouse.move(x - 60, y)
    page.mouse.down()
    for step in range(1, 4):  # each move redraws the canvas (software WebGL here): a few suffice
        page.mouse.move(x - 60 + 40 * step, y + 10 * step)
    page.mouse.up()
    previous = status.input_value()
    page.click("#lmd-run")
    expect(status).not_to_have_value(previous, timeout=60_000)
    expect(status).to_have_value(re.compile(r"^Done in .* of 64 patches"))
    painted = int(re.search(r"(\d+) of 64 patches", status.input_value()).group(1))
    assert 0 < painted < 32, status.input_value()
    page.screenshot(path=str(screenshot), full_page=True)


def test_page_in_headless_chromium(browser_tools, running_app, tmp_path, photo):
    sync_playwright, expect = browser_tools
    url, log = running_app
    assert f"Running on local URL:  {url}".rstrip("/") in log.read_text()  # bound to 127.0.0.1 only
    upload = tmp_path / "cat.png"
    PIL.Image.fromarray(photo).save(upload)
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    outside = []  # the page must work offline: nothing but the app itself is requested

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            # Software WebGL keeps the page's main thread busy for seconds while the photo editor redraws.
            expect.set_options(timeout=30_000)
            page.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/]).*"),
                       lambda route: (outside.append(route.request.url), route.abort()))
            page.goto(url)
            status = page.locator("#lmd-status textarea")
            expect(page.get_by_role("button", name="Reconstruct")).to_be_visible()
            expect(status).to_have_value(re.compile("Press Reconstruct"))

            # Upload a photo: it replaces the example photo in the editor.
            page.set_input_files("#lmd-upload input[type=file]", str(upload))
            expect(status).to_have_value(re.compile(r"^Loaded cat\.png"))

            _random_patches_in_the_page(page, status, expect, photo)
            page.wait_for_timeout(300)  # let the images settle for the screenshot
            screenshot = tmp_path / "app_screenshot.png"
            page.screenshot(path=str(screenshot), full_page=True)
            if os.environ.get("LMD_SAVE_SCREENSHOT"):
                (ROOT / "docs").mkdir(exist_ok=True)
                shutil.copyfile(screenshot, ROOT / "docs" / "app_screenshot.png")

            _brush_strokes_in_the_page(page, status, expect, tmp_path / "app_screenshot_brush.png")
            # A file that is not an image: a message in the page (a warning and the status box), no traceback.
            page.set_input_files("#lmd-upload input[type=file]", str(not_image))
            expect(status).to_have_value(re.compile(r"'notes\.png' is not an image file"))
            expect(page.get_by_text("is not an image file").first).to_be_visible()
            assert "Traceback" not in page.content()
            # Nothing failed on the server either (read before the browser goes: closing it drops its connections,
            # which the web server may log as errors of its own).
            assert "Traceback" not in log.read_text(), log.read_text()[-4000:]
        finally:
            context.close()
    assert not outside, f"the page requested outside addresses: {outside}"
