#!/usr/bin/env python3
"""Turns recorded guest traffic into seed candidates for every fuzz target.

    fuzz/make-seeds.py --fuse REC... --p9 REC... --out DIR

REC files come from `virtiofsd-rs --record-requests` (FUSE: records of
`len[2]` with bit 15 set for the hiprio queue, then the request) and
`p9d --record-requests` (9P T-frames back to back). Each recording is cut
into windows of consecutive requests, each window behind the session's
opening (FUSE INIT; 9P Tversion and Tattach), and written in each target's
input format under DIR/TARGET/. `fuzz/seed.sh` then keeps the candidates
that add coverage (libFuzzer's -merge) as the checked-in seeds.

WRITE payloads are cut to WRITE_DATA bytes (the request's sizes adjusted),
so seeds stay small and still well-formed.
"""

import argparse
import hashlib
import os
import struct

WINDOW = 12
WRITE_DATA = 64
FUSE_INIT, FUSE_WRITE = 26, 16
P9_TVERSION, P9_TATTACH, P9_TWRITE = 100, 104, 118
# vhost_user_msgs' handshake operands: VIRTIO_F_VERSION_1 (the target adds
# PROTOCOL_FEATURES), no protocol features.
HANDSHAKE = struct.pack("<QQ", 1 << 32, 0)
# Structured targets carry a request's length in one byte.
SMALL = 255


def fuse_records(path):
    """(hiprio, request bytes) of a FUSE recording, WRITE data cut."""
    data = open(path, "rb").read()
    i, out = 0, []
    while i + 2 <= len(data):
        v = struct.unpack_from("<H", data, i)[0]
        body = bytearray(data[i + 2 : i + 2 + (v & 0x7FFF)])
        i += 2 + (v & 0x7FFF)
        if len(body) >= 80 and struct.unpack_from("<I", body, 4)[0] == FUSE_WRITE:
            body = body[: 80 + WRITE_DATA]
            struct.pack_into("<I", body, 56, len(body) - 80)
        if len(body) >= 4:
            struct.pack_into("<I", body, 0, len(body))
        out.append((bool(v & 0x8000), bytes(body)))
    return out


def p9_frames(path):
    """The T-frames of a 9P recording, Twrite data cut."""
    data = open(path, "rb").read()
    i, out = 0, []
    while i + 7 <= len(data):
        size = struct.unpack_from("<I", data, i)[0]
        if size < 7 or i + size > len(data):
            break
        frame = bytearray(data[i : i + size])
        i += size
        # Twrite: size[4] type[1] tag[2] fid[4] offset[8] count[4] data
        if frame[4] == P9_TWRITE and len(frame) > 23 + WRITE_DATA:
            frame = frame[: 23 + WRITE_DATA]
            struct.pack_into("<I", frame, 19, WRITE_DATA)
            struct.pack_into("<I", frame, 0, len(frame))
        out.append(bytes(frame))
    return out


def windows(items, opening):
    """Consecutive windows of `items`, each behind `opening`."""
    for start in range(0, len(items), WINDOW):
        yield opening + items[start : start + WINDOW]


def fuse_record(hiprio, body):
    return struct.pack("<H", len(body) | (0x8000 if hiprio else 0)) + body


def write(out, target, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def fuse_seeds(records, out):
    opening = [r for r in records if len(r[1]) >= 8 and struct.unpack_from("<I", r[1], 4)[0] == FUSE_INIT][:1]
    rest = [r for r in records if r not in opening]
    for n, w in enumerate(windows(rest, opening)):
        stream = b"".join(fuse_record(h, b) for h, b in w)
        write(out, "fuse_device", bytes([n % 2]) + stream)
        small = [(h, b) for h, b in w if len(b) <= SMALL]
        # virtio_mmio: probe with every feature, then each request on its
        # queue, notified, and a wait.
        mmio = bytes([n % 2, 2]) + b"\xff" * 8
        for h, b in small:
            mmio += bytes([3, 0 if h else 1, len(b)]) + b + b"\x07"
        write(out, "virtio_mmio", mmio)
        # vhost_user_msgs: handshake, both queues set up, requests kicked.
        vu = bytes([n % 2, 1]) + HANDSHAKE + bytes([3, 0, 0, 3, 1, 0])
        for h, b in small:
            vu += bytes([4, 0 if h else 1, len(b)]) + b + b"\x07\x01"
        write(out, "vhost_user_msgs", vu)


def p9_seeds(frames, out):
    opening = []
    for f in frames:
        if f[4] in (P9_TVERSION, P9_TATTACH) and f not in opening:
            opening.append(f)
        if f[4] == P9_TATTACH:
            break
    rest = [f for f in frames if f not in opening]
    for n, w in enumerate(windows(rest, opening)):
        stream = b"".join(w)
        write(out, "p9_session", stream)
        write(out, "p9_stream", bytes([n % 4]) + stream)
        write(out, "virtio_9p", bytes([n % 4]) + b"".join(struct.pack("<H", len(f)) + f for f in w))
        write(out, "p9_frame", w[-1])
        small = [f for f in w if len(f) <= SMALL]
        mmio = bytes([2, 2]) + b"\xff" * 8
        for f in small:
            mmio += bytes([3, 0, len(f)]) + f + b"\x07"
        write(out, "virtio_mmio", mmio)
        vu = bytes([2, 1]) + HANDSHAKE + bytes([3, 0, 0])
        for f in small:
            vu += bytes([4, 0, len(f)]) + f + b"\x07\x01"
        write(out, "vhost_user_msgs", vu)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fuse", nargs="*", default=[])
    ap.add_argument("--p9", nargs="*", default=[])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    for path in a.fuse:
        fuse_seeds(fuse_records(path), a.out)
    for path in a.p9:
        p9_seeds(p9_frames(path), a.out)
    for t in sorted(os.listdir(a.out)):
        print(f"{t}: {len(os.listdir(os.path.join(a.out, t)))} candidates")


if __name__ == "__main__":
    main()
