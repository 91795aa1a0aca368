#!/usr/bin/env python3
"""Print a pack's index, one line per chunk: NUMBER KIND OFFSET LENGTH.

KIND is 0 zero, 1 zstd, 2 raw, 3 base (docs/pack-format.md). The index is one zstd
frame at the header's index offset; the zstd CLI decompresses it, so this reads the
file as any outside tool would, without imgstream's own reader.
"""
import struct
import subprocess
import sys

with open(sys.argv[1], "rb") as f:
    head = f.read(4096)
    count, index_off, index_len = struct.unpack_from("<QQQ", head, 32)
    f.seek(index_off)
    stored = f.read(index_len)
ix = subprocess.run(["zstd", "-d", "-c", "-q"], input=stored, stdout=subprocess.PIPE,
                    check=True).stdout
if len(ix) != 48 * count:
    sys.exit(f"{sys.argv[1]}: index holds {len(ix)} bytes, expected {48 * count}")
for i in range(count):
    off, length, kind = struct.unpack_from("<QIB", ix, 48 * i + 32)
    print(i, kind, off, length)
