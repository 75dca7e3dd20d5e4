"""README's promises that CI depends on."""

from __future__ import annotations

import copy
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_quick_start_has_exactly_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2
    assert "invoke migrate" in commands[0] and "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quick_start_commands()[1] in ci


def test_readme_names_every_task_and_flag() -> None:
    from safe_migrations.commands import ns

    text = (ROOT / "README.md").read_text()
    for name, task in ns.tasks.items():
        assert f"invoke {name}" in text, name
        for argument in copy.deepcopy(task).get_arguments():  # invoke 3 pops its help
            flag = "--" + argument.names[0].strip("_").replace("_", "-")
            assert flag in text, f"invoke {name} {flag}"


def test_the_readme_engine_table_is_what_the_engines_say() -> None:
    """The table of what each engine does comes from the engine classes; after changing
    one, `python -m safe_migrations.engines.table README.md` rewrites the README's copy."""
    from safe_migrations.engines import table

    readme = (ROOT / "README.md").read_text()
    assert table.in_readme(readme) == table.render()
    assert table.render().count("\n") == len(table.ROWS) + 1  # every row, every engine
