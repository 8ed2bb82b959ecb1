"""Checks of UI-format workflow files against a real host's node definitions, and the UI -> API conversion.

The rules are those of the host's front end when it loads a workflow: a node's input slots are its non-widget inputs
(required, then optional, in INPUT_TYPES order); ``widgets_values`` holds the widget inputs in the same order, plus a
front-end-only "control after generate" value after a seed-like INT and an "upload" value after an image-upload
combo; outputs are RETURN_TYPES in order. Nothing here is taken from the workflows' own builder.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WF_DIR = os.path.join(REPO, "workflows")
UI_DIR = os.path.join(REPO, "example_workflows")  # the UI files (newer hosts list them in their template browser)
API_DIR = os.path.join(WF_DIR, "api")
INPUT_DIR = os.path.join(WF_DIR, "input")
# Nodes that exist only in the front end (never sent to the server).
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
SEED_NAMES = {"seed", "noise_seed"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
# Host nodes each UI workflow needs beyond the pack's: what decides whether a host can run it.
ADVANCED_HOST_NODES = ("SamplerCustomAdvanced", "RandomNoise", "KSamplerSelect")


def ui_files() -> List[str]:
    return sorted(glob.glob(os.path.join(UI_DIR, "*.json")))


def name_of(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def api_twin_path(ui_path: str) -> str:
    return os.path.join(API_DIR, os.path.basename(ui_path))


def node_types(ui: dict) -> List[str]:
    return sorted({n["type"] for n in ui["nodes"]})


def missing_types(ui: dict, mappings: dict) -> List[str]:
    return [t for t in node_types(ui) if t not in VIRTUAL_NODES and t not in mappings]


# ---------------------------------------------------------------------------------------------------------------------
# node definitions
# ---------------------------------------------------------------------------------------------------------------------
def _entries(cls) -> List[Tuple[str, object, dict, bool]]:
    """(name, type, options, optional) of every required/optional input, in order."""
    it = cls.INPUT_TYPES()
    out = []
    for section, optional in (("required", False), ("optional", True)):
        for name, spec in (it.get(section) or {}).items():
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, typ, opts, optional))
    return out


def is_widget(typ, opts) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(typ, (list, tuple)) or typ == "COMBO" or typ in WIDGET_TYPES


def combo_options(typ, opts) -> Optional[list]:
    if isinstance(typ, (list, tuple)):
        return list(typ)
    if typ == "COMBO":
        return list(opts.get("options") or [])
    return None


def input_slots(cls) -> List[Tuple[str, str]]:
    return [(n, t) for n, t, o, _ in _entries(cls) if not is_widget(t, o)]


def widget_layout(cls) -> List[Tuple[Optional[str], object, dict]]:
    """UI order of widget values: (input name or None for a front-end-only value, type, options)."""
    out = []
    for name, typ, opts, _ in _entries(cls):
        if not is_widget(typ, opts):
            continue
        out.append((name, typ, opts))
        if typ == "INT" and (name in SEED_NAMES or opts.get("control_after_generate")):
            out.append((None, "CONTROL", {}))
        if opts.get("image_upload"):
            out.append((None, "UPLOAD", {}))
    return out


def output_slots(cls) -> List[Tuple[str, str]]:
    types = list(getattr(cls, "RETURN_TYPES", ()) or ())
    names = list(getattr(cls, "RETURN_NAMES", None) or types)
    return [(n, t if isinstance(t, str) else "COMBO") for n, t in zip(names, types)]


def types_compatible(out_type: str, in_type: str) -> bool:
    if out_type == "*" or in_type == "*":
        return True
    a, b = set(str(out_type).split(",")), set(str(in_type).split(","))
    return bool(a & b)


# ---------------------------------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------------------------------
def check_value(name: str, typ, opts: dict, value, allowed_files: Dict[str, set]) -> Optional[str]:
    options = combo_options(typ, opts)
    if options is not None:
        if value in options:
            return None
        if value in allowed_files.get(name, set()):
            return None  # a model file / example image the user provides (listed when present)
        return f"{name}: {value!r} is not one of {options[:8]}{'...' if len(options) > 8 else ''}"
    if typ == "CONTROL":
        return None if value in CONTROL_VALUES else f"control_after_generate: {value!r} not in {CONTROL_VALUES}"
    if typ == "UPLOAD":
        return None if value in ("image", None, "") else f"upload: unexpected value {value!r}"
    if typ == "BOOLEAN":
        return None if isinstance(value, bool) else f"{name}: expected a boolean, found {value!r}"
    if typ == "STRING":
        return None if isinstance(value, str) else f"{name}: expected a string, found {value!r}"
    if typ in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name}: expected a number, found {value!r}"
        if typ == "INT" and not float(value).is_integer():
            return f"{name}: expected an integer, found {value!r}"
        lo, hi = opts.get("min"), opts.get("max")
        if lo is not None and value < lo:
            return f"{name}: {value} is below the minimum {lo}"
        if hi is not None and value > hi:
            return f"{name}: {value} is above the maximum {hi}"
        step = opts.get("step")
        if typ == "INT" and step and step > 1 and (value - (lo or 0)) % step:
            return f"{name}: {value} is not on the widget's step {step} (from {lo or 0})"
        return None
    return f"{name}: no rule for widget type {typ!r}"


def check_ui(ui: dict, mappings: dict, allowed_files: Dict[str, set]) -> List[str]:
    """Every problem of a UI-format workflow against the host's node classes (empty list: it fits)."""
    problems = []
    nodes = {n["id"]: n for n in ui["nodes"]}
    if len(nodes) != len(ui["nodes"]):
        problems.append("duplicate node ids")
    for n in ui["nodes"]:
        t = n["type"]
        where = f"node {n['id']} ({t})"
        if t in VIRTUAL_NODES:
            continue
        cls = mappings.get(t)
        if cls is None:
            problems.append(f"{where}: no such node in the host or the pack")
            continue
        slots = input_slots(cls)
        got = [(i["name"], i["type"]) for i in n.get("inputs", []) if "widget" not in i]
        if got != slots:
            problems.append(f"{where}: input slots {got} != the node's {slots}")
        outs = output_slots(cls)
        got_o = [o["type"] for o in n.get("outputs", [])]
        if got_o != [t for _, t in outs]:
            problems.append(f"{where}: output types {got_o} != the node's {[t for _, t in outs]}")
        layout = widget_layout(cls)
        values = n.get("widgets_values", [])
        if len(values) != len(layout):
            problems.append(f"{where}: {len(values)} widget values for {len(layout)} widgets "
                            f"{[w[0] or w[1] for w in layout]}")
            continue
        for (name, typ, opts), v in zip(layout, values):
            err = check_value(name, typ, opts, v, allowed_files)
            if err:
                problems.append(f"{where}: {err}")
    link_ids = set()
    for l in ui["links"]:
        lid, src, sslot, dst, dslot, typ = l[:6]
        link_ids.add(lid)
        where = f"link {lid} ({src}:{sslot} -> {dst}:{dslot})"
        if src not in nodes or dst not in nodes:
            problems.append(f"{where}: unknown node")
            continue
        s, d = nodes[src], nodes[dst]
        souts, dins = s.get("outputs", []), d.get("inputs", [])
        if sslot >= len(souts) or dslot >= len(dins):
            problems.append(f"{where}: no such slot")
            continue
        if lid not in (souts[sslot].get("links") or []) or dins[dslot].get("link") != lid:
            problems.append(f"{where}: the nodes' slot records disagree with the links table")
        otype, itype = souts[sslot]["type"], dins[dslot]["type"]
        if s["type"] in mappings:
            outs = output_slots(mappings[s["type"]])
            otype = outs[sslot][1] if sslot < len(outs) else otype
        if d["type"] in mappings:
            ins = input_slots(mappings[d["type"]])
            itype = ins[dslot][1] if dslot < len(ins) else itype
        if not types_compatible(otype, itype):
            problems.append(f"{where}: {otype} output into a {itype} input")
        if typ != otype:
            problems.append(f"{where}: the link says {typ}, the output is {otype}")
    for n in ui["nodes"]:
        for i in n.get("inputs", []):
            if i.get("link") is not None and i["link"] not in link_ids:
                problems.append(f"node {n['id']}: input {i['name']} names link {i['link']}, not in the links table")
    if ui.get("last_node_id", 0) < max(nodes, default=0) or ui.get("last_link_id", 0) < max(link_ids, default=0):
        problems.append("last_node_id / last_link_id below the ids used")
    return problems


def ui_to_api(ui: dict, mappings: dict) -> dict:
    """The API-format prompt the front end would queue for this UI workflow (virtual nodes dropped)."""
    links = {l[0]: l for l in ui["links"]}
    out = {}
    for n in ui["nodes"]:
        if n["type"] in VIRTUAL_NODES or n.get("mode", 0) in (2, 4):  # muted / bypassed nodes are not sent
            continue
        cls = mappings[n["type"]]
        inputs = {}
        for slot in n.get("inputs", []):
            if slot.get("link") is not None:
                l = links[slot["link"]]
                inputs[slot["name"]] = [str(l[1]), l[2]]
        for (name, _t, _o), v in zip(widget_layout(cls), n.get("widgets_values", [])):
            if name is not None and name not in inputs:
                inputs[name] = v
        out[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return out


def strip_meta(api: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}


def needs_host_nodes(ui: dict) -> List[str]:
    return [t for t in node_types(ui) if t in ADVANCED_HOST_NODES]
