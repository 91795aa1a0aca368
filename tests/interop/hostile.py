#!/usr/bin/env python3
"""Hostile inputs for tests/interop/test-hostile-files.sh (issue 12).

Writes packs (docs/pack-format.md) and damages stores (docs/store-format.md) by hand,
fixing up the CRC-32C, the index hash and the identity so that imgstream's reader gets
past them to the checks under test, and serves files over HTTP(S) in the ways the test
needs (with ranges, over TLS, or not at all: a server that stalls).

  hostile.py zero-pack OUT --chunks N [--chunk-size C] [--image-size S]
             [--base-image-size S2 --hint H] [--index-length L]
      A pack of N zero chunks (its index: one zstd frame of RLE blocks, 24 KiB for
      2^24 entries). With --base-image-size it has a base: the identity of an all-zero
      image of S2 bytes, at the hint H. --index-length L claims an index of L bytes
      (the frame is cut or padded, its hash fixed up).
  hostile.py store-generation META GEN
      Sets both slots' generation to GEN and fixes their CRCs.
  hostile.py store-regions META REGIONS
      Rewrites the header to claim REGIONS regions of 4 KiB (CRC fixed) and cuts the
      file to 12 KiB.
  hostile.py serve MODE PORTFILE [DIR [CERT KEY]] [--stall-after N]
      files: DIR over HTTP with Range; tls: the same over HTTPS (CERT, KEY); stall:
      accepts, reads the request and never answers. Writes its port to PORTFILE. With
      --stall-after, files answers N requests, then none.
"""
import argparse
import hashlib
import os
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# ---- CRC-32C (Castagnoli), as base/crc32c.cc

_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


# ---- packs

HEADER = 4096
ENTRY = 48
BLOCK = 128 * 1024  # zstd's largest block


def zero_identity(image_size, chunk_size):
    """The identity of an image of zeros: the tag, the sizes, a zero hash per chunk."""
    chunks = (image_size + chunk_size - 1) // chunk_size
    h = hashlib.sha256(b"imgstream pack identity v1\0" + struct.pack("<QI", image_size, chunk_size))
    zeros = bytes(32 * 65536)
    left = chunks * 32
    while left:
        n = min(left, len(zeros))
        h.update(zeros[:n])
        left -= n
    return h.digest()


def zero_frame(raw_bytes):
    """One zstd frame of raw_bytes zeros: RLE blocks, a 128 KiB window, the size declared."""
    out = bytearray(struct.pack("<I", 0xFD2FB528))
    out += bytes([0xC0, 0x38])  # 8-byte content size, not single-segment; window 2^17
    out += struct.pack("<Q", raw_bytes)
    left = raw_bytes
    while left:
        n = min(left, BLOCK)
        left -= n
        head = (n << 3) | (1 << 1) | (1 if left == 0 else 0)  # RLE block
        out += struct.pack("<I", head)[:3] + b"\0"
    return bytes(out)


def pack_header(image_size, chunk_size, index_length, identity, index_hash, base_identity=None,
                hint=b""):
    chunks = (image_size + chunk_size - 1) // chunk_size
    b = bytearray(HEADER)
    flags = 1 if base_identity is not None else 0
    struct.pack_into("<8sIIQIIQQQQQQ", b, 0, b"IMGPACK1", 2, flags, image_size, chunk_size, 3,
                     chunks, HEADER, index_length, HEADER, HEADER, 0)
    b[80:112] = identity
    b[112:144] = index_hash
    if base_identity is not None:
        b[144:176] = base_identity
    struct.pack_into("<H", b, 176, len(hint))
    b[178:178 + len(hint)] = hint
    struct.pack_into("<I", b, HEADER - 4, crc32c(bytes(b[:HEADER - 4])))
    return bytes(b)


def zero_pack(a):
    image_size = a.image_size or a.chunks * a.chunk_size
    frame = zero_frame(a.chunks * ENTRY)
    if a.index_length:
        frame = (frame + bytes(a.index_length))[:a.index_length]
    base = None
    if a.base_image_size:
        base = zero_identity(a.base_image_size, a.chunk_size)
    head = pack_header(image_size, a.chunk_size, len(frame), zero_identity(image_size, a.chunk_size),
                       hashlib.sha256(frame).digest(), base, a.hint.encode())
    with open(a.out, "wb") as f:
        f.write(head + frame)


# ---- stores


def store_generation(a):
    with open(a.meta, "r+b") as f:
        head = f.read(HEADER)
        slot_bytes = struct.unpack_from("<Q", head, 40)[0]
        for i in range(2):
            f.seek(HEADER + i * slot_bytes)
            slot = bytearray(f.read(512))
            struct.pack_into("<Q", slot, 8, a.generation)
            struct.pack_into("<I", slot, 508, crc32c(bytes(slot[:508])))
            f.seek(HEADER + i * slot_bytes)
            f.write(slot)


def store_regions(a):
    with open(a.meta, "r+b") as f:
        head = bytearray(f.read(HEADER))
        region = 4096
        image = a.regions * region
        bitmap = (a.regions + 7) // 8
        slot_bytes = (512 + bitmap + 4095) // 4096 * 4096
        struct.pack_into("<QI", head, 16, image, region)
        struct.pack_into("<QQ", head, 32, a.regions, slot_bytes)
        struct.pack_into("<I", head, HEADER - 4, crc32c(bytes(head[:HEADER - 4])))
        f.seek(0)
        f.write(head)
        f.truncate(12 * 1024)


# ---- servers


def serve(a):
    if a.mode == "stall":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        with open(a.portfile + ".tmp", "w") as f:
            f.write(str(s.getsockname()[1]))
        os.rename(a.portfile + ".tmp", a.portfile)
        held = []
        while True:  # read each request, answer none
            c, _ = s.accept()
            held.append(c)
            threading.Thread(target=lambda c=c: (c.recv(65536), time.sleep(3600)), daemon=True).start()

    root = a.dir
    answered = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            with lock:
                answered[0] += 1
                stall = a.stall_after is not None and answered[0] > a.stall_after
            if stall:
                time.sleep(3600)
            path = os.path.join(root, self.path.lstrip("/").split("?")[0])
            if not os.path.isfile(path):
                self.send_error(404)
                return
            with open(path, "rb") as f:
                data = f.read()
            rng = self.headers.get("Range", "")
            if rng.startswith("bytes="):
                first, last = rng[6:].split("-")
                first, last = int(first), min(int(last), len(data) - 1)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
                body = data[first:last + 1]
            else:
                self.send_response(200)
                body = data
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if a.mode == "tls":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    with open(a.portfile + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(a.portfile + ".tmp", a.portfile)
    server.serve_forever()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    z = sub.add_parser("zero-pack")
    z.add_argument("out")
    z.add_argument("--chunks", type=int, required=True)
    z.add_argument("--chunk-size", type=int, default=4096)
    z.add_argument("--image-size", type=int, default=0)
    z.add_argument("--base-image-size", type=int, default=0)
    z.add_argument("--hint", default="")
    z.add_argument("--index-length", type=int, default=0)
    g = sub.add_parser("store-generation")
    g.add_argument("meta")
    g.add_argument("generation", type=int)
    r = sub.add_parser("store-regions")
    r.add_argument("meta")
    r.add_argument("regions", type=int)
    s = sub.add_parser("serve")
    s.add_argument("mode", choices=["files", "tls", "stall"])
    s.add_argument("portfile")
    s.add_argument("dir", nargs="?")
    s.add_argument("cert", nargs="?")
    s.add_argument("key", nargs="?")
    s.add_argument("--stall-after", type=int)
    a = p.parse_args()
    {"zero-pack": zero_pack, "store-generation": store_generation, "store-regions": store_regions,
     "serve": serve}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
