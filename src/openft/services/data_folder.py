"""Opening a data folder with its database: folders, migrations, and the check that the two belong together.

The database is the source of truth for what the data folder holds: a stored file that no row points to
is an orphan, and the server deletes orphans on start. That is only safe with the right database. A
process that opens a PostgreSQL deployment's folder without `OPENFT_DATABASE_URL` (say `openft export`)
gets a new, empty SQLite database, to which every stored file looks like an orphan. So a data folder is
bound to one database: the database names itself (one `database_identity` row, made by its first
migration) and the folder records that name in `database.json` on first use. A process whose database
has another name refuses to start, naming both, before anything is read, written or swept.

A folder from before the binding (no `database.json`) is bound on first use, unless it plainly belongs
to another database: it holds stored files or job folders while the database has no file and no job
rows (a new database pointed at an old folder). Then the process refuses too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from openft.db import repositories as repo
from openft.db.engine import make_engine, make_session_factory
from openft.db.migrate import upgrade
from openft.fsutil import atomic_write_text, ensure_dir
from openft.settings import Settings

IDENTITY_FILE = "database.json"
"""In the data folder: `{"database_id": "db-…", "database_url": "<URL, password hidden>"}`."""


class DataFolderMismatch(RuntimeError):
    """The data folder belongs to another database than the one this process opened."""


@dataclass(frozen=True)
class OpenedDatabase:
    engine: Engine
    sessions: sessionmaker[Session]
    database_id: str


def open_database(settings: Settings) -> OpenedDatabase:
    """Create the data folders, migrate the database and bind (or check) the folder; DataFolderMismatch if
    the folder is another database's. Every process that uses a data folder starts here."""
    for folder in (settings.data_dir, settings.files_dir, settings.jobs_dir, settings.cache_dir):
        ensure_dir(folder)
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade(engine)
        sessions = make_session_factory(engine)
        database_id = bind_data_folder(settings, sessions)
    except BaseException:
        engine.dispose()
        raise
    return OpenedDatabase(engine, sessions, database_id)


def redacted_url(url: str) -> str:
    """The database URL as it may be shown and stored: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show none of it
        return "(unparseable database URL)"


def bind_data_folder(settings: Settings, sessions: sessionmaker[Session]) -> str:
    """Check the folder's recorded database against this one, recording it on first use; the database's id."""
    with sessions.begin() as session:
        database_id = repo.database_identity(session)
        rows = repo.count_files_and_jobs(session)
    url = redacted_url(settings.resolved_database_url)
    path = settings.data_dir / IDENTITY_FILE
    if path.exists():
        recorded = _read_identity(path)
        if recorded.get("database_id") != database_id:
            raise DataFolderMismatch(
                f"The data folder {settings.data_dir} belongs to database {recorded.get('database_id')} "
                f"(first used with {recorded.get('database_url')}), but this process opened database "
                f"{database_id} ({url}). Set OPENFT_DATABASE_URL to the folder's database, or use another "
                "data folder (OPENFT_DATA_DIR). Nothing was changed."
            )
        return database_id
    if rows == 0 and (held := _stored_entries(settings)):
        raise DataFolderMismatch(
            f"The data folder {settings.data_dir} holds {held} stored file(s) and job folder(s), but this "
            f"process opened database {database_id} ({url}), which has no file or job rows: probably not the "
            "folder's database. Set OPENFT_DATABASE_URL to the database the folder was used with, or use "
            f"another data folder. (To adopt the folder for this database anyway, write {path} as "
            f'{{"database_id": "{database_id}"}}.) Nothing was changed.'
        )
    atomic_write_text(path, json.dumps({"database_id": database_id, "database_url": url}, indent=1) + "\n")
    return database_id


def _read_identity(path: Path) -> dict[str, str]:
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataFolderMismatch(
            f"{path} cannot be read ({exc}): the data folder's database is unknown, so nothing is opened. "
            "Restore the file, or remove it to bind the folder to the configured database."
        ) from None
    if not isinstance(recorded, dict):
        raise DataFolderMismatch(f"{path} does not hold a JSON object naming the folder's database.")
    return {str(key): str(value) for key, value in recorded.items()}


def _stored_entries(settings: Settings) -> int:
    """Stored files and job folders in the data folder (hidden temp files aside)."""
    return sum(
        1
        for folder in (settings.files_dir, settings.jobs_dir)
        for entry in folder.iterdir()
        if not entry.name.startswith(".")
    )
