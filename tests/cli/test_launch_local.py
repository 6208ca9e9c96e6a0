"""The local multi-worker launcher, with tiny Python scripts as workers (no TensorFlow)."""

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from keras_meta.cli import launch_local
from keras_meta.cli.launch_local import free_ports, launch, tf_config

REPO = Path(__file__).resolve().parents[2]
# A launcher run in a subprocess imports keras_meta (TensorFlow): seconds, on a busy machine
# tens of seconds.
SUBPROCESS_TIMEOUT_S = 120


def _script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


class _Lines:
    """A stream for `out` that keeps what was written, and can be read while it is written."""

    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def lines(self):
        return self.text.splitlines()


def _launcher(*args, cwd=REPO):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "trainers.launch_local", *args], cwd=cwd,
                          env=env, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_free_ports_are_distinct_and_tf_config_names_the_task():
    ports = free_ports(4, "127.0.0.1")
    assert len(set(ports)) == 4 and all(0 < p < 65536 for p in ports)
    addresses = ["127.0.0.1:1111", "127.0.0.1:2222"]
    assert json.loads(tf_config(addresses, 1)) == {
        "cluster": {"worker": addresses}, "task": {"type": "worker", "index": 1}}
    with pytest.raises(ValueError, match="index=2"):
        tf_config(addresses, 2)


def test_workers_get_distinct_tf_configs_prefixed_output_and_logs(tmp_path):
    script = _script(tmp_path, "worker.py", """\
        import os, sys
        print(os.environ["TF_CONFIG"])
        print("to stderr", os.environ["TF_CPP_MIN_LOG_LEVEL"], os.environ["PYTHONUNBUFFERED"],
              file=sys.stderr)
        print("args", sys.argv[1:])
    """)
    log_dir = tmp_path / "logs"
    out = _Lines()
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = launch(["--foo=1", "bar"], num_workers=3, program=script, log_dir=str(log_dir),
                  env=env, out=out)
    assert code == 0
    lines = out.lines()
    started = [re.fullmatch(r"\[launch\] worker (\d): pid (\d+), (127\.0\.0\.1:\d+)", line)
               for line in lines if line.startswith("[launch] worker")]
    assert [int(m.group(1)) for m in started] == [0, 1, 2]
    addresses = [m.group(3) for m in started]
    assert len(set(addresses)) == 3
    assert lines[-1] == "[launch] all 3 workers finished"
    for i in range(3):
        mine = [line[len(f"[worker {i}] "):] for line in lines
                if line.startswith(f"[worker {i}] ")]
        config = json.loads(next(line for line in mine if line.startswith("{")))
        assert config == {"cluster": {"worker": addresses}, "task": {"type": "worker",
                                                                      "index": i}}
        # stderr is merged; the default log level is set for the workers, output unbuffered.
        assert "to stderr 1 1" in mine
        assert "args ['--foo=1', 'bar']" in mine
        # The log holds the raw lines, without the prefix.
        assert sorted((log_dir / f"worker-{i}.log").read_text().splitlines()) == sorted(mine)
        assert json.loads((log_dir / f"worker-{i}.tf_config.json").read_text()) == config


def test_a_log_level_already_set_is_kept(tmp_path):
    script = _script(tmp_path, "worker.py", """\
        import os
        print("level", os.environ["TF_CPP_MIN_LOG_LEVEL"])
    """)
    out = _Lines()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    assert launch([], num_workers=1, program=script, env=env, out=out) == 0
    assert "[worker 0] level 3" in out.lines()


def test_arguments_after_double_dash_reach_the_workers_unchanged(tmp_path):
    script = _script(tmp_path, "worker.py", """\
        import json, sys
        print(json.dumps(sys.argv[1:]))
    """)
    worker_args = ["--foo=1", "bar", "--", "--help", "--num_workers=7", "with space"]
    result = _launcher("--num_workers=2", f"--program={script}", "--grace_seconds=1", "--",
                       *worker_args)
    assert result.returncode == 0, result.stderr
    for i in range(2):
        relayed = [line[len(f"[worker {i}] "):] for line in result.stdout.splitlines()
                   if line.startswith(f"[worker {i}] ")]
        assert relayed == [json.dumps(worker_args)]
    assert "[launch] all 2 workers finished" in result.stdout


def test_a_failed_worker_ends_the_launch_with_its_code(tmp_path):
    ready = tmp_path / "worker1_ready"
    # Worker 0 fails only once worker 1 is up (a file, not a delay), so that the launcher
    # surely has a live worker to end.
    script = _script(tmp_path, "worker.py", f"""\
        import json, os, sys, time
        index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        if index == 0:
            deadline = time.monotonic() + 60
            while not os.path.exists({str(ready)!r}) and time.monotonic() < deadline:
                time.sleep(0.01)
            print("failing")
            sys.exit(3)
        print("sleeping", flush=True)
        open({str(ready)!r}, "w").close()
        time.sleep(1000)
    """)
    out = _Lines()
    start = time.monotonic()
    code = launch([], num_workers=2, program=script, grace_seconds=1.0, out=out)
    elapsed = time.monotonic() - start
    assert code == 3
    assert elapsed < 1.0 + 10.0, elapsed
    lines = out.lines()
    pids = [int(m.group(1)) for m in (re.fullmatch(r"\[launch\] worker \d: pid (\d+), .*", l)
                                      for l in lines) if m]
    assert f"[launch] worker 0 (pid {pids[0]}) exited with code 3" in lines
    assert "[worker 0] failing" in lines and "[worker 1] sleeping" in lines
    assert any(l.startswith(f"[launch] worker 1 (pid {pids[1]}) still running 1 s after "
                            "worker 0 failed: terminating") for l in lines), lines
    assert f"[launch] worker 1 (pid {pids[1]}) was killed by SIGTERM" in lines
    assert not _pid_alive(pids[1])


def test_a_worker_that_ignores_sigterm_is_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(launch_local, "KILL_AFTER_S", 1.0)
    script = _script(tmp_path, "worker.py", """\
        import json, os, signal, sys, time
        if json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0:
            sys.exit(2)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring SIGTERM", flush=True)
        time.sleep(1000)
    """)
    out = _Lines()
    start = time.monotonic()
    assert launch([], num_workers=2, program=script, grace_seconds=0.5, out=out) == 2
    assert time.monotonic() - start < 0.5 + 1.0 + 5.0
    text = out.text
    assert "still running 1 s after SIGTERM: sending SIGKILL" in text
    assert re.search(r"\[launch\] worker 1 \(pid \d+\) was killed by SIGKILL", text), text


def test_a_worker_killed_by_a_signal_is_reported_by_name(tmp_path):
    script = _script(tmp_path, "worker.py", """\
        import os
        os.kill(os.getpid(), 9)
    """)
    out = _Lines()
    assert launch([], num_workers=1, program=script, grace_seconds=1.0, out=out) == 128 + 9
    assert re.search(r"^\[launch\] worker 0 \(pid \d+\) was killed by SIGKILL$", out.text,
                     re.MULTILINE), out.text


def test_sigterm_to_the_launcher_terminates_the_workers(tmp_path):
    started = tmp_path / "started"
    script = _script(tmp_path, "worker.py", f"""\
        import json, os, time
        index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        open({str(started)!r} + str(index), "w").close()
        print("up", flush=True)
        time.sleep(1000)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainers.launch_local", "--num_workers=2",
         f"--program={script}"], cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while not all(Path(f"{started}{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline and proc.poll() is None, proc.poll()
            time.sleep(0.1)
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    pids = [int(p) for p in re.findall(r"^\[launch\] worker \d: pid (\d+)", stdout, re.M)]
    assert len(pids) == 2
    assert "[launch] received SIGTERM: terminating" in stdout
    for pid in pids:
        assert f"(pid {pid}) was killed by SIGTERM" in stdout
        assert not _pid_alive(pid)


@pytest.mark.parametrize("flag, expected", [
    ("--num_workers=0", r"--num_workers=0: expected an integer >= 1"),
    ("--program=no/such/script.py", r"--program='no/such/script\.py': no such file"),
])
def test_bad_flags_are_refused_before_anything_starts(flag, expected):
    result = _launcher(flag, "--", "--foo=1")
    assert result.returncode != 0
    assert re.search(expected, result.stderr), result.stderr
    assert "[launch]" not in result.stdout


@pytest.mark.parametrize("kwargs, expected", [
    (dict(num_workers=0), r"num_workers=0: expected an integer >= 1"),
    (dict(num_workers=2.0), r"num_workers=2\.0: expected an integer >= 1"),
    (dict(program="missing.py"), r"program='missing\.py': no such file"),
    (dict(program="no_such_module_xyz.train"), r"no module 'no_such_module_xyz' found"),
    (dict(program="not a module"), r"expected a module name"),
    (dict(grace_seconds=-1), r"grace_seconds=-1: expected a number of seconds >= 0"),
    (dict(host=""), r"host='': expected an address"),
])
def test_bad_arguments_raise_before_anything_starts(tmp_path, monkeypatch, kwargs, expected):
    monkeypatch.chdir(tmp_path)
    out = _Lines()
    with pytest.raises(ValueError, match=expected):
        launch([], out=out, **kwargs)
    assert out.text == ""


def test_help_exits_0():
    result = _launcher("--help")
    assert result.returncode == 0, result.stderr
    assert "--num_workers" in result.stdout + result.stderr
