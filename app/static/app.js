// The page at `/`: upload an X-ray, show the input check's verdict, the model's output and its saliency overlay.
// Plain JavaScript, no build step, no third-party code. It talks only to this service (same origin) and
// stores nothing in the browser: the uploaded file lives in memory and in an object URL that is revoked
// when the next file is chosen. When the service needs an API key (HTTP 401), the page asks for one in a small
// form and keeps it in memory only, for as long as the tab is open.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const METRIC_NAMES = {
    roc_auc: "ROC-AUC", pr_auc: "PR-AUC", sensitivity: "Sensitivity", specificity: "Specificity",
    accuracy: "Accuracy", precision: "Precision", f1: "F1", brier: "Brier score", ece: "Calibration error (ECE)",
  };
  const METHOD_NAMES = {
    gradcam: "Grad-CAM", gradcam_stride16: "Grad-CAM (stride 16)", gradcam_stride8: "Grad-CAM (stride 8)",
    gradcam_pp: "Grad-CAM++", hirescam: "HiResCAM", layercam: "LayerCAM", smoothgrad_gradcam: "SmoothGrad Grad-CAM",
    central_blob: "Central-blob baseline", random: "Random baseline",
  };
  // result: the upload's answer; maps: the maps fetched for it, by the class they explain; shown: the map on
  // screen; label: the label shown at the chosen operating point; pending: the labels whose map is being fetched;
  // mapError: why the map for the label shown could not be fetched.
  const state = {
    model: null, result: null, objectUrl: null, maps: {}, shown: null, label: null, pending: {}, mapError: null,
  };
  // The API key, once the service asked for one: in this closure only, never in localStorage,
  // sessionStorage, a cookie or a URL, so closing or reloading the page forgets it.
  let apiKey = null;
  let keyWanted = null; // the open question: every request that met a 401 waits for the same answer

  class ApiProblem extends Error {
    constructor(status, body, retryAfter) {
      super((body && body.error && body.error.message) || `HTTP ${status}`);
      this.status = status;
      this.body = body || {};
      this.code = (body && body.error && body.error.code) || "";
      this.retryAfter = retryAfter;
    }
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  const fmt = (x, digits = 3) => (typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "n/a");

  const withKey = (headers) => (apiKey ? { ...headers, Authorization: `Bearer ${apiKey}` } : { ...headers });

  async function request(url, options = {}) {
    for (;;) {
      const sentKey = apiKey;
      let response;
      try {
        response = await fetch(url, { cache: "no-store", ...options, headers: withKey(options.headers || {}) });
      } catch (err) {
        throw new ApiProblem(0, { error: { code: "network", message: "The service could not be reached." } });
      }
      let body = null;
      try {
        body = await response.json();
      } catch (err) {
        body = null;
      }
      if (response.status === 401 && (!body || !body.error || body.error.code === "unauthorized")) {
        // Ask (again, if the key sent was refused), unless another request already got a newer key.
        if (apiKey === sentKey) apiKey = await askForKey(Boolean(sentKey));
        continue; // the same request with the key (a FormData body can be sent again)
      }
      if (!response.ok) throw new ApiProblem(response.status, body, response.headers.get("Retry-After"));
      return body;
    }
  }

  // ---- the API key -------------------------------------------------------------------------------------

  // An in-page form rather than window.prompt: labelled, keyboard-friendly, and the key is masked.
  function askForKey(refused) {
    if (keyWanted) return keyWanted;
    keyWanted = new Promise((resolve) => {
      const form = $("auth-form");
      const input = $("auth-token");
      const say = (text) => {
        $("auth-error").textContent = text;
        $("auth-error").hidden = !text;
      };
      say(refused ? "That key was not accepted: check it, or ask the service's operator for a new one." : "");
      input.value = "";
      $("auth").hidden = false;
      input.focus();
      const submit = (event) => {
        event.preventDefault();
        const key = input.value.trim();
        if (!key) return say("Paste the API key first.");
        // HTTP headers carry visible ASCII only; keys made by `python -m app.keys` are letters, digits, - and _.
        if (!/^[\x21-\x7e]+$/.test(key)) return say("An API key has only letters, digits and punctuation, no spaces or accents.");
        form.removeEventListener("submit", submit);
        input.value = "";
        say("");
        $("auth").hidden = true;
        keyWanted = null;
        resolve(key);
      };
      form.addEventListener("submit", submit);
    });
    return keyWanted;
  }

  // The model card links need the key too: with one in use, fetch with it and show the answer as text.
  async function openWithKey(event) {
    if (!apiKey) return; // no key in use: an ordinary link
    event.preventDefault();
    const link = event.currentTarget;
    const shown = window.open("", "_blank"); // opened now, while the click still counts as the user's
    try {
      const response = await fetch(link.href, { cache: "no-store", headers: withKey({}) });
      const url = URL.createObjectURL(new Blob([await response.text()], { type: "text/plain;charset=utf-8" }));
      if (shown) shown.location.href = url;
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (err) {
      if (shown) shown.close();
    }
  }

  // ---- model summary and operating points -------------------------------------------------------------

  async function loadModel(attempt = 0) {
    try {
      state.model = await request("/model", { headers: { Accept: "application/json" } });
    } catch (err) {
      if (err.status === 503 && attempt < 10) {
        setTimeout(() => loadModel(attempt + 1), 2000);
        return;
      }
      $("model-summary").replaceChildren(el("p", `The model summary is unavailable: ${problemMessage(err)}`, "error-text"));
      $("operating-point").replaceChildren(el("option", "Unavailable"));
      return;
    }
    renderModel(state.model);
    fillOperatingPoints(state.model);
    if (state.result) relabel();
  }

  function fillOperatingPoints(model) {
    const select = $("operating-point");
    select.replaceChildren();
    for (const point of model.operating_points) {
      const isDefault = point.name === model.default_operating_point;
      const text = `${point.name}${isDefault ? " (default)" : ""} — threshold ${fmt(point.threshold)}, ` +
        `${model.site_calibration ? "site sample" : "validation"} sensitivity ${fmt(point.sensitivity)}, ` +
        `specificity ${fmt(point.specificity)}`;
      const option = el("option", text);
      option.value = point.name;
      option.selected = isDefault;
      select.append(option);
    }
    select.disabled = false;
  }

  function selectedPoint() {
    if (!state.model) return null;
    return state.model.operating_points.find((p) => p.name === $("operating-point").value) || null;
  }

  // Whose films the model knows (GET /model `population`): said in words next to the model's name.
  function populationSummary(population) {
    if (!population) return "not declared by this model bundle; the shipped model knows only films of young children";
    const who = population.age_max_years < 18 ? "children" : "patients";
    const sites = population.sites === 1 ? "one hospital" : `${population.sites} hospitals`;
    return `${who} aged ${population.age_min_years}–${population.age_max_years} at ${sites} ` +
      `(${population.modality}, ${population.views.join("/")}); films of other patients are refused`;
  }

  function renderModel(model) {
    if (model.disclaimer) $("disclaimer-text").textContent = model.disclaimer.replace(/^Research use only\.\s*/, "");
    const root = $("model-summary");
    const validation = model.validation || {};
    const facts = el("dl", undefined, "facts");
    const fact = (term, value) => facts.append(el("dt", term), el("dd", value));
    fact("Name", model.name);
    fact("Version", model.version);
    fact("Backbone", model.backbone);
    fact("Input", `${model.input_size.width}×${model.input_size.height} grayscale`);
    fact("Intended use", model.intended_use);
    // The method is named with each map (the service's default can change, and ?method= picks another).
    fact("Explanations", model.explain_available ? "available (each map names its method)" : "unavailable on this service");
    fact("Input check", inputCheckSummary(model.input_check));
    fact("Population", populationSummary(model.population));
    fact("Operating points", siteCalibrationSummary(model.site_calibration, model.default_operating_point));

    const table = el("table", undefined, "metrics");
    const source = model.site_calibration ? "Source model before site calibration, at its validation threshold: " : "";
    const caption = el("caption", `${source}Validation (${validation.split || "validation"} split, ` +
      `${validation.n_images ?? "?"} images, ${validation.n_positive ?? "?"} with pneumonia), threshold-dependent ` +
      `metrics at the default operating point (${model.default_operating_point}). Intervals: 95% bootstrap.`);
    const head = el("tr");
    head.append(el("th", "Metric"), el("th", "Value"), el("th", "95% interval"));
    for (const th of head.children) th.scope = "col";
    table.append(caption, el("thead"), el("tbody"));
    table.tHead.append(head);
    for (const [key, estimate] of Object.entries(validation.metrics || {})) {
      const row = el("tr");
      const name = el("th", METRIC_NAMES[key] || key);
      name.scope = "row";
      const interval = estimate.ci_low == null ? "—" : `${fmt(estimate.ci_low)} – ${fmt(estimate.ci_high)}`;
      row.append(name, el("td", fmt(estimate.value)), el("td", interval));
      table.tBodies[0].append(row);
    }

    const limits = el("ul", undefined, "limitations");
    for (const item of model.limitations || []) limits.append(el("li", item));
    const note = el("p", "Not externally validated: expect lower performance on other hospitals, devices and " +
      "populations. Full details: ", "muted");
    const cardLink = el("a", "the model card");
    cardLink.href = "/model/card";
    const jsonLink = el("a", "GET /model");
    jsonLink.href = "/model";
    note.append(cardLink, " and ", jsonLink, ".");
    root.replaceChildren(facts, table, el("h3", "Limitations"), limits, note);
  }

  // Where the thresholds come from (GET /model `site_calibration`): validation, or a site's labelled sample.
  function siteCalibrationSummary(record, defaultPoint) {
    if (!record) return "chosen on the validation split";
    const after = (record.after || {})[defaultPoint] || {};
    const rate = (e) => (e ? `${fmt(e.value)} [${fmt(e.ci_low)}, ${fmt(e.ci_high)}]` : "?");
    return `chosen on this site's labelled sample (${record.n_normal} NORMAL, ${record.n_pneumonia} PNEUMONIA; ` +
      `${String(record.calibrated_at).slice(0, 10)}; method ${String(record.method).split(":")[0]}): at ` +
      `${defaultPoint} sensitivity ${rate(after.sensitivity)}, specificity ${rate(after.specificity)} on that sample`;
  }

  function inputCheckSummary(spec) {
    if (!spec) return "basic pixel checks only: this model bundle has no fitted out-of-distribution detector";
    const acceptance = typeof spec.validation_acceptance === "number"
      ? `; accepts ${(spec.validation_acceptance * 100).toFixed(1)}% of validation X-rays` : "";
    return `orientation, pixel checks and an out-of-distribution detector (threshold ${fmt(spec.threshold, 2)}${acceptance})`;
  }

  // ---- upload -----------------------------------------------------------------------------------------

  function setStatus(text) {
    $("status").textContent = text;
  }

  function clearError() {
    const box = $("error");
    box.hidden = true;
    box.className = "error";
    box.replaceChildren();
  }

  function problemMessage(err) {
    const message = err.body && err.body.error && err.body.error.message ? err.body.error.message : "";
    const code = err.code ? ` (code: ${err.code})` : "";
    switch (true) {
      case err.status === 0:
        return "The service could not be reached. Is it still running?";
      case err.status === 503 && err.code === "not_ready":
        return "The model is still loading — try again in a moment.";
      case err.status === 503:
        return `The service is busy — try again${err.retryAfter ? ` in ${err.retryAfter} s` : " shortly"}. ${message}${code}`;
      case err.status === 413:
        return `The file is too large. ${message}${code}`;
      case err.status === 415:
        return `This file type cannot be read: send a JPEG, PNG or DICOM image. ${message}${code}`;
      case err.status === 422:
        return `The image could not be analysed. ${message}${code}`;
      case err.status === 400:
        return `The upload was not understood. ${message}${code}`;
      case err.status === 429:
        return `Too many requests — try again${err.retryAfter ? ` in ${err.retryAfter} s` : " shortly"}. ${message}${code}`;
      case err.status >= 400 && err.status < 500:
        return `The request was refused (HTTP ${err.status}). ${message}${code}`;
      default:
        return `The service failed (HTTP ${err.status}). ${message}${code}`;
    }
  }

  // The input check's refusals (HTTP 422), in words a person understands; the codes are pneumonia.errors'.
  const populationText = (population) => population
    ? `children aged ${population.age_min_years}–${population.age_max_years} at ` +
      `${population.sites === 1 ? "one hospital" : `${population.sites} hospitals`}`
    : "young children at one hospital";
  const REFUSALS = {
    not_a_chest_xray: {
      title: "Refused: this does not look like a frontal chest X-ray",
      words: () => "The model was trained on frontal chest X-rays only; its output for other images is meaningless.",
    },
    outside_population: {
      title: "Refused: this film is outside the model's population",
      words: (population) => `This looks like a film of someone the model never learned from, most likely an adult. ` +
        `The model was trained on ${populationText(population)}; its answer would mean nothing here.`,
    },
    poor_image_quality: {
      title: "Refused: the image's exposure or contrast is outside what the model was trained on",
      words: () => "On films like this (for example with low contrast) the model's answers were measured to be " +
        "unreliable. Try the original, unprocessed image.",
    },
  };

  function inputCheckOf(body) {
    return (body && (body.input_check || (body.error && body.error.input_check))) || null;
  }

  // What a verdict holds besides accept/refuse, shared by the result and the refusal: every reason, what the
  // detector could not do, and the out-of-distribution score against its threshold (small print).
  function checkDetails(check) {
    const nodes = [];
    const reasons = check.reasons || [];
    if (reasons.length) {
      const list = el("ul", undefined, "reasons");
      for (const reason of reasons) list.append(el("li", reasonText(reason)));
      nodes.push(list);
    }
    if (check.detector === "unavailable") {
      nodes.push(el("p", "The out-of-distribution detector is unavailable for this model, so only the basic pixel " +
        "checks ran (colour, blank, noise, aspect ratio): an image that is not a chest X-ray can get through." +
        (check.note ? ` (${check.note})` : ""), "check-note"));
    }
    if (check.detector === "off") {
      nodes.push(el("p", "The input check was switched off for this request: nothing checked that this is a chest " +
        "X-ray.", "check-note"));
    }
    if (typeof check.ood_score === "number") {
      nodes.push(el("p", `Out-of-distribution score ${fmt(check.ood_score, 2)}, threshold ${fmt(check.ood_threshold, 2)} ` +
        "(refused above it; 0 is a typical validation X-ray, 1 the 99th percentile of validation X-rays).", "small-print"));
    }
    return nodes;
  }

  const turnedBack = (check) => Boolean(check && (check.rotated_back_degrees || check.mirrored));

  function reasonText(reason) {
    if (typeof reason === "string") return reason;
    if (reason && typeof reason === "object") return reason.message || reason.detail || JSON.stringify(reason);
    return String(reason);
  }

  function showError(err) {
    const box = $("error");
    box.replaceChildren();
    const refusal = err.status === 422 && REFUSALS[err.code];
    if (refusal) {
      // The verdict may sit beside `error` (this service) or inside it; the reasons are in `error` too.
      const check = inputCheckOf(err.body) || {};
      const reasons = check.reasons || err.body.error.reasons || [];
      box.className = "error refusal";
      box.append(el("h3", refusal.title));
      box.append(el("p", refusal.words(state.model && state.model.population), "refusal-words"));
      box.append(el("p", reasons.length ? "Why:" : "The service gave no reason."), ...checkDetails({ ...check, reasons }));
      box.append(el("p", "No label is given.", "muted"));
    } else {
      box.className = "error";
      box.append(el("p", problemMessage(err)));
    }
    box.hidden = false;
  }

  async function upload(path, file) {
    const form = new FormData();
    form.append("file", file);
    const point = selectedPoint();
    const query = point ? `?operating_point=${encodeURIComponent(point.name)}` : "";
    return request(path + query, { method: "POST", body: form, headers: { Accept: "application/json" } });
  }

  async function analyse(file) {
    clearError();
    $("file-input").disabled = true;
    $("result").setAttribute("aria-busy", "true");
    setStatus(`Analysing ${file.name}…`);
    try {
      let result;
      try {
        result = await upload("/explain", file);
      } catch (err) {
        // A service without explanations still predicts: show that rather than nothing.
        if (!(err.status === 503 && err.code === "explain_unavailable")) throw err;
        result = await upload("/predict", file);
      }
      showResult(file, result);
      setStatus(`Analysed ${file.name}.`);
    } catch (err) {
      $("result").hidden = true;
      state.result = null;
      showError(err);
      setStatus(`${file.name} was not analysed.`);
    } finally {
      $("file-input").disabled = false;
      $("file-input").value = "";
      $("result").removeAttribute("aria-busy");
    }
  }

  // ---- the result -------------------------------------------------------------------------------------

  function showResult(file, result) {
    state.result = result;
    state.maps = result.heatmap ? { [explainedOf(result)]: result } : {};
    state.shown = null;
    state.pending = {};
    state.mapError = null;
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    state.objectUrl = null;
    renderInputCheck(result.input_check);
    renderWarnings(result.warnings || [], (result.input_check && result.input_check.reasons) || []);
    renderImages(file, result);
    if (result.disclaimer) $("disclaimer-text").textContent = result.disclaimer.replace(/^Research use only\.\s*/, "");
    $("result").hidden = false;
    relabel();
  }

  function renderInputCheck(check) {
    const box = $("input-check");
    box.replaceChildren();
    if (!check) {
      box.className = "input-check unknown";
      box.append(el("p", "Input check: not reported by this service. Make sure the image is a frontal chest X-ray."));
      return;
    }
    const [kind, verdict] = checkVerdict(check);
    box.className = `input-check ${kind}`;
    box.append(el("p", verdict, "verdict"), ...checkDetails(check));
  }

  // Reasons on an accepted image matter too (an image turned back, a check that could not fully run).
  function checkVerdict(check) {
    if (!check.accepted) {
      const what = check.refusal_code === "outside_population"
        ? "this film looks outside the model's population (most likely an adult)"
        : check.refusal_code === "poor_image_quality" ? "the image's exposure or contrast is outside the training range"
        : "this may not be a chest X-ray";
      return ["refused", `Input check: refused — ${what}. The service answered only because ` +
        `its policy is "${check.policy}"; the output below is not meaningful for this image.`];
    }
    if (check.detector === "off") return ["noted", "Input check: off — this image was not checked."];
    if (turnedBack(check)) {
      return ["noted", "Input check: accepted after turning the image back upright; the output below is for the " +
        "image as the model read it."];
    }
    if ((check.reasons || []).length) return ["noted", "Input check: accepted, with these notes:"];
    if (check.detector === "unavailable") return ["noted", "Input check: accepted by the basic checks only."];
    return ["accepted", "Input check: accepted — the checks found a frontal chest X-ray."];
  }

  // The service repeats input-check reasons among its warnings; they are shown once, in the verdict above.
  function renderWarnings(warnings, checkReasons) {
    const list = $("warnings");
    const shown = warnings.filter((warning) => !checkReasons.some((reason) => warning.includes(reasonText(reason))));
    list.replaceChildren();
    list.hidden = shown.length === 0;
    for (const warning of shown) list.append(el("li", `Warning: ${warning}`));
  }

  // The overlay is drawn over the image as the model read it. It lies on the upload (an opacity slider fades
  // between them) unless the browser cannot show the upload (DICOM) or the service turned the image back, when
  // the two no longer line up and are shown side by side.
  function renderImages(file, result) {
    const isDicom = result.input && result.input.format === "DICOM";
    const turned = turnedBack(result.input_check);
    const layered = !isDicom && !turned;
    const hasMap = Boolean(result.heatmap);
    $("original-figure").hidden = isDicom;
    $("dicom-note").hidden = !isDicom;
    $("turned-note").hidden = !(turned && hasMap);
    if (!isDicom) {
      state.objectUrl = URL.createObjectURL(file);
      $("original").src = state.objectUrl;
      $("overlay-base").src = state.objectUrl;
    }
    $("overlay-base").hidden = !layered;
    $("overlay-figure").querySelector(".stack").classList.toggle("layered", layered);
    $("overlay-figure").hidden = !hasMap;
    $("map-help").hidden = !hasMap;
    $("overlay-controls").hidden = !layered;
    $("no-explanation").hidden = hasMap;
    $("no-explanation").textContent = hasMap ? "" : "Explanations are unavailable on this service: the prediction is shown without a heatmap.";
    if (hasMap) showMap(result);
    setOpacity(layered ? Number($("opacity").value) : 100);
  }

  // The service's overlay PNG is the image followed, on its right, by a black strip holding its own colour bar,
  // colour_bar_width(H) = max(16, H // 10) px wide for an overlay H px tall (pneumonia/explain/overlay.py, which
  // also says so in the API description). The page shows its colour bar beside the image instead (#colour-bar,
  // outside what the opacity slider fades), so it gives the img the image's aspect ratio and CSS's
  // `object-fit: cover` from the left edge leaves the strip out: one legend, and the overlay lines up with the
  // upload beneath it.
  const colourBarWidth = (height) => Math.max(16, Math.floor(height / 10));

  // Width and height from a base64 PNG's IHDR chunk (its first 24 bytes are exactly 32 base64 characters).
  function pngSize(base64) {
    try {
      const head = atob(base64.slice(0, 32));
      if (head.slice(1, 4) !== "PNG" || head.slice(12, 16) !== "IHDR") return null;
      const int = (at) => [0, 1, 2, 3].reduce((value, i) => value * 256 + head.charCodeAt(at + i), 0);
      return { width: int(16), height: int(20) };
    } catch (err) {
      return null;
    }
  }

  function showMap(map) {
    const format = map.heatmap_format || "png";
    const size = format === "png" ? pngSize(map.heatmap) : null;
    const imageWidth = size ? size.width - colourBarWidth(size.height) : 0;
    $("overlay").style.aspectRatio = imageWidth > 0 ? `${imageWidth} / ${size.height}` : "";
    $("overlay").src = `data:image/${format};base64,${map.heatmap}`;
    state.shown = map;
    describeMap(map);
  }

  const explainedOf = (map) => map.explained_class || "PNEUMONIA"; // services before it explained PNEUMONIA only

  // The service explains the label it gave (`explained_class`); the caption names the class, not implies it.
  // The method is the one the service names (its default changed once already); a service too old to name
  // it gets a neutral "Saliency", not a guess.
  function describeMap(result) {
    const explained = explainedOf(result);
    const method = METHOD_NAMES[result.method] || result.method || "Saliency";
    const red = explained === "PNEUMONIA"
      ? "the regions that raised the model's pneumonia score the most"
      : "the regions that pushed the model's score towards NORMAL (away from pneumonia) the most";
    const layers = (result.map && result.map.layers) || [];
    $("overlay-caption").textContent = `${method} overlay — explains ${explained}` +
      (layers.length ? ` (from layer ${layers.join(", ")})` : "");
    $("overlay").alt = `${method} heatmap over the uploaded image: red marks ${red}`;
    $("legend-red").textContent = red;
  }

  // Re-label from the stored probability at the chosen operating point, exactly as the service does
  // (PNEUMONIA when probability >= threshold): no second upload.
  function relabel() {
    const result = state.result;
    if (!result) return;
    const point = selectedPoint();
    const threshold = point ? point.threshold : result.threshold;
    const name = point ? point.name : result.operating_point;
    const label = result.probability >= threshold ? "PNEUMONIA" : "NORMAL";
    $("label").textContent = label;
    $("label").className = `label ${label.toLowerCase()}`;
    $("label-note").textContent = `at operating point ${name} (threshold ${fmt(threshold)})`;
    $("probability").textContent = fmt(result.probability);
    $("probability-fill").style.width = `${(result.probability * 100).toFixed(1)}%`;
    $("threshold-marker").style.left = `${(threshold * 100).toFixed(1)}%`;
    $("threshold-text").textContent = `threshold ${fmt(threshold)}`;
    $("probability-bar").setAttribute("aria-label",
      `Probability ${fmt(result.probability)} on a scale from 0 to 1; the threshold ${fmt(threshold)} is marked. ` +
      `Label: ${label}.`);
    if (label !== state.label) state.mapError = null; // a new label: worth asking for its map again
    state.label = label;
    matchMap(true);
  }

  // The map explains the label the service gave when it made it. When another operating point flips the label,
  // the page asks the service for the map of the new label (GET /explain/{prediction_id} at that operating
  // point: the service keeps the image for a while, so nothing is uploaded again) and, until it arrives or if it
  // cannot, says next to the image which label the map on screen explains. Maps already fetched are reused.
  function matchMap(fetchIfMissing) {
    const result = state.result;
    const label = state.label;
    if (!result || !result.heatmap || !state.shown || !label) return;
    if (explainedOf(state.shown) === label) return mapNote("");
    if (state.maps[label]) {
      showMap(state.maps[label]);
      return mapNote("");
    }
    const shown = explainedOf(state.shown);
    const where = state.shown.operating_point ? `the label at operating point ${state.shown.operating_point}` :
      "the label when it was made";
    const stale = `This map explains ${shown}, ${where}, not ${label}, the label shown above.`;
    const point = selectedPoint();
    if (state.mapError) return mapNote(`${stale} The map for ${label} could not be fetched: ${state.mapError}`);
    if (!result.prediction_id || !point) {
      return mapNote(`${stale} Upload the image again at this operating point to see the map for ${label}.`);
    }
    mapNote(`${stale} Fetching the map for ${label}…`);
    if (fetchIfMissing && !state.pending[label]) fetchMap(result, point, label);
  }

  async function fetchMap(result, point, label) {
    state.pending[label] = true;
    const query = new URLSearchParams({ operating_point: point.name });
    if (result.method) query.set("method", result.method);
    let answer = null;
    let problem = null;
    try {
      answer = await request(`/explain/${encodeURIComponent(result.prediction_id)}?${query}`,
        { headers: { Accept: "application/json" } });
    } catch (err) {
      problem = err.status === 404
        ? "the service no longer holds this image. Upload it again to see the map for the new label."
        : problemMessage(err);
    }
    if (state.result !== result) return; // another file was chosen meanwhile
    delete state.pending[label];
    if (answer && answer.heatmap) state.maps[explainedOf(answer)] = answer;
    if (state.label === label && !state.maps[label]) {
      state.mapError = problem || (answer && answer.heatmap
        ? `the service explained ${explainedOf(answer)} instead.` : "the service sent no map.");
    }
    matchMap(false);
  }

  function mapNote(text) {
    $("map-note").textContent = text;
    $("map-note").hidden = !text;
  }

  function setOpacity(percent) {
    $("overlay").style.opacity = String(percent / 100);
    $("opacity").value = String(percent);
    $("opacity").setAttribute("aria-valuetext", `${percent}%`);
    $("opacity-value").textContent = `${percent}%`;
  }

  // ---- wiring -----------------------------------------------------------------------------------------

  function init() {
    const input = $("file-input");
    const zone = $("dropzone");
    input.addEventListener("change", () => {
      if (input.files && input.files.length) analyse(input.files[0]);
    });
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (event) => {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    }
    for (const type of ["dragleave", "drop"]) zone.addEventListener(type, () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      const files = event.dataTransfer && event.dataTransfer.files;
      if (files && files.length) analyse(files[0]);
    });
    // A file dropped beside the zone must not make the browser navigate away to it.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
    $("operating-point").addEventListener("change", relabel);
    for (const id of ["model-json-link", "model-card-link"]) $(id).addEventListener("click", openWithKey);
    $("opacity").addEventListener("input", () => setOpacity(Number($("opacity").value)));
    loadModel();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
