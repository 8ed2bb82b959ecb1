"""The widget declaration as the one source of a value's range and choices, for the inputs VALIDATE_INPUTS names.

A host checks a widget value against its INPUT_TYPES entry (min / max, combo choices) before running a graph, except
for the inputs that the node's VALIDATE_INPUTS takes as parameters: then the host leaves those checks to the node
(choices on every host; min / max too on newer hosts, e.g. the 2025-10 one). So node classes keep VALIDATE_INPUTS for checks that
span several inputs or need the file system only, and there call ``widget_problem`` first for the inputs they name.

Validation is not left to the host: every node of the pack runs ``check_widgets`` (its widgets, then its own
VALIDATE_INPUTS) when it executes, through ``validate_on_execute``, which the registry applies to every node class.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Union

from ..model.errors import DynamiCrafterInputError
from ..model.guards import check_finite_number

_LISTED = 20  # longer choice lists (file names) are summarised, as the host does


def _declarations(node_cls) -> dict:
    spec = node_cls.INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}


def _out_of_range(name: str, kind: str, opts: dict, value) -> Union[bool, str]:
    try:
        number = int(value) if kind == "INT" else float(value)
    except (TypeError, ValueError):
        return str(DynamiCrafterInputError(name, f"a number ({kind})", repr(value), "enter a number"))
    lo, hi = opts.get("min"), opts.get("max")
    if not math.isfinite(number):
        return str(DynamiCrafterInputError(name, "a finite number", repr(value), "NaN and Inf are not values"))
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        span = f"{lo} to {hi}" if lo is not None and hi is not None else (f"at least {lo}" if hi is None
                                                                            else f"at most {hi}")
        return str(DynamiCrafterInputError(name, span, repr(value), "set a value in the widget's range"))
    return True


def widget_problem(node_cls, **values) -> Union[bool, str]:
    """True when every given value fits its widget declaration in ``node_cls.INPUT_TYPES()``, else a one-line message.

    None stands for a value the host does not know at validation time (a linked input) and is not checked.
    """
    declared = _declarations(node_cls)
    for name, value in values.items():
        if value is None:
            continue
        kind, opts = declared[name][0], (declared[name][1] if len(declared[name]) > 1 else {})
        if isinstance(kind, (list, tuple)):
            if value not in kind:
                listed = list(kind) if len(kind) <= _LISTED else f"one of {len(kind)} names"
                return str(DynamiCrafterInputError(name, f"one of {listed}", repr(value), "pick one from the list"))
        elif kind in ("INT", "FLOAT"):
            problem = _out_of_range(name, kind, opts, value)
            if problem is not True:
                return problem
    return True


def check_widgets(node_cls, values: dict) -> None:
    """Refuse, in one line naming the input, a widget value its declaration does not allow: a number that is not
    one, NaN / Inf or outside its range, a choice not in its list, a BOOLEAN that is not a boolean; then the node's
    own VALIDATE_INPUTS (which stands in for the choice check of the inputs it names, e.g. file names). Run by every
    node when it executes (``validate_on_execute``): the hosts' range check lets NaN through (every comparison with
    NaN is false), the API accepts "nan" for a FLOAT, and the 2024-03 host does not validate a node that is reached
    only through an optional input."""
    declared = _declarations(node_cls)
    own = _validate_params(node_cls)
    for name, value in values.items():
        if name not in declared or not isinstance(declared[name], (list, tuple)) or not declared[name]:
            continue
        kind, opts = declared[name][0], (declared[name][1] if len(declared[name]) > 1 else {})
        if isinstance(kind, (list, tuple)):
            if name not in own and value not in kind:
                listed = list(kind) if len(kind) <= _LISTED else f"one of {len(kind)} names"
                raise DynamiCrafterInputError(name, f"one of {listed}", repr(value), "pick one from the list")
        elif kind in ("INT", "FLOAT"):
            check_finite_number(name, value, opts.get("min"), opts.get("max"), todo="set a value in the widget's range")
        elif kind == "BOOLEAN" and not isinstance(value, bool):
            raise DynamiCrafterInputError(name, "true or false", repr(value), "set the switch")
    if own:
        verdict = node_cls.VALIDATE_INPUTS(**{k: values[k] for k in own if k in values})
        if verdict is not True:
            raise DynamiCrafterInputError.from_line(str(verdict))


def _validate_params(node_cls) -> frozenset:
    check = getattr(node_cls, "VALIDATE_INPUTS", None)
    return frozenset(inspect.signature(check).parameters) - {"input_types"} if check else frozenset()


def validate_on_execute(node_cls) -> None:
    """Wrap the node's FUNCTION so that ``check_widgets`` runs on its inputs first, whatever the host validated
    (the registry does it for every node of the pack; wrapping twice is a no-op)."""
    name = node_cls.FUNCTION
    fn = getattr(node_cls, name)
    if getattr(fn, "_dcn_checks_widgets", False):
        return

    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        check_widgets(type(self), kwargs)
        return fn(self, *args, **kwargs)

    run._dcn_checks_widgets = True
    setattr(node_cls, name, run)
