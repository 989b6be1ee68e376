#!/usr/bin/env python3
"""The door, measured: what a DNSBL flood costs, and what door plugins add.

Starts target/release/finaldot (build it first: `cargo build --release -p
finaldot`) in temporary directories, with a small DNS server of its own on
127.0.0.1 that lists every 127.0.0.0/8 address but 127.0.0.1 in zen.test
(RFC 5782 style), and the built-in plugins: dnsbl at connect, greylist and
ratelimit at MAIL and RCPT, local delivery into Maildirs.

(a) Spam-heavy mix: CONCURRENCY client threads for SECONDS, of which 90 %
    connect from listed addresses (127.0.0.2 and up: bound as the source
    address) and are refused at connect, the rest (127.0.0.1) send real
    messages; the same legitimate threads alone before, for the rate
    without the flood. Printed: legitimate messages in the Maildirs per
    second with and without the flood, refused connections per second,
    messages the spool accepted from listed clients (the goal: zero), and
    the daemon's CPU per refused connection (a flood-only run).
(b) The final dot's reply (client clock: the dot sent to the 250 read) at
    8 threads, with no door plugin and with dnsbl + greylist (passed
    triplets) + ratelimit (a high limit) at every stage: p50, p99 and their
    ratio (the door runs before DATA: the ratio should stay near 1).
(c) What a door plugin adds to one reply, one client, one command at a
    time: the greeting with dnsbl at connect (the DNS answer cached after
    the first connection) and the RCPT reply with greylist (a passed
    triplet: one key-value read) against the same daemon without them.

    python3 tests/scripts/door-bench.py [--seconds 10] [--concurrency 64]

Needs Python 3 with dnspython (python3-dnspython); everything on 127.0.0.1.
"""

import argparse
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import dns.message
import dns.rcode
import dns.rrset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "finaldot")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def percentile(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))] if v else float("nan")


def dns_server(stop):
    """Answers A queries for REVERSED.zen.test: 127.0.0.2 for every
    127.0.0.0/8 address but 127.0.0.1, NXDOMAIN otherwise."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)

    def serve():
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except socket.timeout:
                continue
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            name = q.question[0].name.to_text().rstrip(".")
            octets = name.split(".")[:4]
            listed = (
                name.endswith(".zen.test")
                and octets[3:] == ["127"]
                and octets[:3] != ["1", "0", "0"]
            )
            if listed:
                r.answer.append(dns.rrset.from_text(name + ".", 300, "IN", "A", "127.0.0.2"))
            else:
                # With the zone's SOA, so resolvers cache the NXDOMAIN
                # (RFC 2308) as they do a real blocklist's.
                r.set_rcode(dns.rcode.NXDOMAIN)
                r.authority.append(
                    dns.rrset.from_text(
                        "zen.test.", 300, "IN", "SOA",
                        "ns.zen.test. hostmaster.zen.test. 1 3600 600 86400 300",
                    )
                )
            sock.sendto(r.to_wire(), peer)

    threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname()[1]


DOOR = """
[[door]]
name = "dnsbl-door"
file = "dnsbl.wasm"
builtin = true
stages = ["connect"]
dns = true
[door.config]
zones = [{ zone = "zen.test" }]
skip_networks = ["192.0.2.0/24"]

[[door]]
name = "greylist"
file = "greylist.wasm"
builtin = true
stages = ["rcpt"]
kv = true
[door.config]
delay_secs = 1
skip_networks = ["192.0.2.0/24"]

[[door]]
name = "ratelimit"
file = "ratelimit.wasm"
builtin = true
stages = ["mail", "rcpt"]
kv = true
[door.config]
limits = [{ by = "client_ip", max = 100000000, window_secs = 3600 }, { by = "client_ip", on = "rcpt", max = 100000000 }]
"""


def start(dir, dns_port, door):
    port = free_port()
    metrics = free_port()
    mail = os.path.join(dir, "mail")
    config = f"""hostname = "mx.test"
data_dir = "{dir}/data"
[smtp]
listen = ["127.0.0.1:{port}"]
max_connections = 1000
limit_exceptions = ["127.0.0.0/8"]
[domains."example.test"]
recipients = ["alice"]
[dns]
nameservers = ["127.0.0.1:{dns_port}"]
[metrics]
listen = "127.0.0.1:{metrics}"
[pipeline]
plugin_dir = "{dir}/plugins"
[[plugins]]
name = "local-delivery"
file = "local_delivery.wasm"
builtin = true
dirs = [{{ name = "mail", path = "{mail}", writable = true }}]
[plugins.config]
domains = ["example.test"]
{DOOR if door else ""}
"""
    path = os.path.join(dir, "finaldot.toml")
    with open(path, "w") as f:
        f.write(config)
    log = open(os.path.join(dir, "log"), "w")
    p = subprocess.Popen([BIN, "run", "--config", path], stdout=log, stderr=log)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=1)
            s.recv(512)
            s.close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(1.5)  # let the plugins load
    return p, port, metrics, mail


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(port, name):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    total = 0.0
    for line in data.decode().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Conn:
    def __init__(self, port, source="127.0.0.1"):
        self.s = socket.socket()
        self.s.bind((source, 0))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.s.settimeout(30)
        self.s.connect(("127.0.0.1", port))
        self.f = self.s.makefile("rb")

    def reply(self):
        lines = []
        while True:
            line = self.f.readline()
            if not line:
                raise ConnectionError("closed")
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), b"".join(lines)

    def cmd(self, line):
        self.s.sendall(line + b"\r\n")
        return self.reply()

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def legit_message(port, dots=None):
    c = Conn(port)
    c.reply()
    c.cmd(b"EHLO client.test")
    c.cmd(b"MAIL FROM:<s@remote.test>")
    code, text = c.cmd(b"RCPT TO:<alice@example.test>")
    if code != 250:
        c.close()
        return False
    c.cmd(b"DATA")
    c.s.sendall(b"Subject: door bench\r\n\r\n" + (b"x" * 78 + b"\r\n") * 25)
    started = time.perf_counter()
    c.s.sendall(b".\r\n")
    code, _ = c.reply()
    if dots is not None and code == 250:
        dots.append(time.perf_counter() - started)
    c.cmd(b"QUIT")
    c.close()
    return code == 250


def listed_client(port, n):
    c = Conn(port, f"127.0.0.{2 + n % 250}")
    code, _ = c.reply()
    try:
        c.cmd(b"QUIT")
    except (ConnectionError, OSError):
        pass
    c.close()
    return code


def flood_process(port, threads, first, seconds, out):
    """Listed clients in a process of their own (the legitimate threads
    must not wait for this one's interpreter lock)."""
    counts = run_threads(
        seconds,
        [lambda n, i=i: listed_client(port, (first + i) * 1000 + n) == 554 for i in range(threads)],
    )
    out.put(sum(counts))


def flood(port, threads, seconds, processes=4):
    """`threads` listed clients over `processes` processes for `seconds`;
    returns (the processes, a queue that gets each one's refused count)."""
    out = multiprocessing.Queue()
    per = max(1, threads // processes)
    procs = [
        multiprocessing.Process(target=flood_process, args=(port, per, k * per, seconds, out))
        for k in range(processes)
    ]
    for p in procs:
        p.start()
    return procs, out


def run_threads(seconds, workers):
    stop = time.time() + seconds
    counts = [0] * len(workers)

    def loop(i, work):
        n = 0
        while time.time() < stop:
            if work(n):
                counts[i] += 1
            n += 1

    ts = [threading.Thread(target=loop, args=(i, w)) for i, w in enumerate(workers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return counts


def maildir_count(mail):
    d = os.path.join(mail, "alice", "Maildir", "new")
    return len(os.listdir(d)) if os.path.isdir(d) else 0


def wait_delivered(mail, n, limit=120):
    deadline = time.time() + limit
    while maildir_count(mail) < n and time.time() < deadline:
        time.sleep(0.05)


def spam_mix(args, dns_port):
    legit_threads = max(1, args.concurrency // 10)
    flood_threads = args.concurrency - legit_threads
    with tempfile.TemporaryDirectory() as dir:
        p, port, metrics, mail = start(dir, dns_port, door=True)
        try:
            # Greylist every legitimate client once, then pass it.
            legit_message(port)
            time.sleep(1.1)
            rates = {}
            for label, threads in [("without the flood", 0), ("with the flood", flood_threads)]:
                before = maildir_count(mail)
                started = time.time()
                procs, out = flood(port, threads, args.seconds) if threads else ([], None)
                counts = run_threads(args.seconds, [lambda n: legit_message(port)] * legit_threads)
                refused = sum(out.get() for _ in procs)
                for p_ in procs:
                    p_.join()
                sent = sum(counts)
                wait_delivered(mail, before + sent)
                took = time.time() - started
                rates[label] = (sent / took, refused / args.seconds, sent)
            accepted = metric(metrics, 'finaldot_smtp_messages_total{result="accepted"')
            # The first message was greylisted, never accepted.
            legit_total = sum(r[2] for r in rates.values())
            cpu0 = cpu_secs(p.pid)
            procs, out = flood(port, flood_threads, args.seconds)
            refused = [out.get() for _ in procs]
            for p_ in procs:
                p_.join()
            cpu = cpu_secs(p.pid) - cpu0
        finally:
            p.terminate()
            p.wait()
    print(f"(a) spam-heavy mix, {args.concurrency} threads ({flood_threads} from listed addresses), {args.seconds} s each")
    for label, (rate, refused_rate, _) in rates.items():
        print(f"    legitimate messages in the mailbox {label}: {rate:.0f}/s; listed connections refused: {refused_rate:.0f}/s")
    print(f"    messages the spool accepted: {accepted:.0f}, legitimate ones sent: {legit_total} (from listed clients: {accepted - legit_total:.0f})")
    print(f"    daemon CPU per refused connection (flood only, {sum(refused)} refused): {cpu / max(1, sum(refused)) * 1e6:.0f} µs")


def dot_latency(args, dns_port):
    out = {}
    for label, door in [("no door plugin", False), ("dnsbl + greylist + ratelimit", True)]:
        with tempfile.TemporaryDirectory() as dir:
            p, port, _, _ = start(dir, dns_port, door)
            try:
                legit_message(port)
                time.sleep(1.1)
                dots = []
                run_threads(args.seconds, [lambda n: legit_message(port, dots)] * 8)
            finally:
                p.terminate()
                p.wait()
        out[label] = (percentile(dots, 50), percentile(dots, 99), len(dots))
    print("(b) final dot to 250 at 8 threads")
    for label, (p50, p99, n) in out.items():
        print(f"    {label}: p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms ({n} messages)")
    (a50, a99, _), (b50, b99, _) = out.values()
    print(f"    ratio with/without: p50 {b50 / a50:.2f}, p99 {b99 / a99:.2f}")


def added_latency(args, dns_port):
    res = {}
    for label, door in [("without", False), ("with", True)]:
        with tempfile.TemporaryDirectory() as dir:
            p, port, _, _ = start(dir, dns_port, door)
            try:
                legit_message(port)
                time.sleep(1.1)
                greet, rcpt = [], []
                for _ in range(args.samples):
                    t = time.perf_counter()
                    c = Conn(port)
                    c.reply()
                    greet.append(time.perf_counter() - t)
                    c.cmd(b"EHLO client.test")
                    c.cmd(b"MAIL FROM:<s@remote.test>")
                    t = time.perf_counter()
                    code, _ = c.cmd(b"RCPT TO:<alice@example.test>")
                    rcpt.append(time.perf_counter() - t)
                    assert code == 250, code
                    c.cmd(b"QUIT")
                    c.close()
            finally:
                p.terminate()
                p.wait()
        res[label] = (percentile(greet, 50), percentile(rcpt, 50), percentile(rcpt, 99))
    print(f"(c) one client, one command at a time, {args.samples} samples (p50)")
    (g0, r0, r0_99), (g1, r1, r1_99) = res["without"], res["with"]
    print(f"    connect to greeting: {g0 * 1e3:.3f} ms without, {g1 * 1e3:.3f} ms with dnsbl (cached): +{(g1 - g0) * 1e6:.0f} µs")
    print(f"    RCPT reply: {r0 * 1e3:.3f} ms without, {r1 * 1e3:.3f} ms with greylist (passed) + ratelimit: +{(r1 - r0) * 1e6:.0f} µs (p99 {r0_99 * 1e3:.3f} / {r1_99 * 1e3:.3f} ms)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--samples", type=int, default=500)
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: cargo build --release -p finaldot")
    stop = threading.Event()
    dns_port = dns_server(stop)
    spam_mix(args, dns_port)
    dot_latency(args, dns_port)
    added_latency(args, dns_port)
    stop.set()


if __name__ == "__main__":
    main()
