#!/usr/bin/env python3
"""Writes an empty registry hive (regf base block + one hbin holding the root
key and its security cell) to argv[1]. hivex cannot create a hive, only edit
one: `hivexregedit --merge` then fills this with the keys of a .reg file.
Layout after the "Windows NT Registry File Format" notes (regf, hbin, nk, sk)."""
import struct
import sys

HBIN = 4096
root_off, sk_off = 0x20, 0x20 + 88

nk = bytearray(88)
struct.pack_into("<i", nk, 0, -88)
name = b"ROOT"
struct.pack_into(
    "<2sHQIIIIiiIiIiIIIIIHH",
    nk, 4,
    b"nk", 0x2C, 0, 0, 0,        # flags: hive entry, no delete, ASCII name
    0, 0, -1, -1,                # subkeys, volatile subkeys, their lists
    0, -1, sk_off, -1,           # values, value list, security, class
    0, 0, 0, 0, 0,               # largest names/data, workvar
    len(name), 0,
)
nk[4 + 76:4 + 76 + len(name)] = name

sd = struct.pack("<BBHIIII", 1, 0, 0x8004, 0, 0, 0, 0)  # self-relative, no DACL
sk = bytearray(48)
struct.pack_into("<i2sHIIII", sk, 0, -48, b"sk", 0, sk_off, sk_off, 1, len(sd))
sk[24:24 + len(sd)] = sd

hbin = bytearray(HBIN)
struct.pack_into("<4sII", hbin, 0, b"hbin", 0, HBIN)
hbin[root_off:root_off + 88] = nk
hbin[sk_off:sk_off + 48] = sk
free = HBIN - (sk_off + 48)
struct.pack_into("<i", hbin, sk_off + 48, free)

base = bytearray(4096)
struct.pack_into("<4sIIQIIIIIII", base, 0, b"regf", 1, 1, 0, 1, 3, 0, 1, root_off, HBIN, 1)
csum = 0
for (d,) in struct.iter_unpack("<I", bytes(base[:508])):
    csum ^= d
csum = {0: 1, 0xFFFFFFFF: 0xFFFFFFFE}.get(csum, csum)
struct.pack_into("<I", base, 508, csum)

with open(sys.argv[1], "wb") as f:
    f.write(base + hbin)
