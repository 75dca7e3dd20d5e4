"""Just enough of GitHub Actions to check and play our workflow offline.

An expression evaluator for ``${{ }}`` that follows GitHub's documented semantics
(docs: "Evaluate expressions in workflows and actions"): literals, context paths,
``!``, ``<``, ``<=``, ``>``, ``>=``, ``==``, ``!=``, ``&&`` and ``||`` returning
their operands, loose equality that coerces mismatched types to numbers, strings
compared case-insensitively, falsy values false, 0, -0, '' and null only, and the
status functions. Anything else (other functions, indexing) is refused, never
guessed. A player runs a job's ``run:`` steps in order with bash, honouring
``if:``, ``continue-on-error``, ``timeout-minutes`` and step outcomes, and refuses
step or job keys it does not implement.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TOKEN = re.compile(
    r"\s*(?:(?P<op>\|\||&&|==|!=|<=|>=|<|>|\(|\)|!)|'(?P<str>(?:[^']|'')*)'"
    r"|(?P<num>-?\d+(?:\.\d+)?)|(?P<name>[A-Za-z_][\w.-]*(?:\(\))?))"
)
_EMBEDDED = re.compile(r"\$\{\{(.*?)\}\}", re.S)
STATUS_FUNCTIONS = ("success()", "failure()", "always()", "cancelled()")
# What the player implements; other keys are refused rather than silently ignored.
# Job keys that only schedule a job on GitHub (runner, environment, permissions...)
# do not change what its steps do here.
STEP_KEYS = {
    "name",
    "id",
    "if",
    "run",
    "uses",
    "with",
    "env",
    "continue-on-error",
    "timeout-minutes",
    "working-directory",
}
JOB_KEYS = {
    "name",
    "needs",
    "if",
    "runs-on",
    "timeout-minutes",
    "environment",
    "permissions",
    "outputs",
    "env",
    "steps",
    "defaults",  # only run.working-directory, as at the workflow's top level
    "strategy",  # a matrix job is played once per entry, with the entry as context["matrix"]
    "services",  # the test starts the database and points the workflow's env at it
}


def _tokens(text: str) -> list[tuple[str, Any]]:
    tokens, position = [], 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise ValueError(f"cannot parse expression near {text[position:]!r}")
        position = match.end()
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
    return tokens


def truthy(value: Any) -> bool:
    """GitHub's falsy values: false, 0, -0, '' and null; everything else ('false' too) is true."""
    if value is None or value is False:
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value != 0
    return value != ""


def to_number(value: Any) -> float:
    """GitHub's coercion for comparing mismatched types: null 0, booleans 1/0, strings
    parsed as JSON numbers ('' is 0), anything else NaN."""
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return 0.0
        if re.fullmatch(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?|0x[0-9a-fA-F]+", text):
            return float(int(text, 16)) if text.startswith("0x") else float(text)
        return math.nan
    return math.nan


def compare(op: str, left: Any, right: Any) -> bool:
    """``==`` ``!=`` ``<`` ``<=`` ``>`` ``>=`` as GitHub evaluates them."""
    if isinstance(left, str) and isinstance(right, str):
        a: Any = left.lower()
        b: Any = right.lower()
    elif isinstance(left, dict | list) or isinstance(right, dict | list):
        if op not in ("==", "!="):
            return False
        return (left is right) == (op == "==")
    else:
        a, b = to_number(left), to_number(right)
    if isinstance(a, float) and (math.isnan(a) or math.isnan(b)):
        return op == "!="
    return {
        "==": a == b,
        "!=": a != b,
        "<": a < b,
        "<=": a <= b,
        ">": a > b,
        ">=": a >= b,
    }[op]


class Evaluator:
    def __init__(self, context: dict[str, Any], status: str = "success") -> None:
        self.context = context
        self.status = status

    def evaluate(self, text: str) -> Any:
        self.tokens = _tokens(text)
        self.index = 0
        value = self._or()
        if self.index != len(self.tokens):
            raise ValueError(f"unexpected {self.tokens[self.index]} in {text!r}")
        return value

    def _peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _take(self) -> tuple[str, Any]:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def _or(self) -> Any:
        left = self._and()
        while self._peek() == ("op", "||"):
            self._take()
            right = self._and()
            left = left if truthy(left) else right
        return left

    def _and(self) -> Any:
        left = self._eq()
        while self._peek() == ("op", "&&"):
            self._take()
            right = self._eq()
            left = right if truthy(left) else left
        return left

    def _eq(self) -> Any:
        left = self._unary()
        while self._peek() in tuple(("op", o) for o in ("==", "!=", "<", "<=", ">", ">=")):
            op = self._take()[1]
            right = self._unary()
            left = compare(op, left, right)
        return left

    def _unary(self) -> Any:
        if self._peek() == ("op", "!"):
            self._take()
            return not truthy(self._unary())
        return self._primary()

    def _primary(self) -> Any:
        kind, value = self._take()
        if (kind, value) == ("op", "("):
            inner = self._or()
            self._take()
            return inner
        if kind == "str":
            return value.replace("''", "'")
        if kind == "num":
            return float(value)
        if value.endswith("()") and value not in STATUS_FUNCTIONS:
            raise ValueError(f"the function {value} is not implemented by this player")
        if value in ("true", "false"):
            return value == "true"
        if value == "null":
            return None
        if value in STATUS_FUNCTIONS:
            return {
                "success()": self.status == "success",
                "failure()": self.status == "failure",
                "always()": True,
                "cancelled()": False,
            }[value]
        current: Any = self.context
        for part in value.split("."):
            current = current.get(part) if isinstance(current, dict) else None
        return current


def render(text: str, context: dict[str, Any]) -> str:
    """Replace each ``${{ }}`` in ``text`` with its value, as GitHub does."""

    def value(match: re.Match[str]) -> str:
        result = Evaluator(context).evaluate(match.group(1))
        if isinstance(result, bool):
            return "true" if result else "false"
        return "" if result is None else str(result)

    return _EMBEDDED.sub(value, str(text))


def condition(text: str | None, context: dict[str, Any], status: str) -> bool:
    """An ``if:``; without a status function GitHub adds ``success() &&``."""
    if text is None:
        return status == "success"
    expression = str(text).strip()
    match = _EMBEDDED.fullmatch(expression)
    if match:
        expression = match.group(1)
    if not any(f in expression for f in STATUS_FUNCTIONS):
        expression = f"success() && ({expression})"
    return truthy(Evaluator(context, status).evaluate(expression))


@dataclass
class JobRun:
    status: str = "success"
    outcomes: dict[str, str] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)


def play_job(
    workflow: dict[str, Any],
    job_name: str,
    context: dict[str, Any],
    workdir: Path,
    base_env: dict[str, str],
    skip_run: tuple[str, ...] = (),
) -> JobRun:
    """Run a job's ``run:`` steps; ``uses:`` steps are recorded (uploads) but not run."""
    job = workflow["jobs"][job_name]
    unknown = set(job) - JOB_KEYS
    if unknown:
        raise ValueError(f"job {job_name}: keys this player does not implement: {unknown}")
    env = dict(base_env)
    context = {**context, "env": env, "steps": {}}
    for key, raw in (workflow.get("env") or {}).items():
        env[key] = render(raw, context)
    for key, raw in (job.get("env") or {}).items():
        env[key] = render(raw, context)
    run = JobRun()
    defaults = {
        **((workflow.get("defaults") or {}).get("run") or {}),
        **((job.get("defaults") or {}).get("run") or {}),
    }
    if set(defaults) - {"working-directory"}:
        raise ValueError(f"job {job_name}: run defaults this player does not implement")
    for index, step in enumerate(job["steps"]):
        name = step.get("name", f"step {index}")
        unknown = set(step) - STEP_KEYS
        if unknown:
            raise ValueError(f"step {name!r}: keys this player does not implement: {unknown}")
        step_outputs: dict[str, str] = {}
        if not condition(step.get("if"), context, run.status):
            outcome = "skipped"
        elif "uses" in step:
            if "upload-artifact" in step["uses"]:
                with_ = {k: render(v, context) for k, v in step.get("with", {}).items()}
                run.uploads.append(with_)
            outcome = "success"
        elif any(marker in step["run"] for marker in skip_run):
            outcome = "success"
        else:
            step_env = env | {k: render(v, context) for k, v in (step.get("env") or {}).items()}
            output_file = tempfile.NamedTemporaryFile("r", suffix=".github_output")  # noqa: SIM115
            step_env["GITHUB_OUTPUT"] = output_file.name
            done = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", step["run"]],
                cwd=workdir / step.get("working-directory", defaults.get("working-directory", ".")),
                env=step_env,
                capture_output=True,
                text=True,
                timeout=float(step.get("timeout-minutes", 5)) * 60,
                check=False,
            )
            run.logs[name] = done.stdout + done.stderr
            step_outputs = dict(
                line.split("=", 1) for line in output_file.read().splitlines() if "=" in line
            )
            output_file.close()
            outcome = "success" if done.returncode == 0 else "failure"
            if outcome == "failure" and not truthy(step.get("continue-on-error", False)):
                run.status = "failure"
        run.outcomes[name] = outcome
        if "id" in step:
            context["steps"][step["id"]] = {
                "outcome": outcome,
                "conclusion": "success"
                if outcome == "failure" and truthy(step.get("continue-on-error", False))
                else outcome,
                "outputs": step_outputs,
            }
    run.outputs = {k: render(v, context) for k, v in (job.get("outputs") or {}).items()}
    return run


def os_path_with(*folders: Path) -> str:
    return os.pathsep.join([*(str(f) for f in folders), os.environ.get("PATH", "")])
