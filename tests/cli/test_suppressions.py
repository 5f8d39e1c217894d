"""``switchboard suppressions``: list, add, remove, import and export the opt-out list (on a SQLite store)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from worker.store import open_stores
from worker.suppressions import suppressions

NUMBER = "+18885551234"


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/store.sqlite3"


@pytest.fixture
def cli(store_url: str) -> CliRunner:
    return CliRunner(env={"SWITCHBOARD_STORE_URL": store_url})


def run(cli: CliRunner, *args: str, stdin: str | None = None) -> Result:
    return cli.invoke(suppressions, list(args), input=stdin, catch_exceptions=False)


def stored(store_url: str, account: str | None = None) -> list[dict[str, object]]:
    """What the store itself holds, read without the CLI."""

    async def read() -> list[dict[str, object]]:
        stores = await open_stores(store_url, retention_seconds=60)
        try:
            return await stores.suppressions.list(account)
        finally:
            await stores.close()

    return asyncio.run(read())


class TestAddRemoveList:
    def test_add_normalises_and_persists(self, cli: CliRunner, store_url: str) -> None:
        """add stores the number in E.164 with reason and source; the store has it after the CLI exits."""
        result = run(
            cli, "add", "+1 (888) 555-1234", "--account", "east", "--reason", "STOP", "--source", "support"
        )
        assert result.exit_code == 0, result.output
        assert result.stdout == ""
        assert "+18885551234" in result.stderr
        [row] = stored(store_url)
        assert (row["account"], row["number"], row["reason"], row["source"]) == (
            "east",
            NUMBER,
            "STOP",
            "support",
        )

    def test_add_invalid_number_fails(self, cli: CliRunner, store_url: str) -> None:
        """An invalid number exits 2 with the reason and stores nothing."""
        result = run(cli, "add", "+1555")
        assert result.exit_code == 2
        assert "not a valid phone number" in result.stderr
        assert stored(store_url) == []

    def test_national_number_needs_a_region(self, cli: CliRunner, store_url: str) -> None:
        """A national number is refused without --region and read in that country with it."""
        assert run(cli, "add", "(888) 555-1234").exit_code == 2
        assert run(cli, "add", "(888) 555-1234", "--region", "US").exit_code == 0
        assert [row["number"] for row in stored(store_url)] == [NUMBER]

    def test_remove(self, cli: CliRunner, store_url: str) -> None:
        """remove takes a number off its account's list; a number not on it exits 1."""
        run(cli, "add", NUMBER)
        run(cli, "add", NUMBER, "--account", "west")
        assert run(cli, "remove", NUMBER).exit_code == 0
        assert [row["account"] for row in stored(store_url)] == ["west"]
        missing = run(cli, "remove", NUMBER)
        assert missing.exit_code == 1
        assert "not suppressed" in missing.stderr

    def test_list_text_and_json(self, cli: CliRunner) -> None:
        """list prints one line per number on stdout (the count on stderr); --json gives ISO times."""
        run(cli, "add", NUMBER, "--account", "b")
        run(cli, "add", "+18885550000", "--account", "a", "--reason", "complaint")
        text = run(cli, "list")
        assert [line.split("\t")[:3] for line in text.stdout.splitlines()] == [
            ["a", "+18885550000", "complaint"],
            ["b", NUMBER, "opt-out"],
        ]
        assert "2 suppressed" in text.stderr
        rows = orjson.loads(run(cli, "list", "--json", "--account", "b").stdout)
        assert [row["number"] for row in rows] == [NUMBER]
        assert rows[0]["created_at"].endswith("Z")
        assert set(rows[0]) == {"account", "number", "reason", "source", "created_at"}

    def test_unusable_store_fails(self, tmp_path: Path) -> None:
        """A store URL that cannot be opened exits non-zero with a message."""
        cli = CliRunner(env={"SWITCHBOARD_STORE_URL": "postgresql://postgres@127.0.0.1:1/none"})
        result = run(cli, "list")
        assert result.exit_code == 1
        assert "cannot open the store" in result.stderr


class TestImport:
    def test_import_reports_bad_lines_and_imports_the_rest(
        self, cli: CliRunner, store_url: str, tmp_path: Path
    ) -> None:
        """Bad rows are reported with their line numbers and exit 1; the good rows are imported."""
        path = tmp_path / "optouts.csv"
        path.write_text(
            "number,reason,source,created_at\n"
            "+18885551234,STOP,carrier,2024-03-01T12:00:00Z\n"
            "not-a-number,STOP,carrier,\n"
            "+1 888 555 0000,,,\n"
            "+18885559999,STOP,carrier,yesterday\n"
        )
        result = run(cli, "import", str(path), "--account", "east")
        assert result.exit_code == 1
        assert "line 3:" in result.stderr and "line 5:" in result.stderr
        assert "line 2:" not in result.stderr and "line 4:" not in result.stderr
        rows = {row["number"]: row for row in stored(store_url, "east")}
        assert set(rows) == {NUMBER, "+18885550000"}
        assert (rows[NUMBER]["reason"], rows[NUMBER]["source"]) == ("STOP", "carrier")
        assert rows[NUMBER]["created_at"] == 1709294400.0
        assert (rows["+18885550000"]["reason"], rows["+18885550000"]["source"]) == ("opt-out", "import")

    def test_dry_run_imports_nothing(self, cli: CliRunner, store_url: str, tmp_path: Path) -> None:
        """--dry-run checks the file and reports, but the store stays empty."""
        path = tmp_path / "optouts.csv"
        path.write_text("number\n+18885551234\n+18885550000\n")
        result = run(cli, "import", str(path), "--dry-run")
        assert result.exit_code == 0
        assert "2 number(s) would be imported" in result.stderr
        assert stored(store_url) == []

    def test_dry_run_still_reports_bad_lines(self, cli: CliRunner, tmp_path: Path) -> None:
        """A dry run over a file with bad lines names them and exits 1."""
        path = tmp_path / "optouts.csv"
        path.write_text("number\n+18885551234\n12\n")
        result = run(cli, "import", str(path), "--dry-run")
        assert result.exit_code == 1
        assert "line 3:" in result.stderr

    def test_headerless_list_of_numbers_from_stdin(self, cli: CliRunner, store_url: str) -> None:
        """A plain list of numbers without a header, on stdin, is imported (duplicates once)."""
        result = run(
            cli, "import", "-", "--region", "US", stdin="8885551234\n+18885550000\n(888) 555-1234\n\n"
        )
        assert result.exit_code == 0, result.stderr
        assert "imported 2" in result.stderr
        assert sorted(str(row["number"]) for row in stored(store_url)) == ["+18885550000", NUMBER]

    def test_unknown_column_imports_nothing(self, cli: CliRunner, store_url: str, tmp_path: Path) -> None:
        """A header with a column we do not know is refused whole (it may be a different file)."""
        path = tmp_path / "optouts.csv"
        path.write_text("number,phone_type\n+18885551234,mobile\n")
        result = run(cli, "import", str(path))
        assert result.exit_code == 1
        assert "unknown column" in result.stderr
        assert stored(store_url) == []

    def test_account_column_wins(self, cli: CliRunner, store_url: str, tmp_path: Path) -> None:
        """Rows naming an account go there; rows without one go to --account."""
        path = tmp_path / "optouts.csv"
        path.write_text("number,account\n+18885551234,west\n+18885550000,\n")
        assert run(cli, "import", str(path), "--account", "east").exit_code == 0
        assert {(row["account"], row["number"]) for row in stored(store_url)} == {
            ("west", NUMBER),
            ("east", "+18885550000"),
        }


class TestExport:
    def test_export_to_stdout(self, cli: CliRunner) -> None:
        """export writes CSV with a header to stdout and the count to stderr."""
        run(cli, "add", NUMBER, "--reason", "STOP", "--source", "webhook")
        result = run(cli, "export")
        assert result.exit_code == 0
        header, line = result.stdout.splitlines()
        assert header == "number,reason,source,created_at,account"
        assert line.startswith(f"{NUMBER},STOP,webhook,") and line.endswith("Z,default")
        assert "exported 1" in result.stderr

    def test_export_then_import_round_trips(self, cli: CliRunner, store_url: str, tmp_path: Path) -> None:
        """A list exported and imported into another store is the same list, opt-out times included."""
        run(cli, "add", NUMBER, "--account", "east", "--reason", "STOP", "--source", "webhook")
        run(cli, "add", "+18885550000", "--account", "west")
        path = tmp_path / "export.csv"
        assert run(cli, "export", str(path)).exit_code == 0
        other_url = f"sqlite:///{tmp_path}/other.sqlite3"
        other = CliRunner(env={"SWITCHBOARD_STORE_URL": other_url})
        assert run(other, "import", str(path)).exit_code == 0
        original, copied = stored(store_url), stored(other_url)
        assert len(copied) == 2
        for before, after in zip(original, copied, strict=True):
            assert {**after, "created_at": None} == {**before, "created_at": None}
            assert after["created_at"] == pytest.approx(before["created_at"], abs=0.001)  # ms precision

    def test_export_one_account(self, cli: CliRunner) -> None:
        """export --account writes only that account's numbers."""
        run(cli, "add", NUMBER, "--account", "east")
        run(cli, "add", "+18885550000", "--account", "west")
        lines = run(cli, "export", "--account", "west").stdout.splitlines()
        assert len(lines) == 2 and lines[1].startswith("+18885550000,")
