"""The page at `/` in Chromium: upload, input check, result, explanation, operating points, refusals and errors.

Every upload that expects a prediction sends a committed real X-ray (tests/data/samples), possibly turned or
re-encoded: the service refuses what does not look like one (issue 9).
"""

from __future__ import annotations

import base64
import io
import json
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from app.api.errors import error_body
from pneumonia.bundle import METADATA_FILENAME
from pneumonia.errors import ErrorCode
from pneumonia.explain import colour_bar_width
from pneumonia.labels import label_for
from tests.media import dicom, gray_of
from tests.support import REPO_ROOT

SAMPLES = REPO_ROOT / "tests" / "data" / "samples"
PNEUMONIA_SAMPLE = sorted((SAMPLES / "PNEUMONIA").glob("*.jpeg"))[0]
NORMAL_SAMPLE = sorted((SAMPLES / "NORMAL").glob("*.jpeg"))[0]


def upload(page, path: str, payload: dict):
    """Choose a file in the page's file input and return the service's answer to the upload."""
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.split("?")[0].endswith(path)) as answer:
        page.set_input_files("#file-input", files=[payload])
    return answer.value


def file_payload(path) -> dict:
    return {"name": path.name, "mimeType": "image/jpeg", "buffer": path.read_bytes()}


def jpeg_payload(image: Image.Image, name: str) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return {"name": name, "mimeType": "image/jpeg", "buffer": buffer.getvalue()}


def with_query(extra: str):
    """A route handler that sends the page's upload to the real service with `extra` added to its query: how
    a test asks for a per-request option (`input_check=`, `method=`) that the page itself never sets."""

    def handler(route) -> None:
        url = route.request.url
        route.continue_(url=f"{url}{'&' if '?' in url else '?'}{extra}")

    return handler


def score_print(check: dict) -> str:
    """How the page prints the detector's score against its threshold."""
    return f"Out-of-distribution score {check['ood_score']:.2f}, threshold {check['ood_threshold']:.2f}"


def text_image_png() -> bytes:
    """A screenshot-like image of text: certainly not a chest X-ray."""
    image = Image.new("RGB", (640, 480), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=28)
    for row, line in enumerate(["Quarterly report", "Revenue grew 12%", "Meeting notes: Tuesday", "TODO: slides"]):
        draw.text((40, 60 + 80 * row), line, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def open_page(page) -> None:
    """Load `/` and wait until GET /model has filled the operating points (in the result, still hidden)."""
    page.goto("/")
    page.wait_for_selector("#operating-point:not([disabled])", state="attached")


def wait_for_result(page) -> None:
    page.wait_for_selector("#result:not([hidden])")
    page.wait_for_function("() => document.getElementById('overlay').complete")


def image_loaded(page, selector: str) -> bool:
    return page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0")


# how the page names the service's methods (app/static/app.js METHOD_NAMES), for the ones these tests meet
METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam_stride8": "Grad-CAM (stride 8)", "hirescam": "HiResCAM"}


def test_the_page_shows_the_disclaimer_the_model_and_its_operating_points(page, service):
    response = page.goto("/")
    for _ in range(10):  # the file picker is reachable from the keyboard, after the header's links
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "file-input":
            break
    assert page.evaluate("() => document.activeElement.id") == "file-input"
    assert response.status == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    disclaimer = page.locator("#disclaimer")
    assert disclaimer.is_visible() and "Research use only" in disclaimer.inner_text()
    assert disclaimer.locator("button").count() == 0  # nothing to dismiss it with
    page.wait_for_selector("#model-summary table")
    summary = page.inner_text("#model-summary")
    model = page.request.get("/model").json()
    assert model["name"] in summary and model["version"] in summary
    roc = model["validation"]["metrics"]["roc_auc"]
    assert f"{roc['value']:.3f}" in summary and f"{roc['ci_low']:.3f} – {roc['ci_high']:.3f}" in summary
    assert model["limitations"][0] in summary
    assert f"out-of-distribution detector (threshold {model['input_check']['threshold']:.2f}" in summary
    options = page.eval_on_selector_all("#operating-point option", "os => os.map(o => [o.value, o.selected])")
    assert [name for name, _ in options] == [p["name"] for p in model["operating_points"]]
    assert [name for name, selected in options if selected] == [model["default_operating_point"]]
    assert page.request.get(page.get_attribute("#model-card-link", "href")).status == 200


def test_an_xray_shows_label_probability_heatmap_and_disclaimer(page, traffic):
    open_page(page)
    answer = upload(page, "/explain", file_payload(PNEUMONIA_SAMPLE))
    assert answer.status == 200, answer.text()
    body = answer.json()
    wait_for_result(page)
    assert page.inner_text("#label") == body["label"]
    assert page.inner_text("#probability") == f"{body['probability']:.3f}"
    assert page.inner_text("#threshold-text") == f"threshold {body['threshold']:.3f}"
    assert page.get_attribute("#overlay", "src").startswith("data:image/png;base64,")
    assert image_loaded(page, "#overlay") and image_loaded(page, "#original")
    assert page.get_attribute("#overlay", "alt") and page.get_attribute("#original", "alt")
    assert page.is_visible("#disclaimer") and page.is_visible(".legend")
    assert "not a localisation of disease" in page.inner_text(".legend")
    # the map names its method and the class it explains (the label at the operating point of the upload)
    assert page.inner_text("#overlay-caption").startswith(
        f"{METHOD_LABELS[body['method']]} overlay — explains {body['explained_class']}"
    )
    check = body["input_check"]
    assert check["accepted"] and check["detector"] == "available" and check["reasons"] == []
    assert page.is_visible("#input-check") and page.get_attribute("#input-check", "class") == "input-check accepted"
    verdict = page.inner_text("#input-check")
    assert verdict.startswith("Input check: accepted") and score_print(check) in verdict
    for warning in body["warnings"]:
        assert warning in page.inner_text("#warnings")
    assert not page.is_visible("#turned-note")
    # the opacity slider works from the keyboard
    page.focus("#opacity")
    page.keyboard.press("ArrowLeft")
    assert page.eval_on_selector("#overlay", "img => img.style.opacity") == "0.95"
    assert page.inner_text("#opacity-value") == "95%"
    assert traffic.posts_to("/explain") == 1


def test_switching_the_operating_point_relabels_without_uploading_again(page, traffic):
    open_page(page)
    # this time the file arrives by drag and drop
    data = base64.b64encode(NORMAL_SAMPLE.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
            return transfer;
        }""",
        [NORMAL_SAMPLE.name, data],
    )
    with page.expect_response(lambda r: "/explain" in r.url) as answer:
        page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    probability = answer.value.json()["probability"]
    wait_for_result(page)
    points = page.request.get("/model").json()["operating_points"]
    # from the keyboard: the next operating point
    before = page.input_value("#operating-point")
    page.focus("#operating-point")
    page.keyboard.press("ArrowDown")
    chosen = next(p for p in points if p["name"] == page.input_value("#operating-point"))
    assert chosen["name"] != before and page.inner_text("#threshold-text") == f"threshold {chosen['threshold']:.3f}"
    for point in sorted(points, key=lambda p: p["threshold"]):
        page.select_option("#operating-point", point["name"])
        assert page.inner_text("#threshold-text") == f"threshold {point['threshold']:.3f}"
        assert page.inner_text("#label") == label_for(probability, point["threshold"])
        assert point["name"] in page.inner_text("#label-note")
        left = page.eval_on_selector("#threshold-marker", "m => parseFloat(m.style.left)")
        assert left == pytest.approx(point["threshold"] * 100, abs=0.05)
    assert traffic.posts_to("/explain") == 1 and traffic.posts_to("/predict") == 0


def box_of(page, selector: str) -> dict:
    return page.eval_on_selector(selector, "e => { const r = e.getBoundingClientRect(); "
                                 "return {x: r.x, y: r.y, width: r.width, height: r.height}; }")  # fmt: skip


def overlaps(a: dict, b: dict) -> bool:
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])  # fmt: skip


# the opacity an element is drawn with: its own times every ancestor's
DRAWN_OPACITY = """e => { let o = 1; for (let n = e; n; n = n.parentElement) o *= Number(getComputedStyle(n).opacity);
                          return o; }"""


def test_the_colour_bar_stands_beside_the_image_and_does_not_fade_with_the_map(page):
    """Issue 20: the colour bar was drawn inside the overlay, over the lateral chest wall, and faded with the
    opacity slider. The service's PNG now holds it in a strip beside the image; the page crops that strip away
    and shows one colour bar of its own, beside the image, outside what the slider fades."""
    open_page(page)
    answer = upload(page, "/explain", file_payload(PNEUMONIA_SAMPLE))
    assert answer.status == 200, answer.text()
    body = answer.json()
    wait_for_result(page)
    width, height = body["input"]["width"], body["input"]["height"]
    png = Image.open(io.BytesIO(base64.b64decode(body["heatmap"])))
    assert png.size == (width + colour_bar_width(height), height)  # the strip is beside the image in the PNG too
    bar, overlay, base = box_of(page, "#colour-bar"), box_of(page, "#overlay"), box_of(page, "#overlay-base")
    assert page.is_visible("#colour-bar") and bar["height"] > 0.5 * overlay["height"]
    assert not overlaps(bar, overlay) and not overlaps(bar, base) and bar["x"] >= overlay["x"] + overlay["width"]
    # the page shows the PNG's image only, exactly over the upload: the PNG's own colour bar stays out of view
    assert page.eval_on_selector("#overlay", "img => getComputedStyle(img).objectFit") == "cover"
    assert page.eval_on_selector("#overlay", "img => img.style.aspectRatio") == f"{width} / {height}"
    assert all(overlay[k] == pytest.approx(base[k], abs=1) for k in ("x", "y", "width", "height"))
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#overlay").screenshot())).convert("RGB"))
    right_edge = shot[: shot.shape[0] // 4, -3:]  # where the PNG's strip is black (its bar is in the middle half)
    assert right_edge.max(axis=2).mean() > 30, "the PNG's colour bar strip is shown on the page"
    # one colour scale on the page: the one beside the image
    assert page.locator("#colour-bar").count() == 1 and page.locator(".legend-scale").count() == 0
    for percent in (40, 0):
        page.eval_on_selector("#opacity", f"r => {{ r.value = '{percent}'; r.dispatchEvent(new Event('input')); }}")
        assert page.eval_on_selector("#overlay", DRAWN_OPACITY) == pytest.approx(percent / 100)
        assert page.eval_on_selector("#colour-bar", DRAWN_OPACITY) == 1
        assert page.is_visible("#colour-bar")


@pytest.fixture(scope="module")
def flipping_xray(service):
    """A real X-ray whose label differs between the default operating point and another one: a NORMAL and a
    PNEUMONIA sample blended, the blend found by bisection on the service's own probability (the committed
    samples are all far from every threshold). Returns (payload, probability, default point, other point)."""
    model = httpx.get(f"{service.base_url}/model", timeout=60).json()
    points = {p["name"]: p for p in model["operating_points"]}
    default = points[model["default_operating_point"]]
    other = max(points.values(), key=lambda p: abs(p["threshold"] - default["threshold"]))
    low, high = sorted((default["threshold"], other["threshold"]))
    normal = Image.open(NORMAL_SAMPLE).convert("L")
    pneumonia = Image.open(PNEUMONIA_SAMPLE).convert("L").resize(normal.size)

    def probability(payload: dict) -> float:
        files = {"file": (payload["name"], payload["buffer"], payload["mimeType"])}
        answer = httpx.post(f"{service.base_url}/predict", files=files, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()["probability"]

    weights = [0.0, 1.0]  # blend weight of the PNEUMONIA sample: its probability below `low`, above `high`
    assert probability(jpeg_payload(normal, "n.jpeg")) <= low < high <= probability(jpeg_payload(pneumonia, "p.jpeg"))
    for _ in range(12):
        weight = sum(weights) / 2
        payload = jpeg_payload(Image.blend(normal, pneumonia, weight), "blend.jpeg")
        p = probability(payload)
        if low < p < high:
            return payload, p, default, other
        weights[p >= high] = weight
    pytest.fail(f"no blend between thresholds {low} and {high}")


def explain_gets(traffic) -> int:
    return sum(1 for url in traffic.urls if url.startswith("GET ") and "/explain/" in url)


def test_a_flipped_label_gets_the_map_of_the_new_label(page, traffic, flipping_xray):
    """Issue 20: after switching the operating point the label flipped while the overlay still said 'explains
    NORMAL'. The page now asks the service for the map of the new label (GET /explain/{id} at the chosen
    operating point, no second upload) and shows it; switching back shows the first map again, unasked."""
    payload, probability, default, other = flipping_xray
    open_page(page)
    answer = upload(page, "/explain", payload)
    assert answer.status == 200, answer.text()
    body = answer.json()
    first, flipped = label_for(probability, default["threshold"]), label_for(probability, other["threshold"])
    assert first != flipped and body["label"] == body["explained_class"] == first
    wait_for_result(page)
    assert f"explains {first}" in page.inner_text("#overlay-caption") and not page.is_visible("#map-note")
    with page.expect_response(lambda r: r.request.method == "GET" and "/explain/" in r.url) as again:
        page.select_option("#operating-point", other["name"])
    assert again.value.status == 200, again.value.text()
    explained = again.value.json()
    assert body["prediction_id"] in again.value.url and f"operating_point={other['name']}" in again.value.url
    assert explained["explained_class"] == flipped and explained["method"] == body["method"]
    page.wait_for_function(
        f"() => document.getElementById('overlay-caption').textContent.includes('explains {flipped}')"
    )
    assert page.inner_text("#label") == flipped
    assert page.get_attribute("#overlay", "src") == f"data:image/png;base64,{explained['heatmap']}"
    assert not page.is_visible("#map-note")
    # back to the first operating point: the first map again, from memory
    page.select_option("#operating-point", default["name"])
    assert page.inner_text("#label") == first and f"explains {first}" in page.inner_text("#overlay-caption")
    assert page.get_attribute("#overlay", "src") == f"data:image/png;base64,{body['heatmap']}"
    page.select_option("#operating-point", other["name"])
    assert f"explains {flipped}" in page.inner_text("#overlay-caption")
    assert explain_gets(traffic) == 1 and traffic.posts_to("/explain") == 1


def test_when_the_new_labels_map_cannot_be_had_the_page_says_which_label_the_map_explains(page, flipping_xray):
    """The service keeps the image for GET /explain/{id} only for a while: once it has forgotten it, the page
    keeps the map it has and says, next to it, that it explains the other label."""
    payload, probability, default, other = flipping_xray
    body = error_body(ErrorCode.PREDICTION_NOT_FOUND, "No recent prediction with this id: it is unknown or expired.")
    page.route(lambda url: "/explain/" in url, lambda route: route.fulfill(status=404, json=body))
    open_page(page)
    assert upload(page, "/explain", payload).status == 200
    wait_for_result(page)
    first, flipped = label_for(probability, default["threshold"]), label_for(probability, other["threshold"])
    page.select_option("#operating-point", other["name"])
    assert page.inner_text("#label") == flipped
    page.wait_for_selector("#map-note:not([hidden])")
    page.wait_for_function("() => document.getElementById('map-note').textContent.includes('could not be fetched')")
    note = page.inner_text("#map-note")
    assert f"This map explains {first}, the label at operating point {default['name']}, not {flipped}" in note
    assert "Upload it again" in note
    assert f"explains {first}" in page.inner_text("#overlay-caption")
    # the note stands next to the image, in its figure
    assert page.eval_on_selector("#map-note", "n => n.closest('figure').id") == "overlay-figure"
    page.select_option("#operating-point", default["name"])
    assert not page.is_visible("#map-note")


def test_a_dicom_shows_the_overlay_alone_with_a_note(page):
    page.goto("/")
    pixels = (gray_of(PNEUMONIA_SAMPLE).astype("uint16") * 16).clip(0, 4095)
    payload = {
        "name": "synthetic.dcm",
        "mimeType": "application/dicom",
        "buffer": dicom(pixels, "MONOCHROME2", slope=1.0, intercept=0.0, center=2048.0, width=4096.0),
    }
    answer = upload(page, "/explain", payload)
    assert answer.status == 200, answer.text()
    wait_for_result(page)
    assert page.is_visible("#dicom-note") and not page.is_visible("#original-figure")
    assert image_loaded(page, "#overlay") and page.is_visible("#overlay")
    assert page.inner_text("#label") == answer.json()["label"]
    # alone, the overlay still shows the image only, its colour bar's strip cropped away, the page's bar beside it
    image = answer.json()["input"]
    shown = box_of(page, "#overlay")
    assert shown["width"] / shown["height"] == pytest.approx(image["width"] / image["height"], rel=0.01)
    assert page.is_visible("#colour-bar") and not overlaps(box_of(page, "#colour-bar"), shown)


def test_a_non_xray_is_refused_and_the_page_says_why(page):
    page.goto("/")
    answer = upload(page, "/explain", {"name": "report.png", "mimeType": "image/png", "buffer": text_image_png()})
    body = answer.json()
    assert answer.status == 422 and body["error"]["code"] == "not_a_chest_xray", body
    check = body["input_check"]
    assert check["accepted"] is False and check["reasons"], check
    page.wait_for_selector("#error:not([hidden])")
    refusal = page.inner_text("#error")
    assert "Refused: this does not look like a frontal chest X-ray" in refusal
    shown = page.eval_on_selector_all("#error ul.reasons li", "items => items.map(i => i.textContent)")
    assert shown == check["reasons"]  # every reason, each once, and nowhere else in the box
    assert all(refusal.count(reason) == 1 for reason in check["reasons"]), refusal
    assert score_print(check) in refusal
    assert not page.is_visible("#result") and "label" not in body
    assert page.is_enabled("#file-input")


def test_an_adult_dicom_is_refused_in_words_a_person_understands(page):
    """A pediatric sample wrapped as DICOM with PatientAge 045Y: the service refuses it as outside the
    population, and the page says what that means instead of showing a label."""
    stored = 500 + gray_of(NORMAL_SAMPLE).astype("int64") * 12
    data = dicom(stored, "MONOCHROME2", slope=1.0, intercept=0.0, center=2000.0, width=3200.0, PatientAge="045Y")
    open_page(page)
    answer = upload(page, "/explain", {"name": "adult.dcm", "mimeType": "application/dicom", "buffer": data})
    body = answer.json()
    assert answer.status == 422 and body["error"]["code"] == "outside_population", body
    page.wait_for_selector("#error:not([hidden])")
    refusal = page.inner_text("#error")
    assert "Refused: this film is outside the model's population" in refusal
    assert "The model was trained on children aged 1–5 at one hospital; its answer would mean nothing here." in refusal
    assert any(
        "45 years" in item
        for item in page.eval_on_selector_all("#error ul.reasons li", "items => items.map(i => i.textContent)")
    )
    assert not page.is_visible("#result") and "label" not in body
    summary = page.inner_text("#model-summary")
    assert "children aged 1–5 at one hospital" in summary


def test_a_rotated_xray_is_turned_back_and_the_page_says_so(page):
    """The service turns an X-ray sent on its side back upright; the page says so, and shows the overlay (drawn
    over the image as the model read it) beside the upload instead of on top of it, where it would not line up."""
    open_page(page)
    answer = upload(
        page, "/explain", jpeg_payload(Image.open(PNEUMONIA_SAMPLE).rotate(90, expand=True), "sideways.jpeg")
    )
    assert answer.status == 200, answer.text()
    body = answer.json()
    check = body["input_check"]
    assert check["accepted"] and check["rotated_back_degrees"] and any("rotated" in r for r in check["reasons"]), check
    wait_for_result(page)
    verdict = page.inner_text("#input-check")
    assert page.get_attribute("#input-check", "class") == "input-check noted"
    assert "accepted after turning the image back" in verdict and "rotated back" in verdict
    for reason in check["reasons"]:
        assert reason in verdict
    # the service echoes the reason among its warnings; the page shows it once, in the verdict
    assert any("rotated" in w for w in body["warnings"]) and "rotated" not in page.inner_text("#warnings")
    assert page.is_visible("#turned-note") and not page.is_visible("#overlay-controls")
    assert page.eval_on_selector("#overlay-figure .stack", "s => !s.classList.contains('layered')")
    assert image_loaded(page, "#overlay") and image_loaded(page, "#original")
    assert page.inner_text("#label") == body["label"]


def test_under_the_warn_policy_a_refused_image_is_answered_with_the_verdict_on_top(page):
    """`warn` (per request here; a service started with PNEUMONIA_INPUT_CHECK=warn answers the same) gives a
    label for an image the check refuses: the page must say, above the label, that it is not meaningful."""
    page.route("**/explain*", with_query("input_check=warn"))
    page.goto("/")
    answer = upload(page, "/explain", {"name": "report.png", "mimeType": "image/png", "buffer": text_image_png()})
    assert answer.status == 200, answer.text()
    check = answer.json()["input_check"]
    assert check["accepted"] is False and check["policy"] == "warn"
    wait_for_result(page)
    verdict = page.inner_text("#input-check")
    assert page.get_attribute("#input-check", "class") == "input-check refused"
    assert verdict.startswith("Input check: refused") and '"warn"' in verdict and score_print(check) in verdict
    for reason in check["reasons"]:
        assert reason in verdict
    # the verdict comes before the label in the page, not below the fold
    assert page.eval_on_selector(
        "#input-check",
        "box => box.compareDocumentPosition(document.getElementById('label')) & Node.DOCUMENT_POSITION_FOLLOWING",
    )


def test_the_caption_names_the_method_the_service_used(page):
    """The page must not call every map Grad-CAM: asked for another method, the caption follows /explain's
    `method` (the page never asks for one itself, so the route adds ?method=)."""
    page.route("**/explain*", with_query("method=hirescam"))
    open_page(page)
    answer = upload(page, "/explain", file_payload(NORMAL_SAMPLE))
    assert answer.status == 200, answer.text()
    body = answer.json()
    assert body["method"] == "hirescam"
    wait_for_result(page)
    caption = page.inner_text("#overlay-caption")
    assert caption.startswith(f"HiResCAM overlay — explains {body['explained_class']}") and "Grad-CAM" not in caption
    assert "HiResCAM heatmap" in page.get_attribute("#overlay", "alt")


@pytest.mark.parametrize(
    ("name", "content", "shown"),
    [
        ("broken.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "The image could not be analysed"),
        ("notes.txt", b"hello, this is not an image", "This file type cannot be read"),
    ],
)
def test_a_bad_file_shows_the_services_message(page, name, content, shown):
    page.goto("/")
    answer = upload(page, "/explain", {"name": name, "mimeType": "application/octet-stream", "buffer": content})
    assert 400 <= answer.status < 500
    page.wait_for_selector("#error:not([hidden])")
    text = page.inner_text("#error")
    assert shown in text and answer.json()["error"]["message"] in text
    assert not page.is_visible("#result")
    assert page.is_enabled("#file-input")  # ready for the next file


def test_a_busy_service_says_try_again(page):
    """A 503 'busy' cannot be provoked on demand from a real service in a test, so this one answer is the
    service's own error body, served to the page in place of the service's."""
    body = error_body(ErrorCode.BUSY, "The service is busy (20 requests in progress or waiting); retry shortly.")
    page.route(
        "**/explain*",
        lambda route: route.fulfill(status=503, json=body, headers={"Retry-After": "1"}),
    )
    page.goto("/")
    upload(page, "/explain", file_payload(NORMAL_SAMPLE))
    page.wait_for_selector("#error:not([hidden])")
    assert "The service is busy — try again in 1 s" in page.inner_text("#error")


@pytest.fixture(scope="module")
def older_service(start_server, shipped_bundle, tmp_path_factory):
    """An older deployment: a schema-1 copy of the shipped bundle (no fitted input-check detector), served with
    explanations switched off. One server for the two tests below: each start costs seconds of CPU."""
    bundle = shutil.copytree(shipped_bundle, tmp_path_factory.mktemp("older") / "bundle")
    metadata = json.loads((bundle / METADATA_FILENAME).read_text())
    metadata["schema_version"] = 1
    del metadata["input_check"]
    (bundle / METADATA_FILENAME).write_text(json.dumps(metadata))
    (bundle / "input_check.npz").unlink()
    return start_server(bundle, PNEUMONIA_EXPLAIN_ENABLED="false", PNEUMONIA_INPUT_CHECK="refuse")


@pytest.fixture
def older_page(browser, older_service):
    context = browser.new_context(base_url=older_service.base_url)
    context.set_default_timeout(60_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"uncaught JavaScript errors: {errors}"


def test_without_explanations_the_page_falls_back_to_predict(older_page):
    """A service that cannot explain (here: explanations switched off) still answers with its prediction."""
    page = older_page
    page.goto("/")
    answer = upload(page, "/predict", file_payload(PNEUMONIA_SAMPLE))
    assert answer.status == 200
    page.wait_for_selector("#result:not([hidden])")
    assert page.inner_text("#label") == answer.json()["label"]
    assert page.is_visible("#no-explanation") and not page.is_visible("#overlay-figure")
    assert not page.is_visible(".legend")


def test_without_a_detector_the_page_says_only_basic_checks_ran(older_page):
    page = older_page
    page.goto("/")
    page.wait_for_selector("#model-summary table")
    assert "basic pixel checks only" in page.inner_text("#model-summary")
    answer = upload(page, "/predict", file_payload(NORMAL_SAMPLE))
    check = answer.json()["input_check"]
    assert check["detector"] == "unavailable" and check["ood_score"] is None and check["note"]
    page.wait_for_selector("#result:not([hidden])")
    verdict = page.inner_text("#input-check")
    assert page.get_attribute("#input-check", "class") == "input-check noted"
    assert "accepted by the basic checks only" in verdict and "detector is unavailable" in verdict
    assert check["note"] in verdict and "Out-of-distribution score" not in verdict
