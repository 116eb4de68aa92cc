"""Missing extras, the URL schemes celeriac does not have, and misspelled ones: one clear line.

The missing-package cases run in a fresh interpreter where a ``sys.meta_path`` finder refuses the
package, as an environment without it installed would (``sys.modules`` of this test process is
never touched, nor is anything uninstalled).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from celeriac.backends import backend_from_url
from celeriac.exceptions import ImproperlyConfigured, MissingDependency
from celeriac.transport import transport_from_url
from celeriac.utils.extras import require

REPO = Path(__file__).resolve().parents[3]

#: runs before the test's code: makes ``import <blocked>`` fail as if the package were not
#: installed, then reports the first exception the code raises as JSON on stdout
_PRELUDE = """
import json, sys, traceback
BLOCKED = set(sys.argv[1].split(",")) - {""}

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Refuse())
for name in BLOCKED:
    try:
        __import__(name)
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit(f"the blocker let {name} through")

def report(exc):
    print(json.dumps({"type": type(exc).__name__,
                      "mro": [c.__name__ for c in type(exc).__mro__],
                      "message": str(exc)}))
"""


def _raised(code: str, block: tuple[str, ...] = ()) -> dict:
    """Run ``code`` (a body that must raise) without the ``block`` packages; what it raised."""
    body = textwrap.indent(textwrap.dedent(code).strip(), "    ")
    script = f"{_PRELUDE}\ntry:\n{body}\nexcept Exception as exc:\n    report(exc)\n"
    proc = subprocess.run([sys.executable, "-c", script, ",".join(block)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), f"nothing was raised; stderr: {proc.stderr}"
    return json.loads(proc.stdout)


def _one_line(message: str) -> str:
    assert message and "\n" not in message, message
    return message


# ---- a missing package: MissingDependency, where it is first needed ------------------------------


def test_redis_broker_without_redis_names_the_extra() -> None:
    got = _raised("""
        from celeriac import Celery
        app = Celery("proj", broker="redis://localhost:6379/0")  # creating it needs nothing
        app.send_task("proj.add", args=(1, 2))
    """, block=("redis",))
    assert "MissingDependency" in got["mro"] and "ImproperlyConfigured" in got["mro"]
    assert _one_line(got["message"]) == (
        "the redis:// broker needs the 'redis' package: pip install 'celeriac[redis]'")


def test_rediss_result_backend_without_redis_names_the_extra() -> None:
    got = _raised("""
        from celeriac import Celery
        app = Celery("proj", broker="memory://extras", backend="rediss://example.com:6380/0")
        app.backend
    """, block=("redis",))
    assert got["type"] == "MissingDependency"
    assert _one_line(got["message"]) == (
        "the rediss:// result backend needs the 'redis' package: pip install 'celeriac[redis]'")


def test_the_embedded_default_needs_no_extra() -> None:
    got = _raised("""
        from celeriac import Celery
        app = Celery("proj", broker="memory://extras-none", backend="memory://extras-none")
        app.send_task("proj.add", args=(1, 2))
        app.backend
        raise RuntimeError("fine")
    """, block=("redis", "yaml", "msgpack"))
    assert got == {"type": "RuntimeError", "mro": ["RuntimeError", "Exception", "BaseException",
                                                   "object"], "message": "fine"}


@pytest.mark.parametrize(("serializer", "module"), [("yaml", "'yaml'"), ("msgpack", "'msgpack'")])
def test_serializer_without_its_package_names_the_extra(serializer: str, module: str) -> None:
    got = _raised(f"""
        from celeriac import Celery
        app = Celery("proj", broker="memory://extras-{serializer}")
        app.conf.task_serializer = "{serializer}"
        app.send_task("proj.add", args=(1, 2))
    """, block=(serializer,))
    assert got["type"] == "MissingDependency"
    assert _one_line(got["message"]) == (
        f"the {serializer} serializer needs the {module} package: "
        f"pip install 'celeriac[{serializer}]'")


def test_require_returns_the_module_when_installed() -> None:
    assert require("json", "json", "this test") is json


def test_require_reports_a_broken_install_as_it_is(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # the package is there, but a dependency of its own is not: that is not a missing extra
    (tmp_path / "celeriac_test_broken_pkg.py").write_text("import celeriac_test_absent_dep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require("celeriac_test_broken_pkg", "broken", "this test")
    assert info.value.name == "celeriac_test_absent_dep"
    monkeypatch.delitem(sys.modules, "celeriac_test_broken_pkg", raising=False)
    with pytest.raises(MissingDependency, match=r"^the thing needs the 'celeriac_test_nope' "
                                                r"package: pip install 'celeriac\[nope\]'$"):
        require("celeriac_test_nope", "nope", "the thing")


# ---- RabbitMQ and rpc:// without py-amqp --------------------------------------------------------


@pytest.mark.parametrize("scheme", ["amqp", "pyamqp", "amqps"])
def test_amqp_broker_without_amqp_names_the_extra(scheme: str) -> None:
    got = _raised(f"""
        from celeriac import Celery
        app = Celery("proj", broker="{scheme}://guest:s3cret@localhost//", backend="memory://x")
        app.transport
    """, block=("amqp",))
    assert got["type"] == "MissingDependency"
    assert _one_line(got["message"]) == (
        f"the {scheme}:// broker needs the 'amqp' package: pip install 'celeriac[amqp]'")


def test_rpc_result_backend_without_amqp_names_the_extra() -> None:
    got = _raised("""
        from celeriac import Celery
        app = Celery("proj", broker="memory://extras", backend="rpc://")
        app.backend
    """, block=("amqp",))
    assert got["type"] == "MissingDependency"
    assert _one_line(got["message"]) == (
        "the rpc:// result backend needs the 'amqp' package: pip install 'celeriac[amqp]'")


# ---- misspelled schemes: the closest known one, and all of them ---------------------------------


@pytest.mark.parametrize(("url", "closest"), [
    ("redsi://localhost", "redis"), ("sqllite:///var/db/celery.db", "sqlite"),
    ("memroy://", "memory"), ("REDSI://localhost", "redis"), ("redsi", "redis"),
])
def test_misspelled_broker_scheme_suggests_the_closest(url: str, closest: str) -> None:
    scheme = url.split("://")[0].lower()
    with pytest.raises(ImproperlyConfigured) as info:
        transport_from_url(url)
    message = _one_line(str(info.value))
    assert message.startswith(f"broker_url: unknown transport scheme {scheme!r} in "
                              f"{url!r} (did you mean {closest!r}? known: memory, "
                              "sqlite, redis, rediss, ")
    assert "amqp" in message  # known, even if not available yet
    assert not isinstance(info.value, MissingDependency)


@pytest.mark.parametrize(("url", "closest"), [
    ("redsi://localhost", "redis"), ("sqllite:///results.db", "sqlite"),
    ("db+sqllite:///results.db", "db+sqlite"),
])
def test_misspelled_backend_scheme_suggests_the_closest(url: str, closest: str) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        backend_from_url(url)
    message = _one_line(str(info.value))
    assert message.startswith(f"result_backend: unknown backend scheme {url.split('://')[0]!r} "
                              f"in {url!r} (did you mean {closest!r}? known: memory, "
                              "sqlite, redis, ")


def test_unknown_scheme_with_nothing_close_lists_them_all() -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        backend_from_url("couchbase://")
    assert str(info.value) == (
        "result_backend: unknown backend scheme 'couchbase' in 'couchbase://' (known: memory, "
        "sqlite, redis, rediss, redis+socket, unix, cache+memory, db+sqlite, rpc)")


@pytest.mark.parametrize(("url", "shown"), [
    ("redsi://:hunter2@localhost:6379/0", "redsi://:**@localhost:6379/0"),
    ("sqllite://user:hunter2@[::1/x", "sqllite://user:**@[::1/x"),
    ("guest:hunter2@localhost", "localhost"),  # no scheme at all
])
def test_unknown_scheme_messages_never_show_a_password(url: str, shown: str) -> None:
    for factory in (transport_from_url, backend_from_url):
        with pytest.raises(ImproperlyConfigured) as info:
            factory(url)
        message = _one_line(str(info.value))
        assert f" in {shown!r} (" in message
        assert "hunter2" not in message


# ---- what a user of the command line sees --------------------------------------------------------


def test_cli_with_a_misspelled_broker_shows_the_message(tmp_path: Path) -> None:
    (tmp_path / "extras_cli_app.py").write_text(
        "from celeriac import Celery\napp = Celery('extras_cli_app')\n")
    proc = subprocess.run(
        [sys.executable, "-m", "celeriac.cli.main", "-A", "extras_cli_app",
         "-b", "redsi://:hunter2@localhost", "purge", "-f"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")},
             "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"})
    assert proc.returncode != 0
    assert ("unknown transport scheme 'redsi' in 'redsi://:**@localhost' (did you mean 'redis'? "
            "known: memory, sqlite, redis,") in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout

