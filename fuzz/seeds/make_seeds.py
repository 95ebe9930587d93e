#!/usr/bin/env python3
"""Derive the fuzz seed corpora (fuzz/seeds/<target>/) from the shared captures.

Usage: python3 fuzz/seeds/make_seeds.py [PCAP_DIR]   (default ../shared/data/pcaps/suricata-verify
relative to the repository root). Deterministic: the same captures give the same files.

Each seed starts with the target's choice bytes (see the doc comment of each target in
fuzz/fuzz_targets/) followed by bytes taken from the captures:
  parse_flow  Ethernet frames, one per distinct shape (VLAN, family, protocol, flags, options);
              DLT_NULL captures (BSD loopback: a 4-byte host-order family) get an Ethernet header
  http_mask   client-to-server TCP byte streams that start with an HTTP method (reassembled by
              sequence number, retransmissions dropped), cut into segments
  param_mask  request-line query strings and urlencoded form bodies
  range_mask  TCP/UDP payloads
  checksum    TCP/UDP segments (header + payload)
  discard     destinations (address, port, protocol) seen in the captures
"""

import hashlib
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "fuzz", "seeds")
DEFAULT_PCAPS = os.path.join(ROOT, "..", "shared", "data", "pcaps", "suricata-verify")

MAX_STREAM = 2048  # bytes of one HTTP stream kept in a seed
METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ")


def read_pcap(path):
    """Yields Ethernet frames (DLT_NULL converted)."""
    with open(path, "rb") as f:
        data = f.read()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        raise SystemExit(f"{path}: not a pcap file")
    linktype = struct.unpack(e + "I", data[20:24])[0]
    off = 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(e + "IIII", data[off : off + 16])
        pkt = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        if linktype == 1:
            yield pkt
        elif linktype == 0:
            # DLT_NULL: the address family in the capturing host's byte order.
            fam = struct.unpack(e + "I", pkt[:4])[0]
            if fam == 2:
                et = 0x0800
            elif fam in (10, 24, 28, 30):
                et = 0x86DD
            else:
                continue
            yield b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01" + struct.pack(">H", et) + pkt[4:]


def parse(frame):
    """(ethertype, l3 offset, version, proto, l4 offset, src, dst, ip end) or None."""
    off = 12
    et = struct.unpack(">H", frame[off : off + 2])[0]
    off += 2
    for _ in range(2):
        if et in (0x8100, 0x88A8) and len(frame) >= off + 4:
            et = struct.unpack(">H", frame[off + 2 : off + 4])[0]
            off += 4
    if et == 0x0800 and len(frame) >= off + 20:
        ihl = (frame[off] & 15) * 4
        total = struct.unpack(">H", frame[off + 2 : off + 4])[0]
        frag = struct.unpack(">H", frame[off + 6 : off + 8])[0] & 0x1FFF
        return et, off, 4, frame[off + 9], (off + ihl if frag == 0 else None), frame[off + 12 : off + 16], frame[off + 16 : off + 20], off + total
    if et == 0x86DD and len(frame) >= off + 40:
        plen = struct.unpack(">H", frame[off + 4 : off + 6])[0]
        return et, off, 6, frame[off + 6], off + 40, frame[off + 8 : off + 24], frame[off + 24 : off + 40], off + 40 + plen
    return None


def write(target, content, written):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(content).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(content)
    written[target] = written.get(target, 0) + 1


def main():
    pcap_dir = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_PCAPS
    for target in ("parse_flow", "http_mask", "param_mask", "range_mask", "checksum", "discard"):
        d = os.path.join(OUT, target)
        if os.path.isdir(d):
            for f in os.listdir(d):
                os.remove(os.path.join(d, f))
    written = {}
    shapes = set()
    streams = {}  # (src, sport, dst, dport) -> {seq: payload}
    order = []
    payload_shapes = set()
    dests = set()
    for name in sorted(os.listdir(pcap_dir)):
        if not name.endswith((".pcap", ".cap", ".pcapng")):
            continue
        for frame in read_pcap(os.path.join(pcap_dir, name)):
            p = parse(frame)
            if p is None:
                continue
            et, l3, ver, proto, l4, src, dst, ip_end = p
            ip_end = min(ip_end, len(frame))
            flags = 0
            sport = dport = 0
            if l4 is not None and proto in (6, 17) and len(frame) >= l4 + 8:
                sport, dport = struct.unpack(">HH", frame[l4 : l4 + 4])
            if l4 is not None and proto == 6 and len(frame) >= l4 + 20:
                flags = frame[l4 + 13]
            opts = ver == 4 and (frame[l3] & 15) != 5
            shape = (l3, ver, proto, flags, opts, len(frame) // 512, name)
            if shape not in shapes:
                shapes.add(shape)
                write("parse_flow", b"\x00" + frame, written)
            if l4 is None or proto not in (6, 17):
                continue
            dests.add((ver, bytes(dst), dport, proto))
            if proto == 6 and len(frame) >= l4 + 20:
                doff = (frame[l4 + 12] >> 4) * 4
                seq = struct.unpack(">I", frame[l4 + 4 : l4 + 8])[0]
                payload = frame[l4 + doff : ip_end]
                seg = frame[l4:ip_end]
                hlen = doff
            else:
                payload = frame[l4 + 8 : ip_end]
                seg = frame[l4:ip_end]
                hlen = 8
                seq = None
            if payload:
                pshape = (proto, payload[:4], len(payload) // 256)
                if pshape not in payload_shapes and len(payload_shapes) < 60:
                    payload_shapes.add(pshape)
                    # range_mask: http off, mask fallback, 2 ranges, scan limit 65536.
                    head = bytes([0, 2]) + struct.pack("<8H", 2, 3, 10, 20, 0, 0, 0, 0) + struct.pack("<H", 0xFFFF)
                    write("range_mask", head + payload[:512], written)
                    # checksum: header length, fill '*', 8 replacements.
                    picks = bytes(x for i in range(8) for x in (i * 37 % 256, 1))
                    write("checksum", bytes([hlen // 2 % 31, ord("*"), 8]) + picks + seg[:600], written)
            if seq is not None and payload:
                key = (bytes(src), sport, bytes(dst), dport)
                if key not in streams:
                    streams[key] = {}
                    order.append(key)
                streams[key].setdefault(seq, payload)
    n_http = 0
    for key in order:
        segs = streams[key]
        data = b""
        for seq in sorted(segs):
            data += segs[seq]
        if not data.startswith(METHODS):
            continue
        data = data[:MAX_STREAM]
        n_http += 1
        if n_http <= 40:
            # http_mask raw mode: mask fallback, widest window, all names, 3 cuts.
            cuts = struct.pack("<3H", 7, len(data) // 2, len(data) - 3)
            write("http_mask", bytes([0]) + struct.pack("<H", 0xFFFF) + b"\xff\xff\x03" + cuts + data, written)
        # param_mask: query strings of request lines, urlencoded form bodies.
        for line in data.split(b"\r\n"):
            if line.startswith(METHODS) and b"?" in line:
                target = line.split(b" ")[1]
                q = target.split(b"?", 1)[1]
                write("param_mask", b"\x00\xff\x00" + q[:512], written)
        if b"x-www-form-urlencoded" in data.lower() and b"\r\n\r\n" in data:
            body = data.split(b"\r\n\r\n", 1)[1]
            write("param_mask", b"\x01\xff\x00" + body[:512], written)
    for ver, dst, dport, proto in sorted(dests)[:30]:
        cfg = struct.pack("<II", 1, 1)
        dest = dst.ljust(16, b"\x00") + struct.pack("<H", dport) + bytes([ver, proto])
        rule = b"\x61" + b"\x00" * 16 + b"\x18" + bytes([proto]) + b"\x00"
        write("discard", cfg + dest + rule, written)
    for target in sorted(written):
        print(f"{target}: {written[target]} seeds")


if __name__ == "__main__":
    main()
