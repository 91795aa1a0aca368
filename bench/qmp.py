#!/usr/bin/env python3
"""qmp.py - a small QMP client for the benchmark scripts (no extra packages).

As a module:
    q = Qmp("/path/qmp.sock")          # connects, reads the greeting, qmp_capabilities
    q.execute("query-block-jobs")      # the "return" value; raises QmpError on "error"
    q.wait_event("BLOCK_JOB_COMPLETED", timeout=60)   # the event dict
    q.events                           # events received and not yet waited for

As a command (used by bench/migrate.sh):
    qmp.py mirror --socket QMP --device NODE --target NODE [--target-nbd-socket SOCK]
        [--timeout S] [--ready-timeout S] [--poll-ms MS] [--granularity BYTES]
        [--copy-mode background|write-blocking]
  blockdev-add an NBD client node --target to the server on SOCK (when given),
  blockdev-mirror (sync=full) from --device to --target, polls query-block-jobs
  until the job is ready, then job-complete and waits for BLOCK_JOB_COMPLETED.
  Prints one JSON object: t_start, t_ready, t_complete, t_completed (epoch
  seconds), seconds (start to completion), ready_seconds, pause_ms (job-complete
  sent to the BLOCK_JOB_COMPLETED event), offset and len (the job's progress in
  bytes from the completion event: for mirror, every byte copied to the target,
  the first full pass plus every re-copy of dirty data), polls.
  With --ready-timeout S, a job not ready after S seconds (the guest dirties
  data as fast as the mirror copies it) is cancelled and the object says
  "ready": false, with seconds = S and offset/len from the last poll; the
  exit status is 0 (a result, not a failure).
"""

import argparse
import json
import socket
import sys
import time


class QmpError(Exception):
    pass


class Qmp:
    def __init__(self, path, timeout=30.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.events = []
        self.greeting = self._read()
        if "QMP" not in self.greeting:
            raise QmpError(f"no QMP greeting: {self.greeting}")
        self.execute("qmp_capabilities")

    def _read(self, deadline=None):
        while b"\n" not in self.buf:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("QMP read timed out")
                self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QmpError("QMP connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, cmd, **args):
        msg = {"execute": cmd}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._read()
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise QmpError(f"{cmd}: {r['error'].get('desc', r['error'])}")
            return r.get("return")

    def wait_event(self, name, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == name:
                    return self.events.pop(i)
            r = self._read(deadline)
            if "event" in r:
                self.events.append(r)


def mirror(a):
    q = Qmp(a.socket)
    if a.target_nbd_socket:
        q.execute("blockdev-add", driver="nbd", **{"node-name": a.target},
                  server={"type": "unix", "path": a.target_nbd_socket})
    deadline = time.monotonic() + a.timeout
    t_start = time.time()
    extra = {"granularity": a.granularity} if a.granularity else {}
    if a.copy_mode:
        extra["copy-mode"] = a.copy_mode
    q.execute("blockdev-mirror", **{"job-id": "mig0"}, device=a.device,
              target=a.target, sync="full", **extra)
    polls = 0
    ready_deadline = time.monotonic() + a.ready_timeout if a.ready_timeout else None
    while True:
        polls += 1
        jobs = [j for j in q.execute("query-block-jobs") if j["device"] == "mig0"]
        if not jobs:
            raise QmpError("mirror job vanished before it was ready")
        if jobs[0].get("ready"):
            break
        if ready_deadline is not None and time.monotonic() > ready_deadline:
            q.execute("block-job-cancel", device="mig0", force=True)
            q.wait_event("BLOCK_JOB_CANCELLED", 30)
            print(json.dumps({
                "ready": False, "t_start": t_start, "seconds": time.time() - t_start,
                "offset": jobs[0].get("offset"), "len": jobs[0].get("len"), "polls": polls,
            }))
            return
        if time.monotonic() > deadline:
            raise TimeoutError("mirror job not ready in time")
        time.sleep(a.poll_ms / 1000)
    t_ready = time.time()
    t_complete = time.time()
    q.execute("job-complete", id="mig0")
    ev = q.wait_event("BLOCK_JOB_COMPLETED", max(1.0, deadline - time.monotonic()))
    t_completed = time.time()
    data = ev.get("data", {})
    if data.get("error"):
        raise QmpError(f"mirror failed: {data['error']}")
    print(json.dumps({
        "ready": True, "t_start": t_start, "t_ready": t_ready, "t_complete": t_complete,
        "t_completed": t_completed, "seconds": t_completed - t_start,
        "ready_seconds": t_ready - t_start,
        "pause_ms": 1000 * (t_completed - t_complete),
        "offset": data.get("offset"), "len": data.get("len"), "polls": polls,
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mirror")
    m.add_argument("--socket", required=True)
    m.add_argument("--device", required=True)
    m.add_argument("--target", required=True)
    m.add_argument("--target-nbd-socket")
    m.add_argument("--timeout", type=float, default=600)
    m.add_argument("--ready-timeout", type=float,
                   help="cancel the job if it is not ready after this many seconds")
    m.add_argument("--poll-ms", type=float, default=50)
    m.add_argument("--granularity", type=int, help="the mirror's dirty bitmap granularity (bytes)")
    m.add_argument("--copy-mode", choices=["background", "write-blocking"],
                   help="QEMU's copy mode: write-blocking is its active mirror (each guest "
                        "write also goes to the target before it completes)")
    a = p.parse_args()
    try:
        mirror(a)
    except (QmpError, OSError, TimeoutError) as e:
        sys.exit(f"qmp.py: {e}")


if __name__ == "__main__":
    main()
