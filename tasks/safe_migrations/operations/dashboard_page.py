"""The dashboard's page: one self-contained HTML file (inline CSS, SVG and a filter
script; nothing loaded from elsewhere), autoescaped by Jinja so no revision message or
environment name becomes markup. Each run's report is rendered beside it as HTML, in
``<page>-reports/``, so the timeline's links work from an artifact or a disk."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safe_migrations.operations.dashboard import View, age

TEMPLATE = "dashboard.html.j2"
EXCLUSIVE = ("ACCESS EXCLUSIVE", "EXCLUSIVE")  # the modes that stop reads or writes


def write_page(views: list[View], output: Path, offline: bool) -> Path:
    """Render the page into ``output`` with its run reports."""
    from safe_migrations.core.files import write_atomic
    from safe_migrations.pipeline.report import jinja_environment

    now = datetime.now(UTC)
    folder = output.parent / f"{output.stem}-reports"
    links = _write_reports(views, folder)
    page = (
        jinja_environment(True)
        .get_template(TEMPLATE)
        .render(
            views=views,
            groups=_groups(views),
            summary=summary(views),
            rehearsals=[(v, v.rehearsals[0]) for v in views if v.rehearsals],
            links={name: f"{folder.name}/{file}" for name, file in links.items()},
            age=lambda moment: age(moment, now),
            bars=bars,
            generated=now.strftime("%Y-%m-%d %H:%M:%S"),
            offline=offline,
        )
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(output, page)
    return output


def summary(views: list[View]) -> dict[str, int]:
    """The counts the page opens with."""
    return {
        "databases": len(views),
        "behind": sum(1 for v in views if v.behind),
        "failed": sum(1 for v in views if v.last_run and not v.last_run.get("success")),
        "unreachable": sum(1 for v in views if v.state == "unreachable"),
    }


def _groups(views: list[View]) -> list[tuple[str, list[View]]]:
    """Databases by environment file, in the order given: a fleet's members together."""
    groups: dict[str, list[View]] = {}
    for view in views:
        groups.setdefault(view.group, []).append(view)
    return list(groups.items())


def _write_reports(views: list[View], folder: Path) -> dict[str, str]:
    """Each view's recent reports as HTML in ``folder``; report name -> file name."""
    from safe_migrations.core.files import write_atomic
    from safe_migrations.pipeline.report import render

    links: dict[str, str] = {}
    for view in views:
        for name, report in view.reports.items():
            if not links:
                folder.mkdir(parents=True, exist_ok=True)
            file = Path(name).with_suffix(".html").name
            write_atomic(folder / file, render(report, "report.html.j2"))
            links[name] = file
    return links


def bars(rehearsal: dict[str, Any]) -> dict[str, Any]:
    """One bar per revision: its longest exclusive hold, scaled against the policy line."""
    limit = (rehearsal.get("limits") or {}).get("max_exclusive_lock_ms")
    rows = []
    for revision in rehearsal.get("revisions") or []:
        holds = [
            lock.get("held_ms") or 0
            for lock in revision.get("locks") or []
            if str(lock.get("mode")) in EXCLUSIVE
        ]
        rows.append(
            {
                "revision": revision.get("revision") or "?",
                "message": revision.get("message") or "",
                "held_ms": max(holds, default=0),
                "duration_ms": revision.get("duration_ms") or 0,
                "verdict": revision.get("verdict") or "",
            }
        )
    top = max([int(r["held_ms"]) for r in rows] + [int(limit or 0), 1])
    return {"rows": rows, "limit": limit, "scale": 300 / top}
