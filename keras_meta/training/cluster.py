"""This process's place in a multi-worker run: its role from `TF_CONFIG`, and the cluster start.

TensorFlow's multi-worker engine (`MultiWorkerMirroredStrategy`) reads the cluster from the
`TF_CONFIG` environment variable, e.g. on the second of two machines::

    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 1}}'

Every task runs the same command. The chief (the `chief` task, or worker 0 when there is
none, as TensorFlow decides) writes the run directory; the other workers compute the same
steps on their share of each meta-batch.

What TensorFlow leaves to the program, and this module adds:

* **`TF_CONFIG` is checked before anything starts**: jobs other than `chief`/`worker`, a
  task that is not in the cluster, an index out of range, malformed or repeated addresses and
  a meta-batch that does not split across the workers are refused with the value received
  and what is expected, instead of a hang or a C++ error.
* **No silent hang.** The cluster start, the collectives and the heartbeats all time out
  after `timeout_seconds` through TensorFlow's own coordination service and collective
  options. One case has no TensorFlow timeout: the chief waits for the other workers to
  register without a deadline. A watchdog (`watchdog.py`) covers it, and on expiry names
  the addresses that do not answer and ends the process.
"""

import dataclasses
import json
import os

import tensorflow as tf

from keras_meta.training import watchdog

TF_CONFIG_ENV = "TF_CONFIG"
# The jobs a MultiWorkerMirroredStrategy cluster is made of; parameter servers and
# side-car evaluators belong to other strategies.
JOBS = ("chief", "worker")
_START_ADVICE = ("Start every task of TF_CONFIG's cluster with the same command, or raise "
                 "--worker_timeout_seconds.")

_EXAMPLE = ('{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
            '"task": {"type": "worker", "index": 0}}')


class ClusterError(RuntimeError):
    """The cluster did not start, or a worker was lost during the run."""


@dataclasses.dataclass(frozen=True)
class ClusterRole:
    """This process in a multi-worker cluster.

    Attributes:
        task_type: `"chief"` or `"worker"`.
        task_index: the index within its job.
        worker_index: the position among all workers, chief first (TensorFlow's id in the
            cluster, also the input pipeline index of its share of the data).
        addresses: every task's `host:port`, in `worker_index` order.
        has_chief_job: whether the cluster has a `chief` job (else worker 0 is the chief).
    """

    task_type: str
    task_index: int
    worker_index: int
    addresses: tuple
    has_chief_job: bool = False

    @property
    def num_workers(self):
        return len(self.addresses)

    @property
    def is_chief(self):
        return self.worker_index == 0

    @property
    def name(self):
        return f"{self.task_type} {self.task_index}" + (" (chief)" if self.is_chief and
                                                        self.task_type != "chief" else "")

    def peers(self):
        """`{address: task name}` of the other tasks."""
        return {a: self.task_name(i) for i, a in enumerate(self.addresses)
                if i != self.worker_index}

    def task_name(self, worker_index):
        """`"chief 0"` or `"worker <index>"` of the task at `worker_index`."""
        if self.has_chief_job:
            return "chief 0" if worker_index == 0 else f"worker {worker_index - 1}"
        return f"worker {worker_index}"


def _check_address(job, i, address):
    where = f"cluster[{job!r}][{i}]"
    if not isinstance(address, str) or address.count(":") < 1:
        raise ValueError(f"TF_CONFIG {where} must be a 'host:port' string; got {address!r}.")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"TF_CONFIG {where} must be 'host:port' with a port in 1..65535; got "
                         f"{address!r}.")


def parse_tf_config(text):
    """The `ClusterRole` that a `TF_CONFIG` string describes.

    Raises:
        ValueError: naming what is wrong and what is expected: not JSON, no cluster, jobs
            other than chief/worker, more than one chief, malformed or repeated addresses, a
            task type that is not in the cluster, or an index out of range.

    Example:

    >>> parse_tf_config('{"cluster": {"worker": ["a:1", "b:2"]}, '
    ...                 '"task": {"type": "worker", "index": 1}}').worker_index
    1
    """
    if not text or not text.strip():
        raise ValueError(f"strategy 'multi_worker' needs the {TF_CONFIG_ENV} environment "
                         f"variable: the cluster and this task, e.g. {_EXAMPLE}. For one "
                         "machine, `python -m trainers.launch_local` writes it.")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{TF_CONFIG_ENV} is not valid JSON ({error}); got {text!r}. Expected "
                         f"e.g. {_EXAMPLE}.") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("cluster"), dict):
        raise ValueError(f"{TF_CONFIG_ENV} must be an object with a 'cluster' object; got "
                         f"{text!r}. Expected e.g. {_EXAMPLE}.")
    cluster = spec["cluster"]
    others = sorted(set(cluster) - set(JOBS))
    if others:
        raise ValueError(
            f"{TF_CONFIG_ENV} has jobs {others}: multi-worker MAML runs {list(JOBS)} tasks only "
            "(MultiWorkerMirroredStrategy has no parameter servers, and evaluation runs on "
            "the workers). Remove those jobs.")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise ValueError(f"TF_CONFIG cluster[{job!r}] must be a non-empty list of "
                             f"'host:port' strings; got {addresses!r}.")
        for i, address in enumerate(addresses):
            _check_address(job, i, address)
    if "chief" in cluster and len(cluster["chief"]) != 1:
        raise ValueError(f"TF_CONFIG cluster['chief'] must list exactly one address; got "
                         f"{cluster['chief']!r}.")
    if not cluster:
        raise ValueError(f"TF_CONFIG's cluster has no tasks; expected e.g. {_EXAMPLE}.")
    ordered = list(cluster.get("chief", [])) + list(cluster.get("worker", []))
    repeated = sorted({a for a in ordered if ordered.count(a) > 1})
    if repeated:
        raise ValueError(f"TF_CONFIG lists {repeated} for more than one task: every task "
                         "needs its own host:port.")

    task = spec.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(f"{TF_CONFIG_ENV} must say which task this process is: 'task': "
                         f"{{'type': ..., 'index': ...}}; got task={task!r}.")
    task_type, index = task["type"], task["index"]
    if task_type not in cluster:
        missing = "it has no 'chief' job" if task_type == "chief" else \
            f"its jobs are {sorted(cluster)}"
        raise ValueError(f"TF_CONFIG task type {task_type!r} is not in the cluster: {missing}. "
                         f"Expected one of {sorted(cluster)}.")
    if isinstance(index, bool) or not isinstance(index, int) or not \
            0 <= index < len(cluster[task_type]):
        raise ValueError(f"TF_CONFIG task index {index!r} is out of range: the cluster has "
                         f"{len(cluster[task_type])} {task_type!r} task(s), so the index must "
                         f"be in [0, {len(cluster[task_type])}).")
    has_chief = "chief" in cluster
    worker_index = index + (1 if task_type == "worker" and has_chief else 0)
    return ClusterRole(task_type, index, worker_index, tuple(ordered), has_chief)


def cluster_role(environ=None):
    """The `ClusterRole` of this process, from `TF_CONFIG` (see `parse_tf_config`)."""
    environ = os.environ if environ is None else environ
    return parse_tf_config(environ.get(TF_CONFIG_ENV, ""))


def describe_peers(role):
    """Which peers of `role` do not answer, in words (for error messages)."""
    return watchdog.describe_peers(role.peers())


def _configure_coordination(role, timeout_seconds):
    """TensorFlow's coordination service with our timeouts (registration, heartbeats, shutdown).

    MultiWorkerMirroredStrategy configures the service itself, with its defaults, unless one
    is configured already. The configuration API is not public; without it the defaults and
    the watchdog still apply.
    """
    try:
        from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
        from tensorflow.python.eager import context
    except ImportError:
        return False
    if context.context().coordination_service is not None:
        return False
    leader = "/job:chief/replica:0/task:0" if role.has_chief_job else "/job:worker/replica:0/task:0"
    jobs = []
    if role.has_chief_job:
        jobs.append(coordination_config_pb2.CoordinatedJob(name="chief", num_tasks=1))
    workers = role.num_workers - (1 if role.has_chief_job else 0)
    if workers:
        jobs.append(coordination_config_pb2.CoordinatedJob(name="worker", num_tasks=workers))
    ms = int(timeout_seconds * 1000)
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=leader, cluster_register_timeout_in_ms=ms,
        heartbeat_timeout_in_ms=ms, shutdown_barrier_timeout_in_ms=ms, coordinated_jobs=jobs)
    return True


def start_multi_worker(role, timeout_seconds, printer=print):
    """A `MultiWorkerMirroredStrategy` for `role`, every wait bounded by `timeout_seconds`.

    Call it before any other TensorFlow work in the process (TensorFlow's requirement: the
    cluster is configured when the runtime starts). Blocks until every task has joined.

    Raises:
        ClusterError: the cluster did not form in time (the message names the silent
            addresses). The chief, which TensorFlow lets wait forever, is ended by the
            watchdog instead (SIGKILL), after the same message on stderr.
    """
    printer(f"[cluster] {role.name}: worker {role.worker_index} of {role.num_workers}, "
            f"waiting up to {timeout_seconds:g} s for {list(role.peers()) or 'no peers'}",
            flush=True)
    _configure_coordination(role, timeout_seconds)
    # TensorFlow's own registration deadline ends a waiting worker with an error; the chief
    # waits without one, so the watchdog ends it a little later.
    try:
        # The margin lets TensorFlow's deadline, which starts once the runtime is up, speak
        # first where it exists.
        with watchdog.Watchdog(timeout_seconds + max(10.0, 0.1 * timeout_seconds),
                               f"{role.name} waiting for the cluster",
                               role.peers(), advice=_START_ADVICE):
            strategy = tf.distribute.MultiWorkerMirroredStrategy(
                communication_options=tf.distribute.experimental.CommunicationOptions(
                    timeout_seconds=timeout_seconds))
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError,
            tf.errors.AbortedError, tf.errors.InternalError) as error:
        raise ClusterError(
            f"{role.name} could not join the cluster within {timeout_seconds:g} s "
            f"({type(error).__name__}): {describe_peers(role)}. {_START_ADVICE}") from None
    printer(f"[cluster] all {role.num_workers} workers joined; "
            f"{strategy.num_replicas_in_sync} replicas in sync", flush=True)
    return strategy


def finish_together(role, timeout_seconds, printer=print):
    """Returns once every worker has reached here (the end of its run), or raises.

    A collective completes on a worker as soon as its own share has arrived, while a peer
    may still be pulling this worker's share from it: a worker that left right after the
    last collective could end its peer's run with `UnavailableError ... RecvBuf` though
    both finished. The coordination service's barrier holds every worker until all are
    done. Where TensorFlow lacks the (non-public) barrier API, this returns at once.

    Raises:
        One of `PEER_ERRORS` (or `InternalError`) when a peer died or did not arrive within
        `timeout_seconds`.
    """
    try:
        from tensorflow.python.eager import context
    except ImportError:
        return False
    if not hasattr(context.context(), "wait_at_barrier"):
        return False
    context.context().wait_at_barrier("keras_meta/finished", int(timeout_seconds * 1000))
    printer(f"[cluster] {role.name}: all {role.num_workers} workers finished", flush=True)
    return True


# The errors a collective raises when a peer died, stalled past the timeout, or the
# coordination service aborted the step on its behalf.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
               tf.errors.CancelledError, tf.errors.AbortedError)


def worker_lost(role, error, iteration, checkpoint):
    """The `ClusterError` to raise when a collective of iteration `iteration` failed."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    # TensorFlow names the lost task on the line after "...unhealthy (stopped sending
    # heartbeats):", or in a line mentioning the remote task.
    detail = lines[0] if lines else ""
    for i, line in enumerate(lines):
        if "unhealthy" in line:
            detail = line + (" " + lines[i + 1] if i + 1 < len(lines) else "")
            break
        if "task" in line and detail == (lines[0] if lines else ""):
            detail = line
    return ClusterError(
        f"{role.name}: another worker failed or stopped answering during iteration "
        f"{iteration} ({type(error).__name__}: {detail[:300]}). The last checkpoint is "
        f"{checkpoint or 'none'}; relaunch every worker with the same command to resume from "
        "it.")
