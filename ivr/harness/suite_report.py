"""What `ivr test` leaves behind: JUnit XML for CI, and a folder of reports for people.

`--report DIR` holds one folder per case (the harness's report.json, call.wav and timeline.html,
plus case.json: its failures, skips and what the caller heard turn by turn) and index.html,
which lists the failed cases first, each linked to its timeline.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson

from ivr.harness.suite import CaseResult

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def failure_text(result: CaseResult) -> str:
    if result.error:
        return result.error
    return "\n".join(line for f in result.failures for line in f.lines())


def junit_xml(results: list[CaseResult], suite_name: str = "ivr test") -> bytes:
    """One <testcase> per case; a failure's message is its first check, its text all of them
    with expected vs heard; checks skipped (no judge model) go to <system-out>."""
    root = ET.Element("testsuites")
    suite = ET.SubElement(root, "testsuite", {
        "name": suite_name,
        "tests": str(len(results)),
        "failures": str(sum(1 for r in results if r.failures and not r.error)),
        "errors": str(sum(1 for r in results if r.error)),
        "skipped": "0",
        "time": f"{sum(r.wall_s for r in results):.3f}",
    })
    for r in results:
        case = ET.SubElement(suite, "testcase", {
            # The case's folder, dotted as JUnit readers group by package: calls/orders -> calls.orders
            "classname": _UNSAFE.sub("_", r.case.path.parent.as_posix().replace("/", ".")).strip("._") or "calls",
            "name": r.case.name,
            "file": str(r.case.path),
            "time": f"{r.wall_s:.3f}",
        })
        if r.error:
            ET.SubElement(case, "error", {"message": r.error.splitlines()[0] if r.error else "error"}).text = r.error
        elif r.failures:
            first = r.failures[0]
            message = f"{first.where}: {first.what}: expected {first.expected}, heard {first.heard}"
            ET.SubElement(case, "failure", {"message": message, "type": first.what}).text = failure_text(r)
        if r.skips:
            ET.SubElement(case, "system-out").text = "\n".join(f"skipped: {s.where}: {s.what}: {s.reason}" for s in r.skips)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def case_folder(base: Path, result: CaseResult, taken: set[str]) -> Path:
    name = _UNSAFE.sub("_", result.case.path.stem) or "case"
    unique, n = name, 1
    while unique in taken:
        n += 1
        unique = f"{name}-{n}"
    taken.add(unique)
    return base / unique


def case_json(result: CaseResult) -> dict:
    o = result.outcome
    return {
        "case": result.case.name,
        "file": str(result.case.path),
        "passed": result.passed,
        "error": result.error,
        "failures": [vars(f) for f in result.failures],
        "skipped": [vars(s) for s in result.skips],
        "greeting": vars(o.greeting) if o else None,
        "replies": [vars(r) for r in o.replies] if o else [],
        "tools": o.tools if o else [],
        "events": result.events,
    }


def write_report_dir(results: list[CaseResult], out: Path) -> Path:
    from ivr.harness.run import write_outputs

    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    rows = []
    for r in sorted(results, key=lambda r: (r.passed, r.case.name)):
        folder = case_folder(out, r, taken)
        folder.mkdir(parents=True, exist_ok=True)
        if r.record is not None and r.report is not None:
            write_outputs(r.record, r.report, folder)
        (folder / "case.json").write_bytes(orjson.dumps(case_json(r), option=orjson.OPT_INDENT_2) + b"\n")
        rows.append(_row(r, folder.name))
    index = out / "index.html"
    failed = sum(not r.passed for r in results)
    title = f"ivr test: {len(results) - failed} passed, {failed} failed"
    index.write_text(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>"
        "body{font:15px/1.45 system-ui,sans-serif;margin:1.2rem;color:#1d2430}"
        "table{border-collapse:collapse}th,td{text-align:left;padding:.35rem .7rem;border-bottom:1px solid #e3e6eb;vertical-align:top}"
        ".fail{color:#b42318;font-weight:600}.pass{color:#1f7a45}pre{margin:0;white-space:pre-wrap;font-size:.85rem}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table><thead><tr><th>case</th><th>result</th><th>what went wrong</th>"
        "<th>files</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></body></html>\n",
        encoding="utf-8",
    )
    return index


def _row(r: CaseResult, folder: str) -> str:
    status = '<span class="pass">passed</span>' if r.passed else '<span class="fail">failed</span>'
    details = html.escape(failure_text(r)) if not r.passed else ""
    if r.skips:
        details += html.escape("\n".join(f"skipped: {s.where}: {s.what}" for s in r.skips))
    links = [f'<a href="{folder}/case.json">case.json</a>']
    if r.record is not None:
        links = [f'<a href="{folder}/timeline.html">timeline</a>', f'<a href="{folder}/call.wav">call.wav</a>',
                 f'<a href="{folder}/report.json">report.json</a>'] + links
    name = f'<a href="{folder}/timeline.html">{html.escape(r.case.name)}</a>' if r.record is not None else html.escape(r.case.name)
    return (f"<tr><td>{name}<div><small>{html.escape(str(r.case.path))}</small></div></td><td>{status}</td>"
            f"<td><pre>{details}</pre></td><td>{' · '.join(links)}</td></tr>")
