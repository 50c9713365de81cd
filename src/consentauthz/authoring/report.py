"""Print policy test results for people, and as JUnit XML for CI."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TextIO

from .runner import RunResult


def print_report(run: RunResult, out: TextIO, *, verbose: bool = False,
                 coverage: bool = False) -> None:
    current = None
    for result in run.results:
        case = result.case
        if case.file != current:
            current = case.file
            print(f"{case.file}  {case.suite}", file=out)
        if result.passed and not verbose:
            continue
        mark = "PASS" if result.passed else "FAIL"
        print(f"  {mark}  {case.name}  ({case.file}:{case.line})", file=out)
        for problem in result.problems:
            print(f"        {problem}", file=out)
        if not result.passed and result.decision is not None:
            matched = result.decision.matched_rule
            print(f"        matched {matched if matched else '(no rule: deny by default)'}",
                  file=out)
            for line in result.decision.explanation:
                print(f"        | {line}", file=out)
    if coverage:
        print(f"rule coverage: {len(run.rules) - len(run.uncovered)}/{len(run.rules)} "
              f"({run.coverage:.1f}%)", file=out)
        for rule in run.uncovered:
            print(f"  not exercised: {rule.source}", file=out)
    print(f"{run.passed} passed, {run.failed} failed", file=out)


def write_junit(run: RunResult, path: Path) -> None:
    root = ET.Element("testsuites", name="consentauthz policy tests",
                      tests=str(len(run.results)), failures=str(run.failed))
    suites: dict[str, ET.Element] = {}
    for result in run.results:
        case = result.case
        suite = suites.get(case.file)
        if suite is None:
            suite = suites[case.file] = ET.SubElement(root, "testsuite", name=case.suite,
                                                      file=case.file)
        element = ET.SubElement(suite, "testcase", classname=case.file, name=case.name,
                                file=case.file, line=str(case.line))
        if not result.passed:
            failure = ET.SubElement(element, "failure", message=result.problems[0])
            failure.text = "\n".join(result.problems)
    for suite in suites.values():
        cases = suite.findall("testcase")
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
