"""JUnit XML of SLO verdicts (`run --junit`) and regression gates (`compare --junit`)."""

from __future__ import annotations

import json
from typing import Any
from xml.etree import ElementTree

from loadforge.analysis.slo import AT_LEAST, fmt_seconds, show_limit
from loadforge.present.outputs import write_output


def junit_xml(suite: str, cases: list[dict[str, Any]]) -> str:
    """JUnit XML: one <testcase> per case {"name", "ok", "message", "classname"?, "details"?};
    a failing case carries <failure message=...> with the details as its text."""
    failures = sum(1 for c in cases if not c["ok"])
    root = ElementTree.Element("testsuites", name="loadforge", tests=str(len(cases)),
                               failures=str(failures))
    ts = ElementTree.SubElement(root, "testsuite", name=suite, tests=str(len(cases)),
                                failures=str(failures), errors="0", skipped="0")
    for case in cases:
        tc = ElementTree.SubElement(ts, "testcase", name=str(case["name"]),
                                    classname=str(case.get("classname", suite)))
        if not case["ok"]:
            failure = ElementTree.SubElement(tc, "failure", message=str(case["message"]),
                                             type="breach")
            failure.text = str(case.get("details", case["message"]))
        elif case.get("message"):
            ElementTree.SubElement(tc, "system-out").text = str(case["message"])
    ElementTree.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + \
        ElementTree.tostring(root, encoding="unicode") + "\n"


def slo_cases(verdicts: list[dict[str, Any]], run: str = "") -> list[dict[str, Any]]:
    """JUnit cases of SLO verdicts: 'observed X, limit Y' as message."""
    cases = []
    for v in verdicts:
        unit = v.get("unit", "us")
        observed = "no data" if v.get("observed") is None else show_limit(v["observed"], unit)
        relation = ">=" if v.get("objective") in AT_LEAST else "<="
        message = f"{v['name']}: observed {observed}, limit {relation} {show_limit(v['limit'], unit)}"
        if v.get("window_start_s") is not None:
            message += f" (worst window from {fmt_seconds(v['window_start_s'])})"
        cases.append({"name": v["name"], "ok": bool(v["ok"]), "message": message,
                      "classname": f"loadforge.slo.{run}" if run else "loadforge.slo",
                      "details": json.dumps(v, indent=2)})
    return cases


def write_junit(path: str, suite: str, cases: list[dict[str, Any]]) -> None:
    write_output(path, junit_xml(suite, cases), "--junit")


def gate_cases(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # `share[*]` checks each backend: the figure (share[b3]) keeps the case names apart.
    return [{"name": f"{c['gate']} {c['stage']} {c['run']}"
             + (f" {c['figure']}" if c.get("scope") == "*" else ""),
             "ok": c["ok"],
             "message": c["message"], "classname": "loadforge.compare",
             "details": json.dumps(c, indent=2)} for c in checks]
