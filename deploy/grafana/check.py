#!/usr/bin/env python3
"""Validate deploy/grafana/allot-origin.json against the origin's metric set (stdlib only).

Checks: the file parses; it is an importable schemaVersion 39 dashboard with the DS_PROMETHEUS
input and the datasource/region/instance variables; every panel (rows included) has a unique id
and a title, and panels a description; grid positions do not overlap; every query references only
known `allot_*` metrics (histograms only through _bucket/_sum/_count, counters and gauges bare)
and, inside `{...}` selectors right after a metric name, only that metric's labels; brackets and
quotes balance.

Usage: python3 deploy/grafana/check.py [dashboard.json]
"""

import json
import re
import sys
from pathlib import Path

# metric -> (kind, labels). Every series also has region and instance (added by Prometheus).
METRICS = {
    "allot_http_requests_total": ("counter", {"route", "method", "status"}),
    "allot_http_request_duration_seconds": ("histogram", {"route"}),
    "allot_allocations_total": ("counter", {"outcome", "code"}),
    "allot_allocation_duration_seconds": ("histogram", {"outcome"}),
    "allot_cache_pops_total": ("counter", {"outcome"}),
    "allot_cache_divergences_healed_total": ("counter", set()),
    "allot_cache_rebuilds_total": ("counter", {"trigger"}),
    "allot_allocation_batch_size": ("histogram", set()),
    "allot_inventory_active_cards": ("gauge", {"product_id", "denomination_minor"}),
    "allot_stock_state": ("gauge", {"product_id", "denomination_minor"}),
    "allot_stock_transitions_total": ("counter", {"state"}),
    "allot_job_runs_total": ("counter", {"job_name", "outcome"}),
    "allot_job_duration_seconds": ("histogram", {"job_name"}),
    "allot_db_pool_connections": ("gauge", {"pool", "state"}),
    "allot_valkey_up": ("gauge", set()),
    "allot_outbox_published_total": ("counter", set()),
    "allot_outbox_failures_total": ("counter", set()),
    "allot_outbox_pending": ("gauge", set()),
    "allot_health_status": ("gauge", {"check"}),
    "allot_dependency_failures_total": ("counter", {"dependency"}),
    "allot_request_guard_unchecked_total": ("counter", set()),
    "allot_rate_limited_total": ("counter", set()),
    "allot_signature_replays_total": ("counter", set()),
    "allot_cache_put_back_lost_total": ("counter", set()),
    "allot_http_open_connections": ("gauge", set()),
    "allot_http_head_timeouts_total": ("counter", set()),
    "allot_http_protocol_refusals_total": ("counter", set()),
}
COMMON_LABELS = {"region", "instance"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

IDENT = re.compile(r"\ballot_[A-Za-z0-9_:]*")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*$")

errors = []


def fail(msg):
    errors.append(msg)


def resolve(name):
    """(base metric, suffix) for a referenced name, or None when it is not in the metric set."""
    if name in METRICS:
        kind, _ = METRICS[name]
        return None if kind == "histogram" else (name, "")
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if base in METRICS and METRICS[base][0] == "histogram":
                return (base, suffix)
    return None


def selector_labels(expr, end):
    """Label names of the `{...}` selector starting at expr[end], if one does."""
    if end >= len(expr) or expr[end] != "{":
        return []
    depth, i = 0, end
    while i < len(expr):
        if expr[i] == "{":
            depth += 1
        elif expr[i] == "}":
            depth -= 1
            if depth == 0:
                break
        i += 1
    body = STRING.sub("", expr[end + 1 : i])
    labels = []
    for part in body.split(","):
        if part.strip():
            m = MATCHER.match(part)
            if not m:
                fail(f"cannot parse matcher {part.strip()!r} in {expr!r}")
            else:
                labels.append(m.group(1))
    return labels


def check_expr(where, expr):
    if not isinstance(expr, str) or not expr.strip():
        fail(f"{where}: empty expr")
        return
    # Blank string literals (same length) so label values such as "allot_x" are not taken for
    # metric names while positions stay valid for selector parsing.
    scrubbed = STRING.sub(lambda m: m.group(0)[0] + " " * (len(m.group(0)) - 2) + m.group(0)[-1], expr)
    if STRING.sub("", expr).count('"') or STRING.sub("", expr).count("'"):
        fail(f"{where}: unbalanced quotes: {expr!r}")
    stack = []
    for ch in scrubbed:
        if ch in "([{":
            stack.append(ch)
        elif ch in ")]}":
            if not stack or "([{"[")]}".index(ch)] != stack.pop():
                fail(f"{where}: unbalanced brackets: {expr!r}")
                break
    else:
        if stack:
            fail(f"{where}: unbalanced brackets: {expr!r}")
    names = list(IDENT.finditer(scrubbed))
    if not names and "__name__" not in expr:
        fail(f"{where}: references no allot_ metric: {expr!r}")
    for m in names:
        name = m.group(0)
        resolved = resolve(name)
        if resolved is None:
            fail(f"{where}: unknown metric {name!r} (histograms need _bucket/_sum/_count)")
            continue
        base, suffix = resolved
        allowed = METRICS[base][1] | COMMON_LABELS | ({"le"} if suffix == "_bucket" else set())
        for label in selector_labels(expr, m.end()):
            if label not in allowed:
                fail(f"{where}: label {label!r} is not a label of {base}")


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def main():
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("allot-origin.json")
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        print(f"FAIL: {path}: {e}")
        return 1

    if dash.get("schemaVersion") != 39:
        fail(f"schemaVersion is {dash.get('schemaVersion')!r}, want 39")
    if not dash.get("uid") or not dash.get("title"):
        fail("dashboard needs a uid and a title")
    inputs = {i.get("name"): i for i in dash.get("__inputs", [])}
    if inputs.get("DS_PROMETHEUS", {}).get("pluginId") != "prometheus":
        fail("__inputs must declare DS_PROMETHEUS as a prometheus datasource")

    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    for name in ("datasource", "region", "instance"):
        if name not in variables:
            fail(f"templating variable {name!r} missing")
    if variables.get("datasource", {}).get("type") != "datasource":
        fail("variable datasource must be of type datasource")
    inst = variables.get("instance", {})
    if not (inst.get("multi") and inst.get("includeAll")):
        fail("variable instance must be multi with All")
    region_def = variables.get("region", {}).get("definition", "")
    if region_def.replace(" ", "") != "label_values(allot_http_requests_total,region)":
        fail(f"variable region: unexpected query {region_def!r}")
    for name, v in variables.items():
        for q in (v.get("definition"), (v.get("query") or {}).get("query") if isinstance(v.get("query"), dict) else None):
            if q and name != "datasource":
                check_expr(f"variable {name}", q)

    all_panels = list(walk_panels(dash.get("panels", [])))
    if not all_panels:
        fail("no panels")
    seen = {}
    rects = []
    exprs = 0
    for p in all_panels:
        pid, title = p.get("id"), p.get("title")
        where = f"panel {pid} {title!r}"
        if not isinstance(pid, int):
            fail(f"panel without an integer id: {title!r}")
        elif pid in seen:
            fail(f"duplicate panel id {pid}: {seen[pid]!r} and {title!r}")
        else:
            seen[pid] = title
        if not isinstance(title, str) or not title.strip():
            fail(f"panel {pid} has no title")
        grid = p.get("gridPos") or {}
        if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")):
            fail(f"{where}: bad gridPos {grid}")
        else:
            if grid["x"] + grid["w"] > 24:
                fail(f"{where}: wider than the 24-column grid")
            rects.append((where, grid))
        if p.get("type") == "row":
            continue
        if not (p.get("description") or "").strip():
            fail(f"{where}: no description")
        ds = p.get("datasource") or {}
        if ds.get("uid") != "${datasource}":
            fail(f"{where}: datasource should be ${{datasource}}, is {ds}")
        targets = p.get("targets") or []
        if not targets:
            fail(f"{where}: no targets")
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids):
            fail(f"{where}: duplicate refIds {ref_ids}")
        for t in targets:
            exprs += 1
            check_expr(f"{where} {t.get('refId')}", t.get("expr"))
            sel = t.get("expr") or ""
            if "allot_" in sel and ('region=~"$region"' not in sel or 'instance=~"$instance"' not in sel):
                fail(f"{where} {t.get('refId')}: expr not filtered by $region and $instance")

    for i, (wa, a) in enumerate(rects):
        for wb, b in rects[i + 1 :]:
            if a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]:
                fail(f"{wa} overlaps {wb}")

    if errors:
        for e in errors:
            print(f"FAIL: {e}")
        return 1
    print(f"OK: {path.name}: {len(all_panels)} panels, {exprs} queries, all metric names known")
    return 0


if __name__ == "__main__":
    sys.exit(main())
