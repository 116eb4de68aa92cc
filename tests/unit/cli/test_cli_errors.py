"""Every CLI mistake ends in one clear line on stderr and a non-zero exit, never a traceback.

The CLI runs as a real subprocess (``python -m celeriac.cli.main``) in a temporary folder holding
the user's task modules, with a throwaway SQLite database as broker and result store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def _write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source).lstrip())
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with ``tasks.py``: an app on a SQLite file in the folder, one task."""
    _write(tmp_path, "tasks.py", f"""
        from celeriac import Celery

        app = Celery("tasks", broker="sqlite:///{tmp_path / 'app.db'}",
                     backend="sqlite:///{tmp_path / 'app.db'}")


        @app.task
        def add(x, y):
            return x + y
        """)
    return tmp_path


def celeriac(cwd: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
             path: tuple[str, ...] = (), **run: object) -> subprocess.CompletedProcess:
    """Run the CLI; ``path``: folders put ahead of the repository on PYTHONPATH, ``run``:
    more subprocess.run arguments (``stdin=subprocess.DEVNULL``...)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [*path, str(REPO), full.get("PYTHONPATH")]))
    full.update(env or {})
    options: dict[str, object] = {"input": stdin} if stdin is not None else {}
    options.update(run)
    return subprocess.run([sys.executable, "-m", "celeriac.cli.main", *args], cwd=cwd,
                          env=full, capture_output=True, text=True, timeout=60,
                          **options)  # type: ignore[call-overload]


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The process failed with exactly one line on stderr, holding every word, no traceback."""
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, output
    for word in words:
        assert word in lines[0], output
    return lines[0]


# ---- Celery commands celeriac does not have yet ------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["multi", "start", "w1", "w2", "-c", "3"],
])
def test_missing_celery_commands_say_not_available_yet(project, argv):
    proc = celeriac(project, "-A", "tasks", *argv)
    line = one_line_error(proc, f"celeriac {argv[0]}: not available in celeriac yet (")
    assert line.endswith(")")
    assert proc.returncode == 2
    assert proc.stdout == ""


def test_shell_has_the_app_and_its_tasks(project):
    proc = celeriac(project, "-A", "tasks", "shell",
                    stdin="print('sum', add(2, 3))\nprint('main', app.main)\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sum 5" in proc.stdout and "main tasks" in proc.stdout
    assert "tasks.add" in proc.stderr  # the banner lists the registered tasks


# ---- -A after the command ------------------------------------------------------------------------
@pytest.mark.parametrize("argv, command", [
    (["worker", "-A", "tasks", "-l", "INFO"], "worker"),
    (["worker", "-Atasks"], "worker"),
    (["call", "tasks.add", "--app=tasks"], "call"),
    (["dlq", "list", "--app", "tasks"], "dlq list"),
])
def test_app_option_after_the_command_is_explained(project, argv, command):
    proc = celeriac(project, *argv)
    one_line_error(proc, "-A/--app goes before the command",
                   f"celeriac -A tasks {command}")


def test_no_app_at_all(project):
    one_line_error(celeriac(project, "purge", "-f"), "no app given", "-A")


# ---- call arguments ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["-a", "5"], ["--args must be a JSON list", "-a '[5, 3]'"]),
    (["-a", "[5,"], ["--args must be a JSON list"]),
    (["-a", '{"x": 1}'], ["--args must be a JSON list"]),
    (["-k", "[1]"], ["--kwargs must be a JSON object"]),
    (["-k", "y=3"], ["--kwargs must be a JSON object"]),
])
def test_call_arguments_must_be_a_json_list_and_object(project, argv, words):
    proc = celeriac(project, "-A", "tasks", "call", "tasks.add", *argv)
    one_line_error(proc, *words)
    assert proc.stdout == ""  # nothing was sent, so no task id


# ---- result ------------------------------------------------------------------------------------
def test_result_timeout_says_still_pending(project):
    task_id = str(uuid.uuid4())
    proc = celeriac(project, "-A", "tasks", "result", task_id, "-t", "0.2")
    line = one_line_error(proc, f"result {task_id}: the operation timed out after 0.2s waiting "
                                f"for task {task_id} (still PENDING)")
    assert line.count("PENDING") == 1 and line.count("0.2s") == 1, line
    assert proc.returncode == 1


# ---- the broker down, a dead letter that is not there ------------------------------------------
def _dead_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_purge_with_the_broker_down_is_one_line_with_the_url_masked(project):
    url = f"redis://:s3cret@127.0.0.1:{_dead_port()}/0"
    proc = celeriac(project, "-b", url, "-A", "tasks", "purge", "-f")
    one_line_error(proc, "celeriac purge: cannot reach the broker at redis://:**@127.0.0.1:")
    assert "s3cret" not in proc.stdout + proc.stderr
    assert proc.returncode == 1


def test_dlq_list_with_the_broker_down_is_one_line_too(project):
    url = f"redis://127.0.0.1:{_dead_port()}/0"
    one_line_error(celeriac(project, "-b", url, "-A", "tasks", "dlq", "list"),
                   f"celeriac dlq list: cannot reach the broker at {url}: ")


def test_replaying_a_dead_letter_that_is_not_there_is_one_line(project):
    proc = celeriac(project, "-A", "tasks", "dlq", "replay", "99999")
    one_line_error(proc, "celeriac dlq replay: no dead letter with id '99999'",
                   "nothing was replayed", "`celeriac -A tasks dlq list`")
    assert proc.stdout == ""


def test_result_of_a_sent_task_without_timeout_is_pending(project):
    sent = celeriac(project, "-A", "tasks", "call", "tasks.add", "-a", "[2, 3]")
    assert sent.returncode == 0, sent.stderr
    proc = celeriac(project, "-A", "tasks", "result", sent.stdout.strip())
    assert proc.returncode == 0 and proc.stdout.strip() == "PENDING: None", proc.stderr


# ---- broker URLs -------------------------------------------------------------------------------
def test_misspelled_broker_url_on_the_command_line(project):
    proc = celeriac(project, "-b", "redsi://localhost:6379/0", "-A", "tasks", "call", "tasks.add")
    one_line_error(proc, "celeriac call:", "redsi", "sqlite")


def test_misspelled_broker_url_in_the_app(project):
    _write(project, "typo.py", """
        from celeriac import Celery

        app = Celery("typo", broker="redsi://localhost:6379/0")
        """)
    proc = celeriac(project, "-A", "typo", "call", "tasks.add")
    one_line_error(proc, "redsi", "sqlite")


def test_misspelled_broker_url_stops_the_worker_with_one_line(project):
    proc = celeriac(project, "-b", "redsi://localhost", "-A", "tasks", "worker", "-P", "solo")
    one_line_error(proc, "redsi")


def test_misspelled_result_backend_url(project):
    proc = celeriac(project, "--result-backend", "sqlitee:///x.db", "-A", "tasks", "result",
                    str(uuid.uuid4()))
    one_line_error(proc, "sqlitee")


# ---- -A given something that is not an importable module --------------------------------------
@pytest.mark.parametrize("spec, suggestion", [
    ("tasks.py", "use -A tasks "),
    ("./tasks.py", "use -A tasks "),
    ("proj/tasks.py", "use -A proj.tasks "),
    ("proj/tasks.py:app", "use -A proj.tasks:app "),
    ("proj/tasks", "use -A proj.tasks "),
])
def test_file_path_instead_of_module(project, spec, suggestion):
    proc = celeriac(project, "-A", spec, "purge", "-f")
    one_line_error(proc, f"-A {spec}:", suggestion, "a module name, not a file path")


def test_absolute_file_path_instead_of_module(project):
    spec = str(project / "tasks.py")
    one_line_error(celeriac(project, "-A", spec, "purge", "-f"), "use -A tasks ")


def test_module_that_does_not_exist(project):
    one_line_error(celeriac(project, "-A", "taks", "worker"), "-A taks:", "No module named 'taks'")


def test_module_with_a_name_error(project):
    _write(project, "broken.py", """
        from celeriac import Celery

        app = Celery("broken")


        def helper():
            return foo


        helper()
        """)
    one_line_error(celeriac(project, "-A", "broken", "worker"),
                   "-A broken: importing broken failed: NameError: name 'foo' is not defined",
                   "(broken.py, line 7)")


def test_module_with_a_syntax_error(project):
    _write(project, "pkg/__init__.py", "")
    _write(project, "pkg/syntax.py", """
        from celeriac import Celery

        app = Celery("syntax")
        def add(x, y)
            return x + y
        """)
    one_line_error(celeriac(project, "-A", "pkg.syntax", "purge", "-f"),
                   "importing pkg.syntax failed: SyntaxError:",
                   f"({os.path.join('pkg', 'syntax.py')}, line 4)")


def test_module_whose_own_import_is_missing(project):
    _write(project, "needs.py", """
        from celeriac import Celery
        import celeriac_no_such_dependency

        app = Celery("needs")
        """)
    one_line_error(celeriac(project, "-A", "needs", "call", "needs.x"),
                   "importing needs failed: ModuleNotFoundError:",
                   "celeriac_no_such_dependency", "(needs.py, line 2)")


def test_error_inside_a_helper_module_names_the_helper(project):
    _write(project, "helpers.py", """
        SETTINGS = {}
        TIMEOUT = SETTINGS["timeout"]
        """)
    _write(project, "uses_helpers.py", """
        from celeriac import Celery
        import helpers

        app = Celery("uses_helpers")
        """)
    one_line_error(celeriac(project, "-A", "uses_helpers", "worker"),
                   "importing uses_helpers failed: KeyError: 'timeout'", "(helpers.py, line 2)")


def test_module_without_an_app(project):
    _write(project, "empty.py", "X = 1\n")
    one_line_error(celeriac(project, "-A", "empty", "worker"), "no celeriac.Celery app found")


# ---- the worker's -E ---------------------------------------------------------------------------
def test_task_events_help_says_what_dash_e_sends(project):
    proc = celeriac(project, "worker", "--help")
    assert proc.returncode == 0, proc.stderr
    help_text = " ".join(proc.stdout.split())
    assert "-E, --task-events Send task events" in help_text
    assert "not sent yet" not in help_text


# ---- malformed broker and result-store URLs ---------------------------------------------------
BAD_URLS = [
    ("redis://:s3cret@127.0.0.1:abc/0", "redis://:**@127.0.0.1:abc/0",
     "the port must be an integer from 1 to 65535 (got 'abc')"),
    ("redis://127.0.0.1:99999", "redis://127.0.0.1:99999",
     "the port must be an integer from 1 to 65535 (got '99999')"),
    ("redis://127.0.0.1:6379/abc", "redis://127.0.0.1:6379/abc",
     "the database number must be an integer (got 'abc')"),
    ("sqlite://", "sqlite://", "names no file"),
]


@pytest.mark.parametrize("url, shown, problem", BAD_URLS)
@pytest.mark.parametrize("command", [["call", "tasks.add", "-a", "[1, 2]"], ["purge", "-f"],
                                     ["worker", "-P", "solo"]])
def test_a_malformed_broker_url_is_one_line_naming_it(project, url, shown, problem, command):
    proc = celeriac(project, "-b", url, "-A", "tasks", *command)
    line = one_line_error(proc, f"celeriac {command[0]}: ", repr(shown), problem)
    if url.startswith("redis"):
        assert "broker_url" in line
    assert "s3cret" not in proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "Purged" not in proc.stdout and "worker" not in proc.stdout  # nothing happened


@pytest.mark.parametrize("url, shown, problem", BAD_URLS)
def test_a_malformed_result_backend_url_is_one_line_naming_it(project, url, shown, problem):
    proc = celeriac(project, "--result-backend", url, "-A", "tasks", "result",
                    str(uuid.uuid4()))
    line = one_line_error(proc, "celeriac result: ", repr(shown), problem)
    if url.startswith("redis"):
        assert "result_backend" in line
    assert "s3cret" not in proc.stdout + proc.stderr


def test_call_against_a_dead_broker_prints_exactly_one_line(project):
    """The publish retries are logged at INFO on celeriac.producer: a bare client shows none of
    them, only the final error, which counts them."""
    url = f"redis://127.0.0.1:{_dead_port()}/0"
    proc = celeriac(project, "-b", url, "-A", "tasks", "call", "tasks.add", "-a", "[1, 2]")
    line = one_line_error(proc, f"celeriac call: Cannot publish to the broker at {url}",
                          "gave up after 3 retries")
    assert "retry" not in proc.stderr.replace(line, "")
    assert proc.stdout == ""


# ---- shell: no stdin, and a piped script that raises --------------------------------------------
def test_shell_with_stdin_closed_is_one_line(project):
    proc = celeriac(project, "-A", "tasks", "shell", stdin=None,
                    preexec_fn=lambda: os.close(0))
    one_line_error(proc, "celeriac shell: no input (stdin is closed)")
    assert proc.returncode == 1


@pytest.mark.parametrize("script", ["1/0\n", "print('before')\nraise KeyError('x')\n",
                                    "def f(:\n"])
def test_shell_exits_1_when_piped_code_raised(project, script):
    proc = celeriac(project, "-A", "tasks", "shell", stdin=script)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" in proc.stderr or "SyntaxError" in proc.stderr  # the user's own error


# ---- a serializer the worker cannot use -------------------------------------------------------
#: ``sitecustomize`` that makes ``import <BLOCK_MODULES>`` fail as if those were not installed
_BLOCKER = """
import os, sys

BLOCKED = set(os.environ.get("BLOCK_MODULES", "").split(",")) - {""}


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Refuse())
"""


@pytest.fixture
def blocker(tmp_path: Path) -> str:
    folder = tmp_path / "blocker"
    _write(folder, "sitecustomize.py", _BLOCKER)
    return str(folder)


@pytest.mark.parametrize("setting, value, module", [
    ("result_serializer", "'msgpack'", "msgpack"),
    ("task_serializer", "'yaml'", "yaml"),
    ("accept_content", "['json', 'yaml']", "yaml"),
    ("result_accept_content", "['msgpack']", "msgpack"),
])
def test_a_worker_without_a_serializer_package_refuses_to_start(project, blocker, setting, value,
                                                                module):
    _write(project, "sertasks.py", f"""
        from celeriac import Celery

        app = Celery("sertasks", broker="sqlite:///{project / 'app.db'}",
                     backend="sqlite:///{project / 'app.db'}")
        app.conf.{setting} = {value}
        """)
    proc = celeriac(project, "-A", "sertasks", "worker", "-P", "solo", path=(blocker,),
                    env={"BLOCK_MODULES": module})
    one_line_error(proc, f"celeriac worker: {setting}=", f"pip install 'celeriac[{module}]'")
    assert proc.returncode == 1
    assert "worker" not in proc.stdout  # no banner: it stopped before anything else


def test_the_blocker_lets_a_worker_without_such_settings_start_far_enough(project, blocker):
    """The control: with msgpack blocked, a json-only worker gets past the serializer check (it
    stops at the next check: a pidfile it cannot write)."""
    proc = celeriac(project, "-A", "tasks", "worker", "-P", "solo", "--pidfile",
                    str(project / "missing-dir" / "w.pid"), path=(blocker,),
                    env={"BLOCK_MODULES": "msgpack"})
    one_line_error(proc, "celeriac worker: cannot write the pidfile")


# ---- Celery worker flags ----------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--detach", "-D"])
def test_detach_is_refused_pointing_at_a_service_manager(project, flag):
    proc = celeriac(project, "-A", "tasks", "worker", flag)
    one_line_error(proc, "celeriac worker: --detach is not available in celeriac",
                   "run it under your service manager (systemd, supervisord) instead")
    assert proc.returncode == 2
