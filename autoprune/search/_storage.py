"""Study storage: URLs (masked in every message), opening studies, and the driver lease.

Only the driver touches the storage. A *lease* in the study's user attrs (``driver_lease``:
driver id, host, pid, heartbeat time) keeps a second driver off a live study; a heartbeat
thread renews it every few seconds. A lease is stale (and may be taken over) when its
heartbeat is older than ``LEASE_TIMEOUT_S`` or when its driver process on this host is gone.

Example:
    >>> mask_url("postgresql://bob:secret@db.example:5432/studies")
    'postgresql://bob:***@db.example:5432/studies'
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from autoprune.errors import StudyError

log = logging.getLogger("autoprune.search")

ATTR_LEASE = "driver_lease"
LEASE_TIMEOUT_S = float(os.environ.get("AUTOPRUNE_LEASE_TIMEOUT", "30"))
HEARTBEAT_S = 3.0

# scheme://user:password@ ; the character classes stop at quotes and angle brackets so that
# masking a whole HTML page never swallows markup
_PW = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@\s'\"<>]+:)[^@/\s'\"<>]*@")


def mask_url(url: str | None) -> str:
    """Hide the password of a storage URL, or of every URL in a text: ``scheme://user:***@host/db``.

    Example:
        >>> mask_url("see mysql+pymysql://u:p4ss@h/db and sqlite:///x.db")
        'see mysql+pymysql://u:***@h/db and sqlite:///x.db'
    """
    if url is None:
        return "<none>"
    return _PW.sub(lambda m: m.group("head") + "***@", str(url))


#: a study name becomes a file (``<run_dir>/<name>.db``) and a folder (``<run_dir>/models/<name>/``)
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def check_study_name(name: str, where: str = "") -> str:
    """Return ``name`` if it is a safe study name, else raise StudyError: letters, digits, '.', '_' and
    '-' only (so no path separator), not empty, not starting with '.', at most 128 characters.

    ``where`` names the origin of the name in the message (e.g. the space file whose stem it is).

    Example:
        >>> check_study_name("quickstart-v2.1")
        'quickstart-v2.1'
        >>> check_study_name("../outside")
        Traceback (most recent call last):
        ...
        autoprune.errors.StudyError: study name '../outside' is not allowed (it becomes a file name): use only letters, digits, '.', '_' and '-', no path separators, not starting with '.', at most 128 characters; e.g. 'outside'
    """
    if _NAME.fullmatch(name or ""):
        return name
    src = f" ({where})" if where else ""
    if not name:
        raise StudyError(f"study name is empty{src}; give a name of letters, digits, '.', '_' and '-', "
                         f"or leave it out to use the search space file's name")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("\\", "/").rsplit("/", 1)[-1]).lstrip(".")[:128] or "study"
    raise StudyError(f"study name {name!r}{src} is not allowed (it becomes a file name): use only letters, "
                     f"digits, '.', '_' and '-', no path separators, not starting with '.', at most 128 "
                     f"characters; e.g. {safe!r}")


#: the study of a lower rung of a multi-fidelity search: ``<top study>.rung<k>``
_RUNG_STUDY = re.compile(r"(.+)\.rung\d+")


def default_storage(run_dir: str | Path, study_name: str) -> str:
    """``sqlite:///<run_dir>/<study_name>.db`` (absolute); the name is checked (:func:`check_study_name`).
    Nothing is created: :func:`prepare_sqlite` makes the folder when a search writes there.

    Example:
        >>> default_storage("/srv/runs", "quickstart")
        'sqlite:////srv/runs/quickstart.db'
    """
    check_study_name(study_name)
    return f"sqlite:///{Path(run_dir).resolve() / (study_name + '.db')}"


def _sqlite_file(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def prepare_sqlite(url: str, create_folder: bool = False) -> None:
    """Before a search writes to a SQLite ``url``: create its folder when ``create_folder`` (the default
    storage under ``run_dir``; a folder missing from a URL the user gave is an error of
    :func:`get_storage`), and check that the folder (SQLite writes its journal next to the database)
    and an existing database file are writable. Anything else is one StudyError (what, why, how to fix)
    before any study is created; other URLs pass unchecked."""
    f = _sqlite_file(url)
    if f is None:
        return
    fix = "pass --storage with a writable location or set run_dir in the run config to a writable folder"
    if create_folder:
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StudyError(f"cannot write the study storage {mask_url(url)}: cannot create the folder "
                             f"{f.parent} ({exc.strerror or exc}); {fix}") from None
    if not f.parent.is_dir():
        return
    if not os.access(f.parent, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if _read_only_fs(f.parent) else "is not writable"
        raise StudyError(f"cannot write the study storage {mask_url(url)}: the folder {f.parent} {why} "
                         f"(SQLite writes the database and its journal there); {fix}")
    if f.exists() and not os.access(f, os.W_OK):
        raise StudyError(f"cannot write the study storage {mask_url(url)}: the database file {f} is read-only; "
                         f"make it writable (chmod u+w) or {fix}")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _pg_driver(url: str) -> str:
    """SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3; use psycopg2 when only that is installed."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def get_storage(url: str) -> Any:
    """An Optuna storage for ``url``; any failure becomes a StudyError with the URL masked."""
    import optuna

    f = _sqlite_file(url)
    if f is not None and not f.parent.is_dir():
        raise StudyError(f"storage {mask_url(url)}: folder {f.parent} does not exist")
    given = url
    url = _pg_driver(url)
    try:
        if url.startswith(("sqlite", "postgresql", "mysql")):
            kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        return optuna.storages.get_storage(url)
    except StudyError:
        raise
    except Exception as exc:  # noqa: BLE001 - any driver/URL problem is a user problem here
        msg = mask_url(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if exc.__cause__ is not None:
            msg += f" ({mask_url(str(exc.__cause__).splitlines()[0])})"
        hint = ("" if "://" in url and url.split("://")[0].split("+")[0] in ("sqlite", "postgresql", "mysql") else
                "; expected an Optuna storage URL such as sqlite:///runs/study.db or "
                "postgresql://user:password@host:5432/db")
        raise StudyError(f"cannot open storage {mask_url(given)}: {msg}{hint}") from None


def study_names(storage: Any) -> list[str]:
    import optuna

    return [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]


def open_study(storage: str | Any, study_name: str | None, sampler: Any = None) -> Any:
    """Load an existing study; a clear StudyError lists the names that exist when it is missing.

    With ``study_name=None`` the storage must hold exactly one study (or one multi-fidelity search: its
    top study and the ``<name>.rung<k>`` studies of its lower rungs; the top study is opened).

    Example:
        >>> open_study("sqlite:///runs/quickstart.db", "quickstart")  # doctest: +SKIP
    """
    import optuna

    url = storage if isinstance(storage, str) else getattr(storage, "url", "<storage>")
    if isinstance(storage, str):
        f = _sqlite_file(storage)
        if f is not None and not f.is_file():
            raise StudyError(f"no study storage at {mask_url(storage)} (file {f} does not exist); "
                             f"run 'autoprune search' first or pass the right --storage")
        storage = get_storage(storage)
    names = study_names(storage)
    if study_name is None:
        tops = [n for n in names if (m := _RUNG_STUDY.fullmatch(n)) is None or m.group(1) not in names]
        if len(tops) == 1:  # one study, or one multi-fidelity search (its top study and its rungs' studies)
            study_name = tops[0]
        else:
            raise StudyError(f"storage {mask_url(url)} holds {len(names)} studies ({', '.join(names) or 'none'}); "
                             f"choose one with --study")
    if study_name not in names:
        raise StudyError(f"study '{study_name}' not found in {mask_url(url)}; existing studies: "
                         f"{', '.join(sorted(names)) or 'none'}")
    return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)


# ----------------------------------------------------------------------------- lease
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie counts as dead
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return True


def lease_is_live(lease: dict[str, Any] | None, now: float | None = None) -> bool:
    """True when ``lease`` belongs to a driver that is (probably) still running."""
    if not lease or lease.get("released"):
        return False
    now = time.time() if now is None else now
    if now - float(lease.get("heartbeat", 0)) > LEASE_TIMEOUT_S:
        return False
    if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int):
        return _pid_alive(lease["pid"])
    return True


class Lease:
    """Exclusive right of one driver to run a study; renewed by a daemon heartbeat thread.

    Example:
        >>> with Lease(study):  # doctest: +SKIP
        ...     pass  # dispatch trials
    """

    def __init__(self, study: Any) -> None:
        self.study = study
        self.id = uuid.uuid4().hex[:12]
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self, released: bool = False) -> dict[str, Any]:
        rec = {"id": self.id, "host": self.host, "pid": self.pid, "started": self.started, "heartbeat": time.time()}
        if released:
            rec["released"] = True
        return rec

    def _write(self, released: bool = False) -> None:
        self.study._storage.set_study_user_attr(self.study._study_id, ATTR_LEASE, self._record(released))

    def _read(self) -> dict[str, Any] | None:
        return self.study._storage.get_study_user_attrs(self.study._study_id).get(ATTR_LEASE)

    def acquire(self) -> "Lease":
        cur = self._read()
        if lease_is_live(cur):
            age = time.time() - float(cur.get("heartbeat", 0))  # type: ignore[union-attr]
            raise StudyError(
                f"study '{self.study.study_name}' is being run by another driver (pid {cur.get('pid')} on "  # type: ignore[union-attr]
                f"{cur.get('host')}, heartbeat {age:.0f} s ago); wait for it to finish or stop it "  # type: ignore[union-attr]
                f"(a lease without heartbeat for {LEASE_TIMEOUT_S:.0f} s is taken over)")
        if cur and not cur.get("released"):
            log.warning("taking over the stale lease of driver pid %s on %s", cur.get("pid"), cur.get("host"))
        self._write()
        time.sleep(0.2)  # two drivers racing: the last writer wins, the other sees it and backs off
        cur = self._read()
        if not cur or cur.get("id") != self.id:
            raise StudyError(f"study '{self.study.study_name}' was just taken by another driver "
                             f"(pid {cur.get('pid') if cur else '?'}); not starting a second one")
        self._thread = threading.Thread(target=self._beat, name="autoprune-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except Exception as exc:  # noqa: BLE001 - keep beating; storage may be briefly locked
                log.debug("lease heartbeat failed: %s", mask_url(str(exc)))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            cur = self._read()
            if cur and cur.get("id") == self.id:
                self._write(released=True)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not release the study lease: %s", mask_url(str(exc)))

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
