"""A watchdog for waits that TensorFlow does not bound and Python cannot interrupt.

When a multi-worker cluster forms, the chief waits inside one C++ call for the other workers
to register, without a deadline, while holding the interpreter lock: no Python thread or
signal handler runs until the call returns, and TensorFlow takes over SIGTERM for its
preemption handling. So the watchdog is a separate small process (this file, run as a
script, importing the standard library only). It waits on a pipe from the guarded process;
if the pipe stays silent for the timeout, it probes the peers, prints why on the guarded
process's stderr, and ends the process with SIGKILL. Disarming, or the guarded process
ending for any reason, closes the pipe and the watchdog exits quietly.
"""

import os
import select
import signal
import socket
import subprocess
import sys


def unreachable(addresses, timeout=1.0):
    """The `host:port` addresses among `addresses` where nothing accepts a TCP connection."""
    silent = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                pass
        except (OSError, ValueError):
            silent.append(address)
    return silent


def describe_peers(peers):
    """Which of `peers` (`{address: task name}`) do not answer, in words."""
    silent = unreachable(peers)
    if not silent:
        return ("every peer accepts connections, so some task has not joined yet (it is "
                "still starting, or it runs with another TF_CONFIG)")
    return "no answer from " + ", ".join(f"{a} ({peers[a]})" for a in silent)


class Watchdog:
    """Ends this process with a message if a guarded wait lasts longer than `timeout_seconds`.

    Args:
        timeout_seconds: how long a wait may last.
        what: the wait, in words ("waiting for the cluster").
        peers: `{address: task name}` to probe and name in the message.
        advice: the last sentence of the message: what to do about it.

    Example:

    >>> with Watchdog(60, "waiting for the cluster", {"10.0.0.2:2222": "worker 1"}):
    ...     strategy = tf.distribute.MultiWorkerMirroredStrategy()
    """

    def __init__(self, timeout_seconds, what, peers, advice=""):
        self.timeout_seconds = float(timeout_seconds)
        self.what = what
        self.peers = dict(peers)
        self.advice = advice
        self._process = None

    def __enter__(self):
        args = [sys.executable, os.path.abspath(__file__), str(os.getpid()),
                str(self.timeout_seconds), self.what, self.advice]
        args += [f"{address}={name}" for address, name in self.peers.items()]
        # Its stderr is ours, so that the message lands where this process's errors do.
        self._process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc_info):
        self._process.stdin.close()
        self._process.wait()
        return False


def _watch(parent, timeout, what, advice, peer_args):
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if ready:
        return 0
    peers = dict(arg.rsplit("=", 1) for arg in peer_args)
    try:
        detail = describe_peers(peers) if peers else "no peers to probe"
    except Exception as error:  # The message must go out whatever the probe does.
        detail = f"the peers could not be probed ({error})"
    sys.stderr.write(f"[cluster] error: {what} took more than {timeout:g} s: {detail}. "
                     f"{advice} Stopping process {parent} (SIGKILL: TensorFlow's wait cannot be "
                     "interrupted).\n")
    sys.stderr.flush()
    os.kill(parent, signal.SIGKILL)
    return 1


if __name__ == "__main__":
    sys.exit(_watch(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4],
                    sys.argv[5:]))
