"""``invoke dashboard`` (issue 30), built from real runs on PostgreSQL and SQLite and
opened in Debian's headless Chromium (the system binary, driven by Playwright): every
database's current revision and the failed run in the DOM, nothing requested from
outside the page, a screenshot that is not blank, and user text that stays text.

``SAFE_MIGRATIONS_DASHBOARD_PNG=tests/dashboard.png`` keeps the screenshot (README's)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import ScratchProject, run_invoke
from sqlalchemy.engine import make_url

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2"> & co'
TENANTS = [f"t{i}" for i in range(1, 7)]


PG_URL = "postgresql+psycopg2://${PG_USER}:${PG_PASSWORD}@${PG_HOST}:${PG_PORT}/${PG_DB}"


def environment(folder: Path, name: str, var: Path, url: str, **sections: object) -> None:
    data: dict[str, object] = {
        "database": {"url": url, "connect_timeout": 5},
        "backup": {"folder": str(var / "backups" / name)},
        "reports": {"folder": str(var / "reports")},
        "policy": {"confirm": "never", "max_exclusive_lock_ms": 300},
        "migration": {"lock_timeout": 1, "lock_wait": 5},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)  # type: ignore[attr-defined]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yml").write_text(yaml.safe_dump(data))


@pytest.fixture
def runs(tmp_path: Path, pg_url: str, scratch: ScratchProject) -> dict[str, str]:
    """staging (PostgreSQL, the example history, a backup and a rehearsal), qa (SQLite,
    a revision that fails) and a fleet of six SQLite tenants, four of them migrated."""
    folder, var = tmp_path / "environments", tmp_path / "var"
    environment(folder, "staging", var, PG_URL, backup={"prove": "restore"})
    scratch.add('op.create_table("qa", sa.Column("id", sa.Integer, primary_key=True))')
    scratch.add('raise RuntimeError("the data is not ready")', message=HOSTILE)
    qa = f"sqlite:///{tmp_path / 'qa.db'}"
    environment(folder, "qa", var, qa, alembic={"script_location": str(scratch.folder)})
    fleet = {t: f"sqlite:///{tmp_path / t}.db" for t in TENANTS}
    environment(folder, "tenants", var, "", fleet={"jobs": 2, "databases": fleet})
    parts = make_url(pg_url)
    variables = {
        "MIGRATE_ENVIRONMENTS_DIR": str(folder),
        "PG_USER": parts.username or "",
        "PG_PASSWORD": parts.password or "",
        "PG_HOST": parts.host or "",
        "PG_PORT": str(parts.port or 5432),
        "PG_DB": parts.database or "",
    }
    steps = [
        ("migrate", "--env", "staging", "--revision", "0005", "--no-backup"),
        ("rehearse", "--env", "staging"),
        ("migrate", "--env", "staging", "--backup"),
        ("migrate", "--env", "tenants", "--only", "t1,t2,t3,t4", "--no-backup"),
    ]
    for step in steps:
        done = run_invoke(*step, env=variables)
        assert done.returncode == 0, f"{step}: {done.stdout}{done.stderr}"
    failed = run_invoke("migrate", "--env", "qa", "--no-backup", env=variables)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    return variables


def open_page(path: Path, screenshot: Path | None = None):  # noqa: ANN201 - a test helper
    """The page's text per database row, every request it made, and the screenshot."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM:
        message = "chromium is not installed (apt-get install chromium; .ci/run does)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(path.as_uri())
        rows = {  # database -> its cells: name, current, head, pending, last run, ...
            row.get_attribute("data-name"): row.locator("td").all_inner_texts()
            for row in page.locator("tr.db").all()
        }
        found = {
            "rows": rows,
            "requests": [url for url in requests if url != path.as_uri()],
            "scripts": page.locator("script").count(),
            "images": page.locator("img").count(),
            "pwned": page.evaluate("window.pwned === undefined ? null : window.pwned"),
            "png": page.screenshot(full_page=True),
        }
        page.fill("#filter", "t5")
        found["filtered"] = sorted(
            row.get_attribute("data-name")
            for row in page.locator("tr.db").all()
            if row.is_visible()
        )
        page.fill("#filter", "")
        page.check("#behind")
        found["attention"] = sorted(
            row.get_attribute("data-name")
            for row in page.locator("tr.db").all()
            if row.is_visible()
        )
        found["bars"] = page.locator("svg.chart rect").count()
        browser.close()
    if screenshot is not None:
        screenshot.write_bytes(found["png"])
    return found


def distinct_colours(png: bytes) -> int:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    return len(image.resize((200, 200)).getcolors(maxcolors=200 * 200) or [])


def test_the_dashboard_shows_every_database_in_a_real_browser(
    runs: dict[str, str], tmp_path: Path
) -> None:
    page = tmp_path / "out" / "dashboard.html"
    made = run_invoke("dashboard", "--output", str(page), env=runs)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "8 database(s)" in made.stdout and "1 with a failed last run" in made.stdout
    kept = os.environ.get("SAFE_MIGRATIONS_DASHBOARD_PNG")
    seen = open_page(page, Path(kept) if kept else None)
    rows = seen["rows"]
    assert sorted(rows) == sorted(["staging", "qa", *(f"tenants.{t}" for t in TENANTS)])
    assert rows["staging"][1] == "0007" and rows["staging"][3] == "0"
    assert "upgrade succeeded" in rows["staging"][4] and "MB" in rows["staging"][6]
    assert "proven: restored in" in rows["staging"][6] and "and compared" in rows["staging"][6]
    assert rows["qa"][1] == "r001" and rows["qa"][2] == "r002" and rows["qa"][3] == "1"
    assert "upgrade FAILED" in rows["qa"][4] and "the data is not ready" in rows["qa"][4]
    for tenant in TENANTS[:4]:
        assert rows[f"tenants.{tenant}"][1:4] == ["0007", "0007", "0"]
    for tenant in TENANTS[4:]:  # never migrated: at base, the whole history pending
        assert rows[f"tenants.{tenant}"][1:4] == ["base", "0007", "7"]
    assert seen["requests"] == []  # everything inline: nothing fetched
    assert seen["scripts"] == 1 and seen["images"] == 0 and seen["pwned"] is None
    assert "<script>window.pwned=1</script>" in rows["qa"][4]  # shown as text
    assert distinct_colours(seen["png"]) > 10  # not a blank page
    assert seen["filtered"] == ["tenants.t5"]
    assert seen["attention"] == ["qa", "tenants.t5", "tenants.t6"]
    assert seen["bars"] >= 2  # one per rehearsed revision
    reports = list((page.parent / "dashboard-reports").glob("*.html"))
    assert reports and all("<script" not in p.read_text() for p in reports)


def test_offline_it_reads_only_files_and_says_so(runs: dict[str, str], tmp_path: Path) -> None:
    page = tmp_path / "offline.html"
    variables = {"MIGRATE_ENVIRONMENTS_DIR": runs["MIGRATE_ENVIRONMENTS_DIR"]}  # no URLs
    made = run_invoke("dashboard", "--offline", "--output", str(page), env=variables)
    assert made.returncode == 0, made.stdout + made.stderr
    text = page.read_text()
    assert "offline: revisions as the last run left them" in text
    assert "(last run)" in text and "tenants.t1" in text
    assert "no run on record" in text  # t5 and t6: named by the file, never migrated
    assert "database(s), 1 behind head, 1 with a failed last run, 0 unreachable" in made.stdout


def test_an_unreachable_database_is_shown_not_raised(runs: dict[str, str], tmp_path: Path) -> None:
    variables = runs | {"PG_PORT": "1", "PG_PASSWORD": "secret-pw"}
    page = tmp_path / "down.html"
    made = run_invoke("dashboard", "--env", "staging", "--output", str(page), env=variables)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "1 unreachable" in made.stdout and "Traceback" not in made.stderr
    text = page.read_text()
    assert "unreachable" in text and "Cannot reach the staging database" in text
    assert "secret-pw" not in text + made.stdout + made.stderr


def test_two_hundred_members_stay_readable_and_the_filter_finds_one(tmp_path: Path) -> None:
    """A fleet of 200 members, read live (SQLite files), grouped and filtered offline."""
    from playwright.sync_api import sync_playwright

    folder = tmp_path / "environments"
    fleet = {f"m{i:03d}": f"sqlite:///{tmp_path / f'm{i:03d}.db'}" for i in range(200)}
    environment(folder, "tenants", tmp_path / "var", "", fleet={"databases": fleet})
    page = tmp_path / "big.html"
    made = run_invoke(
        "dashboard", "--output", str(page), env={"MIGRATE_ENVIRONMENTS_DIR": str(folder)}
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert "200 database(s), 200 behind head" in made.stdout
    if not CHROMIUM:
        pytest.skip("chromium is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        view = browser.new_page()
        view.goto(page.as_uri())
        assert view.locator("summary").inner_text() == "fleet tenants (200)"
        view.fill("#filter", "m137")
        shown = [
            r.get_attribute("data-name") for r in view.locator("tr.db").all() if r.is_visible()
        ]
        browser.close()
    assert shown == ["tenants.m137"]
