"""The workflow player's expression evaluator follows GitHub's documented semantics
(docs.github.com, "Evaluate expressions in workflows and actions": literals,
operators, "GitHub performs loose equality comparisons", falsy values)."""

from __future__ import annotations

import pytest
from ghactions import Evaluator, condition, play_job, render


def value(expression: str, **context: object) -> object:
    return Evaluator(dict(context)).evaluate(expression)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("null == 0", True),  # null coerces to 0
        ("true == 1", True),  # booleans coerce to 1 and 0
        ("false == 0", True),
        ("true == 'true'", False),  # 'true' is not a number: NaN equals nothing
        ("'1' == 1", True),  # strings are parsed as numbers when types differ
        ("'' == 0", True),  # the empty string is 0
        ("'0x10' == 16", True),
        ("'abc' == 'ABC'", True),  # string comparison ignores case
        ("'abc' != 'abd'", True),
        ("'abc' == 1", False),
        ("'abc' != 1", True),
        ("1 < 2", True),
        ("'2' > 1", True),
        ("2 >= 2", True),
        ("1 <= 0", False),
    ],
)
def test_loose_equality_and_comparison_as_documented(expression: str, expected: bool) -> None:
    assert value(expression) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("!false", True),
        ("!0", True),
        ("!''", True),
        ("!null", True),
        ("!'false'", False),  # a non-empty string is truthy, whatever it says
        ("!'0'", False),
        ("!1", False),
    ],
)
def test_falsy_values_are_false_zero_empty_and_null_only(expression: str, expected: bool) -> None:
    assert value(expression) is expected


def test_and_or_return_their_operands() -> None:
    assert value("'a' && 'b'") == "b"
    assert value("'' || 'x'") == "x"
    assert value("null && 'x'") is None
    main = "github.ref == 'refs/heads/main' && 'value_for_main' || 'value_for_others'"
    assert value(main, github={"ref": "refs/heads/main"}) == "value_for_main"
    assert value(main, github={"ref": "refs/heads/dev"}) == "value_for_others"


def test_a_string_input_false_is_truthy_as_on_github() -> None:
    """github.event.inputs.* are strings: 'false' would still take the backup branch."""
    flag = "github.event.inputs.skip_backup && '--no-backup-if-allowed' || '--backup'"
    context = {"github": {"event": {"inputs": {"skip_backup": "false"}}}}
    assert render("${{ " + flag + " }}", context) == "--no-backup-if-allowed"
    assert (
        render("${{ inputs.skip_backup && 'skip' || 'keep' }}", {"inputs": {"skip_backup": False}})
        == "keep"
    )


def test_status_functions_and_implicit_success() -> None:
    assert condition(None, {}, "success") and not condition(None, {}, "failure")
    assert condition("failure()", {}, "failure") and condition("always()", {}, "failure")
    assert not condition("github.ref == 'x'", {"github": {"ref": "x"}}, "failure")


@pytest.mark.parametrize(
    "expression", ["contains(github.ref, 'main')", "github['ref']", "format('{0}', 1)"]
)
def test_what_is_not_implemented_is_refused(expression: str) -> None:
    with pytest.raises(ValueError):
        value(expression, github={"ref": "main"})


def test_unknown_step_keys_are_refused(tmp_path: object) -> None:
    workflow = {"jobs": {"j": {"steps": [{"name": "s", "run": "true", "shell": "python"}]}}}
    with pytest.raises(ValueError, match="shell"):
        play_job(workflow, "j", {}, tmp_path, {})  # type: ignore[arg-type]


def test_continue_on_error_keeps_the_job_green(tmp_path: object) -> None:
    steps = [
        {"name": "fails", "id": "f", "run": "false", "continue-on-error": True},
        {"name": "next", "run": "true"},
    ]
    run = play_job({"jobs": {"j": {"steps": steps}}}, "j", {}, tmp_path, {"PATH": "/usr/bin:/bin"})  # type: ignore[arg-type]
    assert run.status == "success" and run.outcomes == {"fails": "failure", "next": "success"}
