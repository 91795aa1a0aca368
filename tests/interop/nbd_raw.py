#!/usr/bin/env python3
"""nbd_raw.py - a minimal NBD client that sends exactly what it is told.

Real clients (libnbd, qemu) refuse to send requests the server said it
does not support, so they cannot test that the server itself enforces its
contract. This client can. Only what the interop tests need: fixed
newstyle handshake with NBD_OPT_GO (optionally structured replies), simple
replies, and one call per command.

Usage as a library:  c = Client(unix_path, export="");  c.cmd(...)
Usage as a script:   nbd_raw.py SOCKET EXPORT CHECK...  (see main()).
"""
import socket
import struct
import sys

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

OPT_ABORT, OPT_GO, OPT_STRUCTURED_REPLY = 2, 7, 8
REP_ACK, REP_INFO = 1, 3
INFO_EXPORT = 0

CMD = {"read": 0, "write": 1, "disc": 2, "flush": 3, "trim": 4,
       "cache": 5, "write_zeroes": 6, "block_status": 7}
FLAGS = {"fua": 1 << 0, "nohole": 1 << 1, "df": 1 << 2, "fast": 1 << 4}

ERRNO = {0: "OK", 1: "EPERM", 5: "EIO", 12: "ENOMEM", 22: "EINVAL",
         28: "ENOSPC", 75: "EOVERFLOW", 95: "ENOTSUP", 108: "ESHUTDOWN"}

TRANSMISSION_FLAGS = {0: "HAS_FLAGS", 1: "READ_ONLY", 2: "SEND_FLUSH",
                      3: "SEND_FUA", 4: "ROTATIONAL", 5: "SEND_TRIM",
                      6: "SEND_WRITE_ZEROES", 7: "SEND_DF", 8: "CAN_MULTI_CONN",
                      9: "SEND_RESIZE", 10: "SEND_CACHE", 11: "SEND_FAST_ZERO"}


class ProtocolError(Exception):
    pass


class Client:
    def __init__(self, path, export="", export_name_opt=False):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(10)
        self.s.connect(path)
        self.cookie = 0
        self._handshake(export, export_name_opt)

    def _recv(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise ProtocolError(f"server closed the connection ({len(buf)} of {n} bytes)")
            buf += chunk
        return buf

    def _option(self, opt, data):
        self.s.sendall(IHAVEOPT + struct.pack(">II", opt, len(data)) + data)

    def _opt_reply(self, opt):
        magic, ropt, rtype, length = struct.unpack(">QIII", self._recv(20))
        if magic != OPT_REPLY_MAGIC or ropt != opt:
            raise ProtocolError(f"bad option reply magic {magic:#x} option {ropt}")
        return rtype, self._recv(length)

    def _handshake(self, export, export_name_opt):
        if self._recv(8) != NBDMAGIC or self._recv(8) != IHAVEOPT:
            raise ProtocolError("not a fixed newstyle server")
        (hflags,) = struct.unpack(">H", self._recv(2))
        if not hflags & 1:
            raise ProtocolError("server lacks NBD_FLAG_FIXED_NEWSTYLE")
        no_zeroes = bool(hflags & 2)
        cflags = 1 | (2 if no_zeroes else 0)
        self.s.sendall(struct.pack(">I", cflags))
        name = export.encode()
        if export_name_opt:
            # NBD_OPT_EXPORT_NAME (1): no reply header; size, flags and
            # (unless NO_ZEROES) 124 zero bytes, or the server disconnects.
            self._option(1, name)
            self.size, self.flags = struct.unpack(">QH", self._recv(10))
            if not no_zeroes:
                self._recv(124)
            return
        self._option(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
        self.size = self.flags = None
        while True:
            rtype, data = self._opt_reply(OPT_GO)
            if rtype == REP_INFO:
                (itype,) = struct.unpack(">H", data[:2])
                if itype == INFO_EXPORT:
                    self.size, self.flags = struct.unpack(">QH", data[2:12])
            elif rtype == REP_ACK:
                break
            elif rtype & 0x80000000:
                raise ProtocolError(f"NBD_OPT_GO refused: reply type {rtype:#x} {data!r}")
        if self.size is None:
            raise ProtocolError("no NBD_INFO_EXPORT before NBD_REP_ACK")

    def flag_names(self):
        return [n for b, n in TRANSMISSION_FLAGS.items() if self.flags & (1 << b)]

    def cmd(self, name, offset=0, length=0, data=b"", flags=0):
        """Send one request, return (errno_name, payload)."""
        self.cookie += 1
        if name == "write":
            length = len(data)
        ctype = CMD[name] if name in CMD else int(name)
        req = struct.pack(">IHHQQI", REQUEST_MAGIC, flags, ctype, self.cookie, offset, length)
        self.s.sendall(req + data)
        if name == "disc":
            return "OK", b""
        magic, err, cookie = struct.unpack(">IIQ", self._recv(16))
        if magic != SIMPLE_REPLY_MAGIC:
            raise ProtocolError(f"{name}: reply magic {magic:#x} (structured replies were not negotiated)")
        if cookie != self.cookie:
            raise ProtocolError(f"{name}: reply cookie {cookie} != {self.cookie}")
        payload = b""
        if name == "read" and err == 0:
            payload = self._recv(length)
        return ERRNO.get(err, str(err)), payload

    def close(self):
        try:
            self.cmd("disc")
        finally:
            self.s.close()


def abuse(path, export, kind):
    """Misbehaving clients; the server must drop them and live on."""
    if kind == "burst_close":
        # Many requests in flight, then close without reading a reply.
        c = Client(path, export)
        reqs = b""
        for i in range(64):
            reqs += struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD["read"], i, i * 65536, 65536)
        c.s.sendall(reqs)
        c.s.close()
        return "OK"
    if kind == "burst_write_close":
        c = Client(path, export)
        payload = b"\x77" * 65536
        for i in range(16):
            c.s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD["write"], i, (i + 64) * 65536, 65536) + payload)
        c.s.shutdown(socket.SHUT_RDWR)
        c.s.close()
        return "OK"
    if kind in ("bad_magic", "truncated", "short_write"):
        c = Client(path, export)
        if kind == "bad_magic":
            c.s.sendall(struct.pack(">IHHQQI", 0x12345678, 0, 0, 1, 0, 512))
        elif kind == "truncated":
            c.s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, 0, 1, 0, 512)[:13])
            c.s.shutdown(socket.SHUT_WR)
        else:
            c.s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD["write"], 1, 0, 4096) + b"x" * 100)
            c.s.shutdown(socket.SHUT_WR)
        # The server must close the connection (EOF), not hang or reply OK.
        try:
            data = c.s.recv(65536)
        except socket.timeout:
            return "HANG"
        except ConnectionResetError:
            return "OK"
        c.s.close()
        if data:
            (magic, err) = struct.unpack(">II", data[:8]) if len(data) >= 8 else (0, 0)
            return "OK" if err else f"REPLIED:{data[:16].hex()}"
        return "OK"
    if kind == "export_name":
        c = Client(path, export, export_name_opt=True)
        got, data = c.cmd("read", 0, 4096)
        c.close()
        return got
    if kind == "handshake_abort":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(path)
        s.recv(18)
        s.close()
        return "OK"
    raise SystemExit(f"unknown abuse {kind}")


def main():
    """nbd_raw.py SOCKET EXPORT CHECK...

    Each CHECK is CMD:OFFSET:LENGTH[:FLAG...]=EXPECTED[|EXPECTED...] (FLAG
    one of fua, nohole, df, fast), e.g.
    write:0:4096=EPERM or read:0:0=OK|EINVAL; CMD is one of read, write,
    flush, trim, cache, write_zeroes, block_status, or a number. Also
    "flags" prints the transmission flags, and "size" the export size.
    All checks share one connection, so it must survive errors. Checks
    named @burst_close, @burst_write_close, @bad_magic, @truncated,
    @short_write, @export_name, @handshake_abort run first, each on its own
    connection (see abuse())."""
    sock, export, checks = sys.argv[1], sys.argv[2], sys.argv[3:]
    bad = 0
    # Checks starting with "@" each use a connection of their own.
    for check in [c for c in checks if c.startswith("@")]:
        got = abuse(sock, export, check[1:])
        if got != "OK":
            bad += 1
        print(f"{'ok' if got == 'OK' else 'WRONG'}: {check} -> {got}", file=sys.stderr)
    checks = [c for c in checks if not c.startswith("@")]
    c = Client(sock, export)
    for check in checks:
        if check == "flags":
            print(" ".join(c.flag_names()))
            continue
        if check == "size":
            print(c.size)
            continue
        spec, want = check.split("=")
        parts = spec.split(":")
        name, off, length = parts[0], int(parts[1]), int(parts[2])
        flags = 0
        for f in parts[3:]:
            flags |= FLAGS[f]
        data = b"\x5a" * length if name == "write" else b""
        got, _ = c.cmd(name, off, length, data, flags)
        good = got in want.split("|")
        status = "ok" if good else "WRONG"
        if not good:
            bad += 1
        print(f"{status}: {spec} -> {got} (want {want})", file=sys.stderr)
    # The connection must still work after all of that.
    got, _ = c.cmd("read", 0, 512)
    if got != "OK":
        print(f"WRONG: read after the checks -> {got}", file=sys.stderr)
        bad += 1
    c.close()
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
