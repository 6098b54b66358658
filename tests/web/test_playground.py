"""The playground as a person uses it, in chromium against a live `ltxserve serve` on the tiny model."""

from __future__ import annotations

import json
import re
import shlex

import httpx
import pytest

from tests.api.helpers import png_data_uri
from tests.endpoints_for_tests import ALL as TEST_ENDPOINTS
ENDPOINT = "fal-ai/ltx-video-13b-dev/image-to-video"
APP = ENDPOINT.rsplit("/", 1)[0]  # status, result and cancel URLs name owner/app only

GENERATION_TIMEOUT_MS = 150_000  # a 480p, 9-frame tiny-model run takes ~10 s alone, several times that on a busy CI box

# The short run a person sets up through the advanced fields: 480p, 9 frames, the fewest steps the schema allows.
SHORT_RUN = {
    "first_pass_num_inference_steps": "3",
    "first_pass_skip_final_steps": "1",
    "second_pass_num_inference_steps": "2",
    "second_pass_skip_initial_steps": "1",
}


def history(page) -> list[dict]:
    return page.evaluate("JSON.parse(localStorage.getItem('ltxserve.history.v1') || '[]')")


def wait_playing_video(page, request_id: str, width: int, height: int) -> None:
    """The request's result shows a <video> that has decoded frames of the expected size and is playing."""
    page.wait_for_selector(f"#result[data-request-id='{request_id}'] video", timeout=GENERATION_TIMEOUT_MS)
    page.wait_for_function(
        "() => { const v = document.querySelector('#result video');"
        " return v && v.readyState >= 2 && v.videoWidth > 0; }", timeout=GENERATION_TIMEOUT_MS)
    page.wait_for_function(
        "() => { const v = document.querySelector('#result video');"
        " return !v.paused && v.played.length > 0 && v.played.end(0) > 0; }", timeout=20_000)
    size = page.evaluate("(v => [v.videoWidth, v.videoHeight])(document.querySelector('#result video'))")
    assert size == [width, height]


def test_form_is_generated_from_the_schema(tiny_server, open_tab, shoot):
    tab = open_tab(tiny_server.base_url + "/")
    page = tab.page
    schema = httpx.get(tiny_server.base_url + "/openapi.json").json()["components"]["schemas"]["ImageToVideoInput"]
    for name, prop in schema["properties"].items():
        options = prop.get("anyOf", [prop])
        real = next(o for o in options if o.get("type") != "null")
        if name == "loras":
            assert page.locator("fieldset[data-field=loras] legend").is_visible()
            continue
        control = page.locator(f"#fields [name={name}]")
        assert control.count() == 1, name
        # every control is labelled, and the schema's description is its help text
        assert page.evaluate("(n) => document.querySelector(`#fields [name=${n}]`).labels.length", name) == 1, name
        if prop.get("description"):
            help_id = control.get_attribute("aria-describedby").split()[0]
            assert prop["description"] in page.locator(f"#{help_id}").text_content(), name
        tag = control.evaluate("el => el.tagName.toLowerCase()")
        if "enum" in real:
            assert tag == "select", name
            assert control.locator("option").all_inner_texts() == real["enum"]
            assert control.input_value() == prop["default"]
        elif real.get("type") == "boolean":
            assert control.get_attribute("type") == "checkbox" and control.is_checked() == prop["default"], name
        elif real.get("type") == "integer":
            assert control.get_attribute("type") == "number", name
            assert control.input_value() == (str(prop["default"]) if prop.get("default") is not None else ""), name
            assert float(control.get_attribute("min")) == real["minimum"], name
        elif name == "prompt":
            assert tag == "textarea"
    # the two-pass fields are collapsed under "advanced"
    advanced = page.locator("details.advanced")
    assert not advanced.evaluate("d => d.open")
    for name in ("first_pass_num_inference_steps", "second_pass_skip_initial_steps"):
        assert advanced.locator(f"[name={name}]").count() == 1 and not page.locator(f"[name={name}]").is_visible()
    assert page.locator("button[type=submit]").is_visible()

    # LoRA rows: add two, remove the first; the second takes its place (names follow the server's error locations)
    add = page.get_by_role("button", name=re.compile("Add LoRA"))
    add.click()
    page.fill("[name='loras.0.path']", "owner/first")
    add.click()
    page.fill("[name='loras.1.path']", "owner/second")
    page.fill("[name='loras.1.scale']", "0.5")
    page.get_by_role("button", name="Remove LoRA 1").click()
    assert page.locator("[name='loras.0.path']").input_value() == "owner/second"
    assert page.locator("[name='loras.1.path']").count() == 0
    shoot(page, "form-defaults")
    tab.check_console()


def test_image_by_drop_paste_or_url_with_crop_preview(tiny_server, open_tab, shoot):
    tab = open_tab(tiny_server.base_url + "/")
    page = tab.page
    url_field = page.locator("[name=image_url]")
    caption = page.locator(".crop-caption")
    # a 300x600 picture dropped on the drop zone: uploaded, and at 720p auto it is 9:16, 720x1280
    page.evaluate("""async () => {
        const canvas = Object.assign(document.createElement("canvas"), { width: 300, height: 600 });
        canvas.getContext("2d").fillRect(0, 0, 300, 600);
        const blob = await new Promise((r) => canvas.toBlob(r, "image/png"));
        const data = new DataTransfer();
        data.items.add(new File([blob], "tall.png", { type: "image/png" }));
        const drop = new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true });
        document.querySelector(".dropzone").dispatchEvent(drop);
    }""")
    page.wait_for_function("() => document.querySelector('[name=image_url]').value.endsWith('/tall.png')")
    page.wait_for_selector(".crop-caption:has-text('720×1280')")
    assert "300×533 of this 300×600 image" in caption.inner_text()
    dropped = url_field.input_value()
    assert httpx.get(dropped).headers["content-type"] == "image/png"

    # pasted anywhere on the page (Ctrl+V of an image): uploaded too, and the crop follows aspect_ratio
    page.evaluate("""async () => {
        const canvas = Object.assign(document.createElement("canvas"), { width: 400, height: 400 });
        canvas.getContext("2d").fillRect(0, 0, 400, 400);
        const blob = await new Promise((r) => canvas.toBlob(r, "image/png"));
        const data = new DataTransfer();
        data.items.add(new File([blob], "square.png", { type: "image/png" }));
        const paste = new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true });
        document.body.dispatchEvent(paste);
    }""")
    page.wait_for_function("() => document.querySelector('[name=image_url]').value.endsWith('/square.png')")
    page.wait_for_selector(".crop-caption:has-text('720×720')")
    page.select_option("[name=aspect_ratio]", "16:9")
    assert "Output 1280×720 (16:9)" in caption.inner_text() and "400×225 of this 400×400" in caption.inner_text()
    # explicit width and height win over resolution and aspect ratio
    page.click("details.advanced summary")
    page.fill("[name=width]", "200")
    page.fill("[name=height]", "400")
    assert "Output 200×400 (width × height)" in caption.inner_text()

    # or a URL typed in: previewed from there
    url_field.fill(dropped)
    url_field.press("Tab")
    page.wait_for_selector(".crop-caption:has-text('of this 300×600 image')")
    shoot(page, "image-by-url")
    tab.check_console()


def test_generate_watch_edit_rerun_and_cancel(tiny_server, open_tab, shoot, scene_png):
    tab = open_tab(tiny_server.base_url + "/", permissions=["clipboard-read", "clipboard-write"])
    page = tab.page
    prompt = "a quiet valley at sunrise, slow pan"
    page.get_by_role("textbox", name="Prompt", exact=True).fill(prompt)
    page.set_input_files("input[type=file]", str(scene_png))
    # uploaded through the storage routes: the field now holds this server's file URL
    page.wait_for_function("() => document.querySelector('[name=image_url]').value.includes('/files/')")
    image_url = page.locator("[name=image_url]").input_value()
    assert httpx.get(image_url).content == scene_png.read_bytes()
    # the crop preview: a 3:2 picture at 480p, aspect_ratio auto: 848x480, from 480x271 of it (848:480 is not 16:9)
    page.select_option("[name=resolution]", "480p")
    caption = page.locator(".crop-caption")
    assert "848×480" in caption.inner_text() and "480×271" in caption.inner_text()
    page.fill("[name=num_frames]", "9")
    page.click("details.advanced summary")
    for name, value in SHORT_RUN.items():
        page.fill(f"[name={name}]", value)
    page.click("button[type=submit]")

    # live status: a progress bar per pass with step counts, the logs, the elapsed time
    page.wait_for_selector(".pass[data-pass='pass 1'] progress", timeout=GENERATION_TIMEOUT_MS)
    assert re.fullmatch(r"\d/2 steps", page.locator(".pass[data-pass='pass 1'] .steps").inner_text())
    page.wait_for_selector(".logs li:has-text('848x480, 9 frames')")
    shoot(page, "progress")
    page.wait_for_function("() => JSON.parse(localStorage.getItem('ltxserve.history.v1') || '[]').length === 1")
    first_id = history(page)[0]["id"]
    wait_playing_video(page, first_id, 848, 480)
    page.evaluate("scrollTo(0, 0)")
    shoot(page, "playground", full_page=False)  # the README's picture (docs/playground.png)
    assert page.locator(".state").inner_text().startswith("Done")
    assert page.locator(".pass[data-pass='pass 2'] .steps").inner_text() == "1/1 steps"
    assert float(page.locator(".elapsed").inner_text().split()[0]) > 0

    # what the page says matches what the server returned
    [entry] = history(page)
    assert entry["state"] == "done"
    result = httpx.get(f"{tiny_server.base_url}/queue/{APP}/requests/{entry['id']}").json()
    assert page.locator("dd[data-value=seed]").inner_text() == str(result["seed"])
    assert page.locator("dd[data-value=prompt]").inner_text() == prompt == result["prompt"]
    download = page.locator("#result a.download")
    assert download.get_attribute("href") == result["video"]["url"]
    assert page.locator("#result video").get_attribute("src") == result["video"]["url"]
    sent = {"prompt": prompt, "image_url": image_url, "resolution": "480p", "num_frames": 9,
            **{k: int(v) for k, v in SHORT_RUN.items()}}
    assert entry["input"] == sent

    # copy as code: the same request for curl, fal-client and @fal-ai/client
    page.click("details.code summary")
    curl = page.locator(".snippet[data-lang=curl] pre").inner_text()
    words = shlex.split(curl.split("\n# ")[0].replace("\\\n", " "))
    assert words[:5] == ["curl", "-sS", "-X", "POST", f"{tiny_server.base_url}/queue/{ENDPOINT}"]
    assert json.loads(words[words.index("-d") + 1]) == sent
    python = page.locator(".snippet[data-lang=python] pre").inner_text()
    compile(python, "snippet.py", "exec")
    assert f'"{ENDPOINT}"' in python and "fal_client.subscribe(" in python and '"num_frames": 9' in python
    js = page.locator(".snippet[data-lang=js] pre").inner_text()
    assert f"{tiny_server.base_url}/api/fal/proxy" in js and '"num_frames": 9' in js
    page.get_by_role("button", name="Copy curl").click()
    assert page.evaluate("navigator.clipboard.readText()") == curl
    shoot(page, "result")

    # edit and resubmit: the form takes the entry back; a change makes a long run
    page.locator(".history-entry").first.locator("button.edit").click()
    assert page.get_by_role("textbox", name="Prompt", exact=True).input_value() == prompt
    assert page.locator("[name=image_url]").input_value() == image_url
    assert page.locator("[name=num_frames]").input_value() == "9"
    assert page.locator("[name=resolution]").input_value() == "480p"
    assert page.locator("[name=first_pass_num_inference_steps]").input_value() == "3"
    page.fill("[name=first_pass_num_inference_steps]", "60")
    page.fill("[name=second_pass_num_inference_steps]", "60")
    page.click("button[type=submit]")
    page.wait_for_function("() => JSON.parse(localStorage.getItem('ltxserve.history.v1')).length === 2")
    long_run = history(page)[0]
    assert long_run["input"] == {**sent, "first_pass_num_inference_steps": 60, "second_pass_num_inference_steps": 60}
    page.wait_for_selector(".pass[data-pass='pass 1'] progress", timeout=GENERATION_TIMEOUT_MS)

    # re-run from the history while it runs: a new request with the first one's input, which waits in the queue
    # (the server has one worker) showing its position, and is cancelled there
    page.locator(f".history-entry[data-id='{entry['id']}'] button.rerun").click()
    page.wait_for_function("() => JSON.parse(localStorage.getItem('ltxserve.history.v1')).length === 3")
    rerun = history(page)[0]
    assert rerun["id"] not in (entry["id"], long_run["id"]) and rerun["input"] == entry["input"]
    page.wait_for_selector(".state:has-text('In queue: next to run')")
    shoot(page, "queued")
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_selector(".state[data-state=CANCELLED]")
    page.wait_for_selector(f".history-entry[data-id='{rerun['id']}'][data-state=cancelled]")

    # back to the running one through the history, and cancelled while it runs
    page.locator(f".history-entry[data-id='{long_run['id']}'] button.show").click()
    page.wait_for_selector(f".request-id code:text-is('{long_run['id']}')")
    page.wait_for_selector(".state[data-state=IN_PROGRESS]")
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_selector(".state[data-state=CANCELLED]", timeout=60_000)
    for request_id in (rerun["id"], long_run["id"]):
        status = httpx.get(f"{tiny_server.base_url}/queue/{APP}/requests/{request_id}/status").json()
        assert status["status"] == "COMPLETED" and status["error_type"] == "request_cancelled"
    steps = page.locator(".pass[data-pass='pass 1'] .steps").inner_text()
    assert int(steps.split("/")[0]) < 57
    page.wait_for_selector(f".history-entry[data-id='{long_run['id']}'][data-state=cancelled]")
    assert [e["state"] for e in history(page)] == ["cancelled", "cancelled", "done"]
    shoot(page, "cancelled")
    # and the finished one's result again, from the history
    page.locator(f".history-entry[data-id='{entry['id']}'] button.show").click()
    wait_playing_video(page, entry["id"], 848, 480)
    tab.check_console()


def test_errors_are_shown_next_to_their_fields(tiny_server, open_tab, shoot):
    tab = open_tab(tiny_server.base_url + "/")
    page = tab.page
    page.get_by_role("textbox", name="Prompt", exact=True).fill("a red ball")
    page.fill("[name=image_url]", "ftp://example.com/ball.png")
    # keyboard: Ctrl+Enter in the prompt submits
    page.get_by_role("textbox", name="Prompt", exact=True).press("Control+Enter")
    error = page.locator("#e-image_url")
    error.wait_for()
    assert "http(s) URL or a data: URI" in error.inner_text()
    assert page.locator("[name=image_url]").get_attribute("aria-invalid") == "true"

    # a check across fields (loc ["body"]) lands next to the field its message names, advanced opened for it
    page.fill("[name=image_url]", png_data_uri(64, 48))
    page.click("details.advanced summary")
    page.fill("[name=first_pass_num_inference_steps]", "3")
    page.fill("[name=first_pass_skip_final_steps]", "5")
    page.click("details.advanced summary")  # closed again: the error must reopen it
    page.click("button[type=submit]")
    skip_error = page.locator("#e-first_pass_skip_final_steps")
    skip_error.wait_for()
    assert "must be less than first_pass_num_inference_steps" in skip_error.inner_text()
    assert page.locator("details.advanced").evaluate("d => d.open")
    assert error.is_hidden()

    # an input refused while running (the job completes with a validation error) comes back to its field too
    page.fill("[name=first_pass_skip_final_steps]", "1")
    page.fill("[name=image_url]", "data:image/png;base64,bm90IGFuIGltYWdl")  # passes the schema, not an image
    page.click("button[type=submit]")
    image_error = page.locator("#e-image_url")
    image_error.wait_for(timeout=GENERATION_TIMEOUT_MS)
    assert "image" in image_error.inner_text().lower()
    assert page.locator(".state[data-state=ERROR]").is_visible()
    assert skip_error.is_hidden()
    shoot(page, "field-errors")
    tab.check_console(allowed_statuses=(422,))


def test_narrow_screen_and_keyboard(tiny_server, open_tab, shoot):
    tab = open_tab(tiny_server.base_url + "/", viewport=(390, 844))
    page = tab.page
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 390
    request_box = page.locator("section.request").bounding_box()
    output_box = page.locator("section.output").bounding_box()
    assert request_box["width"] <= 390 and output_box["y"] >= request_box["y"] + request_box["height"]
    # a LoRA row added and removed from the keyboard alone, focus following
    page.get_by_role("button", name=re.compile("Add LoRA")).focus()
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.name") == "loras.0.path"
    page.keyboard.type("owner/style")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.name") == "loras.0.weight_name"
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Remove"
    page.keyboard.press("Enter")
    assert page.locator("[name='loras.0.path']").count() == 0
    assert "Add LoRA" in page.evaluate("document.activeElement.textContent")
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 390
    shoot(page, "narrow")
    tab.check_console()


def test_api_key_asked_for_on_401_and_sent(live_server_factory, open_tab, shoot, scene_png):
    server = live_server_factory(endpoints=TEST_ENDPOINTS, extra_args=["--api-key", "sesame"])
    # another endpoint: the form is whatever its schema says
    tab = open_tab(server.base_url + "/?endpoint=test/echo-image")
    page = tab.page
    assert page.locator("#fields [name=repeat]").get_attribute("max") == "10"
    page.fill("[name=text]", "hello")
    page.set_input_files("input[type=file]", str(scene_png))
    # the upload meets a 401: the key field opens, says why, and takes the focus
    key_error = page.locator("#api-key-error")
    key_error.wait_for()
    assert "requires an API key" in key_error.inner_text()
    assert page.evaluate("document.activeElement.id") == "api-key"
    shoot(page, "api-key-required")
    page.keyboard.type("wrong")
    page.click("button[type=submit]")
    page.wait_for_selector("#api-key-error:has-text('refused')")
    assert "Image upload failed" in page.locator("#e-image_url").inner_text()
    page.fill("#api-key", "sesame")
    page.click("button[type=submit]")
    page.wait_for_selector("#result img", timeout=60_000)
    assert page.locator("dd[data-value=text]").inner_text() == "hello"
    assert page.evaluate("sessionStorage.getItem('ltxserve.apiKey')") == "sesame"
    page.click("details.code summary")
    assert 'Authorization: Key $FAL_KEY' in page.locator(".snippet[data-lang=curl] pre").inner_text()
    shoot(page, "api-key-result")
    # the key stays for this tab (a reload keeps it) and is what the server saw
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#api-key").input_value() == "sesame"
    tab.check_console(allowed_statuses=(401,))


@pytest.fixture(autouse=True)
def _show_screenshots_folder(artifacts, request):
    yield
    request.node.user_properties.append(("screenshots", str(artifacts)))


def test_a_schema_behind_the_key_is_read_once_the_key_is_given(tiny_server, open_tab):
    """Should the server guard /openapi.json too, the page asks for the key and builds the form with it."""

    def guard(route):
        if route.request.headers.get("authorization") == "Key sesame":
            route.continue_()
        else:
            route.fulfill(status=401, json={"detail": "Missing or malformed Authorization header"})

    tab = open_tab(tiny_server.base_url + "/", before=lambda page: page.route("**/openapi.json", guard), ready=False)
    page = tab.page
    page.wait_for_selector("#api-key-error:has-text('requires an API key')")
    assert page.locator("[name=prompt]").count() == 0
    page.fill("#api-key", "sesame")
    page.press("#api-key", "Enter")
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("textarea[name=prompt]").is_visible()
    tab.check_console(allowed_statuses=(401,))

