"""Sharing in a real front end (the host's server + headless Chromium, the fixtures of test_browser.py):

- missing_model: a shipped workflow opened with its model file absent shows the front end's Missing Models entry
  with the file name, our folder and a Download button; the button hands our URL, name and folder to the download
  (recorded through the Desktop app's bridge, ``window.__comfyDesktop2.downloadModel``, as the Desktop app receives
  them; nothing is fetched);
- drop_restore: an mp4 and an animated WebP written by DCN_SaveVideo (the graph queued as the page queues it, with
  the UI workflow in ``extra_pnginfo``) dropped on the canvas give back the same graph: node types, links and widget
  values equal to the workflow that made the file.

These need the front end of 2025 and later (1.27 of v0.3.64: a Missing Models dialog; 1.49 of v0.33: the error panel
with a Download button; both read mp4 and WebP); the 2024-03 host's page has neither and is skipped, saying so."""
from __future__ import annotations

import base64
import copy
import importlib.metadata
import os

import pytest

from comfyui_dynamicrafter.tests.workflows import wfcheck
from comfyui_dynamicrafter.tests.workflows.test_browser import (ARTIFACTS, CHROMIUM, LOAD,  # noqa: F401 (fixtures)
                                                                browser_context, server)

pytestmark = pytest.mark.skipif(not os.path.isfile(CHROMIUM), reason=f"chromium is not installed ({CHROMIUM})")
FRONTEND_MIN = (1, 27)  # the oldest front end driven here (v0.3.64's); its mp4/WebP readers and Missing Models dialog
ERROR_PANEL = (1, 49)   # from here on the missing models sit in the error panel with a Download button
# The 1.27 dialog offers downloads only for these suffixes (allowedSuffixes of its MissingModelsWarning); 1.49 adds more.
DIALOG_127_SUFFIXES = (".safetensors", ".sft")


def _frontend(server) -> tuple:
    if server.info.label == "pypi-2024-03":
        pytest.skip("the 2024-03 host's page has no Missing Models panel and no video readers")
    try:
        v = importlib.metadata.version("comfyui_frontend_package")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("comfyui_frontend_package is not installed beside this host")
    got = tuple(int(x) for x in v.split(".")[:2])
    if got < FRONTEND_MIN:
        pytest.skip(f"front end {v}: these checks drive the front ends of {FRONTEND_MIN[0]}.{FRONTEND_MIN[1]} and later")
    return got


# The page opens as on a first start: without the workflow drafts an earlier test's page left in this browser profile
# (the front end restores the last open workflow while it starts, which could land after a test's own load).
NO_DRAFTS = """for (const k of Object.keys(localStorage))
    if (/^Comfy\\.(Workflow|PreviousWorkflow)|^workflow$/.test(k)) localStorage.removeItem(k);"""


def _open(page, server):
    page.add_init_script(NO_DRAFTS)
    page.goto(server.url + "/", wait_until="load")
    page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && "
                           "Object.keys(LiteGraph.registered_node_types).includes('DCN_Loader')", timeout=90000)
    if page.locator(".p-dialog").count():
        page.keyboard.press("Escape")


DESKTOP_BRIDGE = """() => { window.__dcnDownloads = [];
    window.__comfyDesktop2 = { isRemote: () => false,
        downloadModel: async (url, name, directory) => { window.__dcnDownloads.push({url, name, directory}); } }; }"""


def test_missing_model_panel_offers_our_url_and_folder(server, browser_context):
    if _frontend(server) < ERROR_PANEL:
        return _missing_model_dialog_127(server, browser_context)
    path = os.path.join(wfcheck.UI_DIR, "dynamicrafter_512_image_to_video.json")
    ui = wfcheck.load(path)
    entry = next(n for n in ui["nodes"] if n["type"] == "DCN_Loader")["properties"]["models"][0]
    assert entry["name"] not in server.get("/object_info")["DCN_Loader"]["input"]["required"]["ckpt_name"][0]
    page = browser_context.new_page()
    _open(page, server)
    page.evaluate(DESKTOP_BRIDGE)
    page.evaluate(LOAD, ui)
    page.get_by_test_id("error-overlay-see-errors").click(timeout=30000)
    group = page.get_by_test_id("error-group-missing-model")
    group.wait_for(timeout=30000)
    text = group.inner_text()
    assert entry["name"] in text and entry["directory"] in text, text
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "missing_model_panel.png"))
    group.get_by_test_id("missing-model-download").first.click()
    page.wait_for_function("() => window.__dcnDownloads.length > 0", timeout=10000)
    got = page.evaluate("() => window.__dcnDownloads")
    assert got == [{"url": entry["url"], "name": entry["name"], "directory": entry["directory"]}], got
    page.close()


DIALOG_OPTIONS = """() => Array.from(document.querySelectorAll('.comfy-missing-models [role=option]')).map(o => ({
    text: o.innerText, title: (o.querySelector('span[title]') || {}).title || null,
    disabled: Array.from(o.querySelectorAll('button')).map(b => b.disabled)}))"""


def _missing_model_dialog_127(server, browser_context):
    """Front end 1.27 (v0.3.64): the Missing Models dialog lists ``directory / name`` with our URL as its hint; it
    refuses a download whose name is not .safetensors/.sft (its own rule), saying so in the entry."""
    ui = wfcheck.load(os.path.join(wfcheck.UI_DIR, "dynamicrafter_512_image_to_video.json"))
    entry = next(n for n in ui["nodes"] if n["type"] == "DCN_Loader")["properties"]["models"][0]
    page = browser_context.new_page()
    _open(page, server)
    page.evaluate(LOAD, ui)
    page.locator(".comfy-missing-models").wait_for(timeout=30000)
    options = page.evaluate(DIALOG_OPTIONS)
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "missing_model_dialog_127.png"))
    mine = [o for o in options if f"{entry['directory']} / {entry['name']}" in o["text"]]
    assert len(mine) == 1 and mine[0]["title"] == entry["url"], options
    assert "Invalid directory" not in mine[0]["text"], mine[0]
    if entry["name"].endswith(DIALOG_127_SUFFIXES):
        assert "Only allowed suffixes" not in mine[0]["text"] and not any(mine[0]["disabled"]), mine[0]
    else:  # the official pickle: listed with its link, the download refused by this front end's suffix rule
        assert "Only allowed suffixes" in mine[0]["text"] and all(mine[0]["disabled"]), mine[0]
    page.close()


# ---------------------------------------------------------------------------------------------------------------------
# drop_restore
SMALL = {"DCN_Conditioning": {0: 64, 1: 64, 2: 4}, "DCN_Sampler": {2: 2}}


def _tiny_workflow(server, fmt: str) -> dict:
    """The image-to-video workflow as a user edits it: the tiny model picked, 64 px, 4 frames, 2 steps, ``fmt``."""
    ui = copy.deepcopy(wfcheck.load(os.path.join(wfcheck.UI_DIR, "dynamicrafter_512_image_to_video.json")))
    for n in ui["nodes"]:
        if n["type"] == "DCN_Loader":
            n["widgets_values"][0] = server.tiny_names[n["widgets_values"][0]]
        for i, v in SMALL.get(n["type"], {}).items():
            n["widgets_values"][i] = v
        if n["type"] == "DCN_SaveVideo":
            n["widgets_values"][0], n["widgets_values"][1] = f"drop_restore/{fmt}", fmt
    return ui


def _graph_of(ui: dict) -> dict:
    nodes = {str(n["id"]): (n["type"], list(n.get("widgets_values") or [])) for n in ui["nodes"]}
    links = sorted(tuple(l[:5]) if isinstance(l, list) else
                   (l["id"], l["origin_id"], l["origin_slot"], l["target_id"], l["target_slot"]) for l in ui["links"])
    return {"nodes": nodes, "links": links}


def _make_video(server, page, ui: dict) -> str:
    """Queue ``ui`` from the page (the page converts it and sends the workflow along, as the Run button does)."""
    page.evaluate(LOAD, ui)
    loader = "() => app.graph.serialize().nodes.filter(n => n.type === 'DCN_Loader').map(n => n.widgets_values[0])"
    assert page.evaluate(loader) == [n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "DCN_Loader"]
    before = set((server.get("/history") or {}).keys())
    errors = page.evaluate("async () => { await app.queuePrompt(0, 1); return app.lastNodeErrors || null; }")
    assert not errors, [e.get("details") for n in errors.values() for e in n["errors"]]
    import time
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        new = set((server.get("/history") or {}).keys()) - before
        if new:
            entry = next(iter(server.get(f"/history/{new.pop()}").values()))
            if entry.get("status", {}).get("completed") or entry.get("status", {}).get("status_str") == "error":
                break
        time.sleep(0.5)
    else:
        raise AssertionError(f"nothing ran within 300 s:\n{server.log_tail()}")
    assert entry["status"]["status_str"] == "success", entry["status"]
    save_id = next(str(n["id"]) for n in ui["nodes"] if n["type"] == "DCN_SaveVideo")
    saved = (entry["outputs"][save_id].get("gifs") or entry["outputs"][save_id].get("images"))[0]
    return os.path.join(server.dirs["output"], saved.get("subfolder", ""), saved["filename"])


DROP = """async ([b64, name, type]) => {
    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], name, {type}));
    const target = document.querySelector('#graph-canvas') || document.querySelector('canvas');
    for (const kind of ['dragenter', 'dragover', 'drop'])
        target.dispatchEvent(new DragEvent(kind, {dataTransfer: dt, bubbles: true, cancelable: true}));
}"""


@pytest.mark.parametrize("fmt", ["mp4", "webp"])
def test_drop_restore_of_our_video(fmt, server, browser_context):
    _frontend(server)
    ui = _tiny_workflow(server, fmt)
    page = browser_context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _open(page, server)
    errors.clear()  # from here on, what the page does is about this test (1.27's own start-up error is not)
    video = _make_video(server, page, ui)
    assert video.endswith("." + fmt), video
    page.evaluate("async () => { await app.loadGraphData({nodes: [], links: [], version: 0.4}); }")  # a clean canvas
    assert page.evaluate("() => app.graph.serialize().nodes.length") == 0
    with open(video, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    page.evaluate(DROP, [data, os.path.basename(video), "video/mp4" if fmt == "mp4" else "image/webp"])
    page.wait_for_function(f"() => app.graph.serialize().nodes.length === {len(ui['nodes'])}", timeout=30000)
    restored = page.evaluate("() => app.graph.serialize()")
    page.screenshot(path=os.path.join(ARTIFACTS, f"drop_restore_{fmt}.png"))
    got, want = _graph_of(restored), _graph_of(ui)
    assert got["links"] == want["links"]
    for nid, (typ, widgets) in want["nodes"].items():
        assert got["nodes"][nid][0] == typ, (nid, got["nodes"][nid], typ)
        assert got["nodes"][nid][1] == widgets, (nid, typ, got["nodes"][nid][1], widgets)
    assert not errors, errors
    page.close()
