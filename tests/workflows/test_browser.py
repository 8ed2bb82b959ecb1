"""The workflows in a real browser: the host's server with the pack on 127.0.0.1, its page in headless Chromium
(Debian's, driven by Playwright's client; nothing downloads a browser). Each UI workflow is loaded with the page's own
call (``app.loadGraphData``, what a file drop ends in), the model file is picked and the size made small through
the node widgets as a user would, and the graph is queued by clicking the page's Run / Queue button. The test fails when
the page reports a missing node type; it waits for the video, checks its frame count and frame rate, checks that the
page received the preview, and saves a screenshot of the loaded and of the finished graph under
test-artifacts/browser/ (git-ignored)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import time

import pytest

from comfyui_dynamicrafter.tests import hosting
from comfyui_dynamicrafter.tests.workflows import wfcheck
from comfyui_dynamicrafter.tests.workflows.conftest import install_inputs

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = os.path.join(wfcheck.REPO, "test-artifacts", "browser")
FRAMES, SIZE, STEPS = 4, 64, 2
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
UI_FILES = wfcheck.ui_files()

pytestmark = pytest.mark.skipif(not os.path.isfile(CHROMIUM),
                                reason=f"chromium is not installed ({CHROMIUM}): apt-get install chromium "
                                       "(.ci/run installs it, so CI runs this test)")

# JavaScript run in the page ----------------------------------------------------------------------------------------
WATCH_MISSING = """() => {
    window.__dcnMissing = [];
    if (window.app && typeof app.showMissingNodesError === 'function' && !app.__dcnWrapped) {
        const orig = app.showMissingNodesError.bind(app);
        app.showMissingNodesError = (types, ...rest) => {
            for (const t of types) window.__dcnMissing.push(typeof t === 'object' ? t.type : t);
            return orig(types, ...rest);
        };
        app.__dcnWrapped = true;
    }
}"""
LOAD = "async (wf) => { await app.loadGraphData(wf); }"
FORGET_OPEN_WORKFLOWS = "try { localStorage.clear(); sessionStorage.clear(); } catch (e) {}"
REPORT = """(types) => {
    const registered = Object.keys(LiteGraph.registered_node_types);
    const nodes = (app.graph._nodes || app.graph.nodes || []);
    return {
        reported: window.__dcnMissing,
        unregistered: types.filter(t => !registered.includes(t)),
        nodeCount: nodes.length,
        dialog: Array.from(document.querySelectorAll('.comfy-missing-nodes')).map(e => e.textContent),
    };
}"""
# a user's edits: pick the model file, make it small; the widget callback runs as after a click in the widget
SET_WIDGETS = """(edits) => {
    const done = [];
    for (const node of (app.graph._nodes || app.graph.nodes)) {
        for (const w of (node.widgets || [])) {
            const key = node.type + '.' + w.name;
            if (key in edits) {
                const v = (typeof edits[key] === 'object' && edits[key] !== null) ? edits[key][w.value] : edits[key];
                if (v === undefined) continue;
                w.value = v;
                if (w.callback) w.callback(v, app.canvas, node);
                done.push(key + '=' + v);
            }
        }
    }
    app.graph.setDirtyCanvas(true, true);
    return done;
}"""
FRAME_VIEW = """() => { const ds = app.canvas.ds; ds.scale = 0.62; ds.offset = [15, 25];
                       app.graph.setDirtyCanvas(true, true); }"""
NODE_ERRORS = "() => app.lastNodeErrors && Object.keys(app.lastNodeErrors).length ? app.lastNodeErrors : null"
# the Run / Queue button as each front end draws it: 1.49 a button, 1.27-1.35 a split button (its first part runs),
# the 2024-03 page its "Queue Prompt" button
RUN_BUTTONS = ('[data-testid="queue-button"] button >> nth=0', '[data-testid="queue-button"]', "#queue-button")


def press_run(page) -> str:
    """Click the page's Run / Queue button, as a user does; the selector that found it. A dialog the load opened
    (frontend 1.35 lists the workflow's model files it cannot find in one) is closed first, as a user closes it."""
    for _ in range(3):
        if not page.locator(".p-dialog-mask").count():
            break
        page.keyboard.press("Escape")
        page.wait_for_timeout(500)
    for sel in RUN_BUTTONS:
        loc = page.locator(sel)
        if loc.count() and loc.first.is_visible():
            loc.first.click(timeout=30000)
            return sel
    raise AssertionError(f"no visible Run / Queue button on the page (looked for {RUN_BUTTONS})")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        info = hosting.find_host()
    except hosting.HostNotFound as e:
        pytest.skip(str(e))
    if info.label != "pypi-2024-03" and importlib.util.find_spec("comfyui_frontend_package") is None:
        pytest.skip(f"{info.describe()}: its server needs comfyui_frontend_package, not installed here")
    srv = hosting.HostServer(info, str(tmp_path_factory.mktemp("browser-server")))
    names = install_inputs(srv.model_dirs["dynamicrafter"], srv.dirs["input"], srv.model_dirs["dynamicrafter_adapters"],
                           srv.model_dirs["controlnet"])
    t0 = time.monotonic()
    srv.start()
    srv.started_in = time.monotonic() - t0
    try:  # newer front ends open their template browser on a first start; a returning user has seen it
        srv.post("/settings/Comfy.TutorialCompleted", True)
    except Exception:  # noqa: BLE001 - hosts without the settings API have no such dialog either
        pass
    srv.tiny_names = names
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    from playwright.sync_api import sync_playwright
    profile = str(tmp_path_factory.mktemp("chromium-profile"))
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                    args=CHROMIUM_ARGS, viewport={"width": 1600, "height": 1000})
        yield ctx
        ctx.close()


def _history_ids(srv) -> set:
    return set((srv.get("/history") or {}).keys())


@pytest.mark.parametrize("path", UI_FILES, ids=[wfcheck.name_of(p) for p in UI_FILES])
def test_workflow_in_the_browser(path, server, browser_context):
    name = wfcheck.name_of(path)
    ui = wfcheck.load(path)
    types = [t for t in wfcheck.node_types(ui) if t not in wfcheck.VIRTUAL_NODES]
    object_info = server.get("/object_info")
    host_lacks = [t for t in wfcheck.needs_host_nodes(ui) if t not in object_info]
    if host_lacks:
        pytest.skip(f"{name} needs {host_lacks}, which this host ({server.info.describe()}) lacks "
                    "(SamplerCustomAdvanced and guiders came in 2024-04)")
    os.makedirs(ARTIFACTS, exist_ok=True)
    page = browser_context.new_page()
    # frontends of 2026 (1.49) restore the workflows an earlier page of this profile had open, after the load below:
    # each test starts from the host's default graph, so the graph read and queued is the one loaded here
    page.add_init_script(FORGET_OPEN_WORKFLOWS)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    t0 = time.monotonic()
    page.goto(server.url + "/", wait_until="load")
    page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && "
                           "Object.keys(LiteGraph.registered_node_types).includes('DCN_Loader')", timeout=60000)
    if page.locator(".p-dialog").count():  # newer front ends greet a first start with a dialog
        page.keyboard.press("Escape")
    page.evaluate(WATCH_MISSING)
    errors.clear()  # from here on, what the page does is about this workflow (a host's own start-up errors are not)
    page.evaluate(LOAD, ui)
    report = page.evaluate(REPORT, types)
    page.evaluate(FRAME_VIEW)
    page.wait_for_timeout(300)
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"))
    assert not report["reported"] and not report["unregistered"] and not report["dialog"], \
        f"the page shows missing nodes: {report}"
    assert report["nodeCount"] == len(ui["nodes"])

    edits = {"DCN_Loader.ckpt_name": server.tiny_names, "DCN_Conditioning.width": SIZE,
             "DCN_Conditioning.height": SIZE, "DCN_Conditioning.frames": FRAMES, "DCN_Sampler.steps": STEPS,
             "DCN_Sigmas.steps": STEPS, "DCN_SketchEncoderLoader.sketch_encoder_name": server.tiny_names,
             "DCN_ToonSketchGuidance.frame_indices": "0, 3"}                # sparse sketches within FRAMES
    done = page.evaluate(SET_WIDGETS, edits)
    assert any(d.startswith("DCN_Loader.ckpt_name=dynamicrafter_tiny_") for d in done), done
    before = _history_ids(server)
    press_run(page)
    deadline = time.monotonic() + 600
    entry = None
    while time.monotonic() < deadline:
        node_errors = page.evaluate(NODE_ERRORS)
        assert not node_errors, f"the host refused the graph: {node_errors}"
        new = _history_ids(server) - before
        if new:
            entry = server.get(f"/history/{new.pop()}")
            entry = next(iter(entry.values()))
            if entry.get("status", {}).get("completed") or entry.get("status", {}).get("status_str") == "error":
                break
        time.sleep(0.5)
    assert entry is not None, f"nothing ran within 600 s:\n{server.log_tail()}"
    assert entry["status"]["status_str"] == "success", entry["status"]
    save_id = next(str(n["id"]) for n in ui["nodes"] if n["type"] in ("DCN_SaveVideo", "SaveVideo"))
    out = entry["outputs"][save_id]
    saved = (out.get("gifs") or out.get("images"))[0]
    video = os.path.join(server.dirs["output"], saved.get("subfolder", ""), saved["filename"])
    import av
    with av.open(video) as c:
        s = c.streams.video[0]
        frames, fps = sum(1 for _ in c.decode(s)), float(s.average_rate)
    chain = any(i["name"] == "keyframes" and i.get("link") is not None for n in ui["nodes"]
                if n["type"] == "DCN_Conditioning" for i in n.get("inputs", []))   # start + 2 keyframes: 2*15+1
    assert frames == (31 if chain else FRAMES) and fps == 8.0, (video, frames, fps)
    # the page got the result over its websocket and shows the preview on the save node
    page.wait_for_function(f"() => app.nodeOutputs && app.nodeOutputs['{save_id}'] && "
                           f"app.nodeOutputs['{save_id}'].images", timeout=30000)
    page.wait_for_timeout(800)
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.done.png"))
    assert not errors, f"uncaught errors in the page: {errors}"
    print(f"{name}: loaded and ran in the browser ({server.info.describe()}, server up in {server.started_in:.1f} s): "
          f"{os.path.basename(video)} {frames} frames {fps:g} fps, {time.monotonic() - t0:.1f} s")
    page.close()


def test_template_browser_lists_the_example_workflows(server):
    """Newer hosts serve example_workflows/ to their template browser (GET /workflow_templates)."""
    import urllib.error
    try:
        templates = server.get("/workflow_templates")
    except urllib.error.HTTPError as e:
        pytest.skip(f"this host ({server.info.describe()}) has no template browser (/workflow_templates: {e.code})")
    listed = templates.get(hosting.PACK_DIRNAME, [])
    assert len(listed) == len(set(listed)), f"a template is listed twice: {listed}"
    names = set(listed)
    assert names == {wfcheck.name_of(p) for p in UI_FILES}, templates
    for name in names:
        served = server.get(f"/api/workflow_templates/{hosting.PACK_DIRNAME}/{name}.json")
        assert served == wfcheck.load(os.path.join(wfcheck.UI_DIR, name + ".json"))
