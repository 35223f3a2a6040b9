"""Delay, jitter and loss for a lab link when the kernel has no netem qdisc.

Some kernels (this CI machine's among them) are built without sch_netem. The
lab then sends what leaves a host's eth0 through NFQUEUE (an iptables rule in
that host) to this program, which runs inside the host and gives each packet
its verdict late (delay, uniform jitter) or never (loss). Rates stay in the
kernel (tbf). Only the netem words below are understood; anything else is
refused, so a test never believes it got a fault it did not get.

    python3 netem.py --queue 0 delay 100ms 20ms loss 1%
"""

from __future__ import annotations

import argparse
import heapq
import random
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_GSO = 4
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NF_DROP, NF_ACCEPT = 0, 1
QUEUE_MAXLEN = 10000


@dataclass(frozen=True)
class Impairment:
    """What netem would do: seconds of delay and jitter, loss as a fraction, rate in bit/s."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    rate: Optional[str] = None  # tc's own spelling ("1mbit"), applied with tbf

    @property
    def needs_queue(self) -> bool:
        return self.delay > 0 or self.jitter > 0 or self.loss > 0


def _seconds(text: str) -> float:
    for suffix, scale in (("usec", 1e-6), ("us", 1e-6), ("msec", 1e-3), ("ms", 1e-3),
                          ("sec", 1.0), ("s", 1.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text) * 1e-6  # tc's unit-less times are microseconds


def parse(words: List[str]) -> Impairment:
    """netem's words: delay TIME [JITTER], loss [random] PERCENT, rate RATE. ValueError otherwise."""
    delay = jitter = loss = 0.0
    rate = None
    i = 0
    try:
        while i < len(words):
            word = words[i]
            if word == "delay":
                delay = _seconds(words[i + 1])
                i += 2
                if i < len(words) and words[i][0].isdigit():
                    jitter = _seconds(words[i])
                    i += 1
            elif word == "loss":
                i += 1
                if words[i] == "random":
                    i += 1
                loss = float(words[i].rstrip("%")) / 100
                i += 1
            elif word == "rate":
                rate = words[i + 1]
                i += 2
            else:
                raise ValueError(f"netem option {word!r} is not emulated (delay, loss, rate are)")
    except IndexError:
        raise ValueError(f"incomplete netem spec: {' '.join(words)!r}") from None
    if not 0 <= loss <= 1 or delay < 0 or jitter < 0:
        raise ValueError(f"netem spec out of range: {' '.join(words)!r}")
    return Impairment(delay, jitter, loss, rate)


def _attr(kind: int, payload: bytes) -> bytes:
    header = struct.pack("=HH", 4 + len(payload), kind)
    return header + payload + b"\0" * (-len(payload) % 4)


def _message(msg_type: int, queue: int, attrs: bytes, seq: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg_type
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST, seq, 0) + body


def _packet_ids(data: bytes) -> List[int]:
    """The packet ids of every queued-packet message in one netlink read."""
    ids = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if kind == NLMSG_ERROR:
            error = struct.unpack_from("=i", data, offset + 16)[0]
            if error:
                raise OSError(-error, "nfqueue: the kernel refused a request")
        elif kind & 0xFF == NFQNL_MSG_PACKET:
            pos = offset + 20  # nlmsghdr + nfgenmsg
            while pos + 4 <= offset + length:
                attr_len, attr_type = struct.unpack_from("=HH", data, pos)
                if attr_len < 4:
                    break
                if attr_type & 0x7FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, pos + 4)[0])
                pos += attr_len + (-attr_len % 4)
        offset += length + (-length % 4)
    return ids


def serve(queue: int, impairment: Impairment) -> None:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: no lost verdict requests
    sock.bind((0, 0))
    sock.send(_message(NFQNL_MSG_CONFIG, queue,
                       _attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET))))
    sock.send(_message(NFQNL_MSG_CONFIG, queue,
                       _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                       + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))
                       + _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO))
                       + _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO))))
    print("ready", flush=True)
    pending: List[Tuple[float, int, int]] = []  # (release time, packet id, verdict)
    while True:
        timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else None
        if select.select([sock], [], [], timeout)[0]:
            now = time.monotonic()
            for packet_id in _packet_ids(sock.recv(1 << 16)):
                if random.random() < impairment.loss:
                    verdict, release = NF_DROP, now
                else:
                    verdict = NF_ACCEPT
                    release = max(now, now + impairment.delay
                                  + random.uniform(-impairment.jitter, impairment.jitter))
                heapq.heappush(pending, (release, packet_id, verdict))
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, packet_id, verdict = heapq.heappop(pending)
            sock.send(_message(NFQNL_MSG_VERDICT, queue,
                               _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="netem's delay, jitter and loss through NFQUEUE")
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("spec", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        impairment = parse(args.spec)
    except ValueError as exc:
        print(f"netem: {exc}", file=sys.stderr)
        return 2
    try:
        serve(args.queue, impairment)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
