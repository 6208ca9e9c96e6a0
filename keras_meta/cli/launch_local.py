r"""`python -m trainers.launch_local`: runs a multi-worker training as N local processes.

Each worker is `python -m <program> <args>` (or `python <program.py> <args>`) with its own
TF_CONFIG, for `tf.distribute.MultiWorkerMirroredStrategy` on one machine: worker 0 is the
chief. Everything after `--` is passed, unchanged, to every worker; for the default program,
the MAML trainer, `--strategy=multi_worker` is added when no --strategy is given.

Examples:

    python -m trainers.launch_local --num_workers=2 -- \
        --task_family=sinusoid --model_dir=runs/mw     # the trainer: --strategy=multi_worker
    python -m trainers.launch_local --num_workers=3 --log_dir=runs/mw/logs -- \
        --model_dir=runs/mw        # also worker-<i>.log per worker
    python -m trainers.launch_local --program=my_script.py -- --foo=1

Every line a worker prints (stdout and stderr) is relayed as `[worker <i>] <line>`. When a
worker fails, the others get --grace_seconds to exit on their own, then are terminated; the
launcher exits with the first failed worker's code (128 + N for a signal N). Ctrl-C or
SIGTERM terminates all workers (exit 130 / 143). POSIX only.
"""

import importlib.machinery
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

FLAGS = flags.FLAGS

DEFAULT_PROGRAM = "keras_meta.cli.train_maml"
# How long a worker has between SIGTERM and SIGKILL, and a killed one to be reaped.
KILL_AFTER_S = 5.0
# How long the launcher waits for a worker's output to end after the worker exited: only a
# process the worker started and left running can hold it open longer.
DRAIN_S = 5.0
_POLL_S = 0.05


def define_flags(flag_values=FLAGS):
    """Defines the launcher's flags; all optional."""
    if "grace_seconds" in flag_values:
        return
    fv = {"flag_values": flag_values}
    flags.DEFINE_integer("num_workers", 2, "Worker processes (>= 1); worker 0 is the chief.",
                         **fv)
    flags.DEFINE_string("program", DEFAULT_PROGRAM, "What each worker runs: a module "
                        "(`python -m <program>`) or a path ending in .py (`python <path>`).",
                        **fv)
    # absl.logging defines --log_dir ("directory to write logfiles into") for programs that
    # call `use_absl_log_file()`, which the launcher does not: the flag is the launcher's.
    if "log_dir" not in flag_values:
        flags.DEFINE_string("log_dir", None, "Directory to write logfiles into: each "
                            "worker's raw output to <log_dir>/worker-<i>.log and its "
                            "TF_CONFIG to <log_dir>/worker-<i>.tf_config.json.", **fv)
    flags.DEFINE_float("grace_seconds", 60.0, "After the first worker fails, how long the "
                       "others get to exit on their own before they are terminated.", **fv)
    flags.DEFINE_string("host", "127.0.0.1", "Address the workers listen on.", **fv)


def free_ports(n, host="127.0.0.1"):
    """`n` distinct TCP ports that are free on `host` now.

    All `n` sockets stay bound until every port is read, so the ports differ; they are then
    closed for the workers to bind, which leaves a short window in which another process may
    take one (the worker then fails to start its server and the launch fails).

    Args:
        n: how many ports.
        host: the address to bind.

    Returns:
        A list of `n` port numbers.

    Example:
        >>> a, b = free_ports(2)
        >>> a != b
        True
    """
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                              socket.SOCK_STREAM)
            sockets.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(addresses, index):
    """The TF_CONFIG of worker `index` of the cluster `addresses`, as a JSON string.

    By TensorFlow's convention, without a "chief" task worker 0 is the chief: it writes
    checkpoints and summaries.

    Args:
        addresses: "host:port" of every worker, in order.
        index: this worker's position in `addresses`.

    Returns:
        `{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": index}}`.

    Example:
        >>> config = json.loads(tf_config(["127.0.0.1:2222", "127.0.0.1:2223"], 1))
        >>> config["cluster"], config["task"]
        ({'worker': ['127.0.0.1:2222', '127.0.0.1:2223']}, {'type': 'worker', 'index': 1})
    """
    if not 0 <= index < len(addresses):
        raise ValueError(f"index={index}: expected 0 <= index < {len(addresses)} (the number "
                         "of addresses).")
    return json.dumps({"cluster": {"worker": list(addresses)},
                       "task": {"type": "worker", "index": index}})


def worker_command(program, args):
    """The command line of one worker: `python -m <program>` or `python <program.py>`.

    Args:
        program: a module name, or a path ending in .py.
        args: the arguments every worker gets.

    Example:
        >>> worker_command("keras_meta.cli.train_maml", ["--seed=1"])[1:]
        ['-m', 'keras_meta.cli.train_maml', '--seed=1']
    """
    if program.endswith(".py"):
        return [sys.executable, program, *args]
    return [sys.executable, "-m", program, *args]


def check_arguments(num_workers, program, grace_seconds=60.0, host="127.0.0.1"):
    """Refuses arguments that could not launch, before anything starts.

    Args:
        num_workers, program, grace_seconds, host: as for `launch`.

    Raises:
        ValueError: naming the argument, the value received and what is expected
            (`name=value: expected ...`).

    Example:
        >>> check_arguments(0, "keras_meta.cli.train_maml")
        Traceback (most recent call last):
        ...
        ValueError: num_workers=0: expected an integer >= 1 (one process per worker).
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers={num_workers!r}: expected an integer >= 1 (one process "
                         "per worker).")
    if not isinstance(grace_seconds, (int, float)) or not grace_seconds >= 0:
        raise ValueError(f"grace_seconds={grace_seconds!r}: expected a number of seconds >= 0.")
    if not host:
        raise ValueError(f"host={host!r}: expected an address to listen on, e.g. 127.0.0.1.")
    if not program:
        raise ValueError(f"program={program!r}: expected a module name or a path ending in .py.")
    if program.endswith(".py"):
        if not os.path.isfile(program):
            raise ValueError(f"program={program!r}: no such file (a path ending in .py is run "
                             "as `python <path>`; expected an existing script).")
        return
    if not all(part.isidentifier() for part in program.split(".")):
        raise ValueError(f"program={program!r}: expected a module name (like "
                         f"{DEFAULT_PROGRAM}) or a path ending in .py.")
    # Only the top-level package is looked up: finding a submodule would import its parents.
    # `python -m` also searches the working directory, which the launcher's path may lack.
    top = program.split(".")[0]
    if (importlib.util.find_spec(top) is None
            and importlib.machinery.PathFinder.find_spec(top, [os.getcwd()]) is None):
        raise ValueError(f"program={program!r}: no module {top!r} found; expected a module "
                         "`python -m` can run, or a path ending in .py.")


def launch(args, *, num_workers=2, program=DEFAULT_PROGRAM, log_dir=None, grace_seconds=60.0,
           host="127.0.0.1", env=None, out=None):
    """Runs `num_workers` local processes of `program` as one TF_CONFIG cluster; their exit code.

    Each worker gets `env` plus its TF_CONFIG, PYTHONUNBUFFERED=1 (its lines arrive as it
    prints them) and TF_CPP_MIN_LOG_LEVEL=1 unless `env` sets it (TensorFlow's C++ INFO lines,
    times N workers, would bury everything else). Every line a worker writes to stdout or
    stderr is written to `out` as `[worker <i>] <line>` as it arrives. The workers run in
    their own sessions: a Ctrl-C reaches them only as the SIGTERM the launcher forwards.

    Args:
        args: the arguments every worker gets, unchanged.
        num_workers: how many processes; worker 0 is the chief.
        program: a module name (`python -m program`) or a path ending in .py.
        log_dir: if given, each worker's raw output also goes to `<log_dir>/worker-<i>.log`
            and its TF_CONFIG to `<log_dir>/worker-<i>.tf_config.json` (the folder is created).
        grace_seconds: after the first worker fails, how long the others get to exit on their
            own before they are sent SIGTERM (then SIGKILL 5 s later).
        host: the address every worker listens on.
        env: the workers' base environment (default: this process's).
        out: where the relayed lines and the launcher's own messages go (default: sys.stdout
            at the time of the call).

    Returns:
        0 when every worker exits 0; else the first failed worker's exit code, or 128 + N if a
        signal N killed it; 130 / 143 if the launcher got SIGINT / SIGTERM.

    Raises:
        ValueError: arguments that cannot launch (see `check_arguments`); nothing was started.

    Example:
        code = launch(["--strategy=multi_worker", "--model_dir=runs/mw"], num_workers=2)
        # prints: [launch] worker 0: pid 4242, 127.0.0.1:40511
        #         [launch] worker 1: pid 4243, 127.0.0.1:40512
        #         [worker 0] ... (every line of both workers)
        #         [launch] all 2 workers finished
        # and returns 0.
    """
    check_arguments(num_workers, program, grace_seconds, host)
    out = sys.stdout if out is None else out
    base_env = dict(os.environ if env is None else env)
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
    ports = free_ports(num_workers, host)
    addresses = [f"[{host}]:{p}" if ":" in host else f"{host}:{p}" for p in ports]
    command = worker_command(program, args)
    relay = _Relay(out)
    interrupts = _Interrupts()
    workers = []
    interrupts.install()
    try:
        for index, address in enumerate(addresses):
            if interrupts.signum is not None:
                break
            config = tf_config(addresses, index)
            worker_env = dict(base_env, TF_CONFIG=config, PYTHONUNBUFFERED="1")
            worker_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
            log_path = None
            if log_dir:
                with open(os.path.join(log_dir, f"worker-{index}.tf_config.json"), "w") as f:
                    f.write(config + "\n")
                log_path = os.path.join(log_dir, f"worker-{index}.log")
            proc = subprocess.Popen(command, env=worker_env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            workers.append(_Worker(index, proc, address))
            relay.say(f"worker {index}: pid {proc.pid}, {address}")
            relay.start(index, proc.stdout, log_path)
        code = _supervise(workers, relay, interrupts, grace_seconds)
    finally:
        interrupts.uninstall()
        # Live workers here mean an error in the launcher itself: none may outlive it.
        if any(w.proc.poll() is None for w in workers):
            _terminate([w for w in workers if w.proc.poll() is None], relay)
        relay.drain(DRAIN_S)
    return code


class _Worker:
    def __init__(self, index, proc, address):
        self.index, self.proc, self.address = index, proc, address
        self.reported = False

    @property
    def name(self):
        return f"worker {self.index} (pid {self.proc.pid})"


def _how_it_ended(code):
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _exit_status(code):
    """A Popen return code as a shell would report it (128 + N for signal N)."""
    return 128 - code if code < 0 else code


def _supervise(workers, relay, interrupts, grace_seconds):
    """Waits for the workers; on the first failure, or a signal, ends the others. The code."""
    failed = None
    deadline = None
    while True:
        for w in workers:
            code = w.proc.poll()
            if code is None or w.reported:
                continue
            w.reported = True
            if code != 0:
                relay.say(f"{w.name} {_how_it_ended(code)}")
                if failed is None:
                    failed = w
                    deadline = time.monotonic() + grace_seconds
        running = [w for w in workers if w.proc.poll() is None]
        if interrupts.signum is not None:
            name = signal.Signals(interrupts.signum).name
            if running:
                relay.say(f"received {name}: terminating "
                          + ", ".join(w.name for w in running))
                _terminate(running, relay)
            else:
                relay.say(f"received {name}")
            return 128 + interrupts.signum
        if not running:
            break
        if deadline is not None and time.monotonic() >= deadline:
            relay.say(f"{', '.join(w.name for w in running)} still running {grace_seconds:g} s "
                      f"after worker {failed.index} failed: terminating")
            _terminate(running, relay)
            break
        interrupts.event.wait(_POLL_S)
    if failed is not None:
        return _exit_status(failed.proc.returncode)
    relay.say(f"all {len(workers)} workers finished")
    return 0


def _signal_group(proc, sig):
    # Only while the worker is unreaped is its pid (its process group's id) surely still
    # its own. The group also reaches whatever the worker started.
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _terminate(workers, relay):
    """SIGTERM to each worker, SIGKILL to those still running 5 s later; waits (bounded)."""
    for w in workers:
        _signal_group(w.proc, signal.SIGTERM)
    deadline = time.monotonic() + KILL_AFTER_S
    while time.monotonic() < deadline and any(w.proc.poll() is None for w in workers):
        time.sleep(_POLL_S)
    stubborn = [w for w in workers if w.proc.poll() is None]
    if stubborn:
        relay.say(f"{', '.join(w.name for w in stubborn)} still running {KILL_AFTER_S:g} s "
                  "after SIGTERM: sending SIGKILL")
        for w in stubborn:
            _signal_group(w.proc, signal.SIGKILL)
        for w in stubborn:
            try:
                w.proc.wait(KILL_AFTER_S)
            except subprocess.TimeoutExpired:
                relay.say(f"{w.name} did not exit after SIGKILL; leaving it")
    for w in workers:
        if w.proc.returncode is not None and not w.reported:
            w.reported = True
            relay.say(f"{w.name} {_how_it_ended(w.proc.returncode)}")


class _Relay:
    """Copies the workers' output to `out`, line by line, prefixed; one writer at a time."""

    def __init__(self, out):
        self._out = out
        self._lock = threading.Lock()
        self._threads = []
        self._out_broken = False

    def say(self, message):
        self._write(f"[launch] {message}\n")

    def _write(self, text):
        with self._lock:
            if self._out_broken:
                return
            try:
                self._out.write(text)
                self._out.flush()
            except (OSError, ValueError):
                # A closed terminal or pipe: the workers' output keeps being read (and
                # logged), or they would block on a full pipe.
                self._out_broken = True

    def start(self, index, pipe, log_path):
        thread = threading.Thread(target=self._copy, args=(index, pipe, log_path),
                                  name=f"launch-relay-{index}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _copy(self, index, pipe, log_path):
        log = open(log_path, "wb") if log_path else None
        try:
            for raw in iter(pipe.readline, b""):
                if log:
                    log.write(raw)
                    log.flush()
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                self._write(f"[worker {index}] {line}\n")
        finally:
            pipe.close()
            if log:
                log.close()

    def drain(self, timeout):
        """Waits until every worker's output has been copied, at most `timeout` s in all."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            # A process the worker left behind still holds the pipe; its lines would come
            # later, from a thread that no longer blocks anything.
            self.say(f"output still open after the workers exited ({', '.join(stuck)}); "
                     "not waiting for it")


class _Interrupts:
    """SIGINT / SIGTERM to the launcher, recorded for the supervising loop to act on."""

    def __init__(self):
        self.signum = None
        self.event = threading.Event()
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
        self.event.set()

    def install(self):
        # Handlers can only be set from the main thread; elsewhere signals keep their meaning.
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _multi_worker_trainer_args(args):
    """The trainer's arguments with `--strategy=multi_worker`, which a launch implies.

    Workers of another strategy would each train alone, into the same model_dir.
    """
    given = [a for a in args if a == "--strategy" or a.startswith("--strategy=")]
    if not given:
        return args + ["--strategy=multi_worker"]
    value = given[-1].partition("=")[2] if "=" in given[-1] else \
        args[args.index(given[-1]) + 1] if args.index(given[-1]) + 1 < len(args) else ""
    if value != "multi_worker":
        raise app.UsageError(
            f"--strategy={value!r} after --: the launcher starts the workers of one "
            "multi-worker run, so the trainer needs --strategy=multi_worker (the default "
            "here). Remove --strategy or set it to multi_worker.")
    return args


def main(argv):
    try:
        check_arguments(FLAGS.num_workers, FLAGS.program, FLAGS.grace_seconds, FLAGS.host)
    except ValueError as e:
        raise app.UsageError(f"--{e}") from None
    # absl has removed the `--`; what follows the flags is the workers' command line.
    args = list(argv[1:])
    if FLAGS.program == DEFAULT_PROGRAM:
        args = _multi_worker_trainer_args(args)
    return launch(args, num_workers=FLAGS.num_workers, program=FLAGS.program,
                  log_dir=FLAGS.log_dir, grace_seconds=FLAGS.grace_seconds, host=FLAGS.host)


def console_main():
    """`python -m trainers.launch_local`."""
    from keras_meta.cli import run as cli_run

    define_flags()
    # Listed by --help with the launcher's own flags, though absl.logging defined it.
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS["log_dir"])
    cli_run(main, __name__)


if __name__ == "__main__":
    console_main()
