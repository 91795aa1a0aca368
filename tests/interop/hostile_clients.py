#!/usr/bin/env python3
"""hostile_clients.py - NBD clients that misbehave on purpose (issue 12, points 17, 20).

  stall SOCK N COUNT LEN   N clients with a 4 KiB receive buffer each send COUNT reads
                           of LEN bytes and never read a reply; prints "ready", then
                           holds the connections until killed.
  trickle SOCK N SECONDS   N clients that send their handshake one byte a second; prints
                           how long the longest lasted before the server cut it, or
                           "alive" if one outlived SECONDS.
  idle SOCK N              N clients that finish the handshake and sit idle; prints
                           "ready" (or "refused K" if the server refused K of them), holds.
  refused SOCK             one client's NBD_OPT_GO: prints the server's error message, or
                           "served" when it was served, or "closed" when the server just
                           closed the socket.
"""
import socket
import struct
import sys
import time

import nbd_raw


class Client(nbd_raw.Client):
    def __init__(self, path, rcvbuf=None, export=""):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(20)
        self.s.connect(path)
        self.cookie = 0
        self._handshake(export, False)


def stall(path, n, count, length):
    held = []
    for _ in range(n):
        c = Client(path, rcvbuf=4096)
        reqs = b"".join(struct.pack(">IHHQQI", nbd_raw.REQUEST_MAGIC, 0, 0, k + 1, 0, length)
                        for k in range(count))
        c.s.sendall(reqs)
        held.append(c)
    print("ready", flush=True)
    while True:
        time.sleep(60)


def trickle(path, n, seconds):
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.setblocking(False)
        socks.append(s)
    # Greeting (18 bytes) is read as it comes; then flags and an OPT_GO, byte by byte.
    name = b""
    msg = struct.pack(">I", 1) + b"IHAVEOPT" + struct.pack(">II", 7, 6 + len(name)) + \
        struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    start = time.monotonic()
    alive = {id(s): s for s in socks}
    longest = 0.0
    i = 0
    while alive and time.monotonic() - start < seconds:
        for key, s in list(alive.items()):
            try:
                try:
                    data = s.recv(4096)
                    if data == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    pass
                if i < len(msg):
                    s.send(msg[i:i + 1])
            except (ConnectionResetError, BrokenPipeError, OSError):
                longest = max(longest, time.monotonic() - start)
                del alive[key]
        i += 1
        time.sleep(1)
    print("alive" if alive else f"{longest:.1f}", flush=True)


def idle(path, n):
    held, refused = [], 0
    for _ in range(n):
        try:
            held.append(Client(path))
        except (nbd_raw.ProtocolError, OSError) as e:
            if refused == 0:
                print(f"client {len(held) + 1}: {e}", file=sys.stderr, flush=True)
            refused += 1
    print("ready" if refused == 0 else f"refused {refused}", flush=True)
    while True:
        time.sleep(60)


def refused(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    try:
        c = nbd_raw.Client.__new__(nbd_raw.Client)
        c.s, c.cookie = s, 0
        c._handshake("", False)
        print("served")
    except nbd_raw.ProtocolError as e:
        text = str(e)
        print(text if "refused" in text else "closed")
    except OSError:
        print("closed")


def main():
    cmd, path = sys.argv[1], sys.argv[2]
    if cmd == "stall":
        stall(path, int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif cmd == "trickle":
        trickle(path, int(sys.argv[3]), float(sys.argv[4]))
    elif cmd == "idle":
        idle(path, int(sys.argv[3]))
    elif cmd == "refused":
        refused(path)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
