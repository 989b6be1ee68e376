#!/usr/bin/env python3
"""Port-25 replies during an AUTH flood on the submission port, measured.

Starts target/release/finaldot (build it first: `cargo build --release -p
finaldot`) in a temporary directory with a submission listener, then sends
port-25 messages one after another and times each (connect to 250 after the
final dot, what a sending MTA waits for): first alone, then while
FLOOD clients each try one wrong password at the same moment (five such
bursts, the probe of issue 27), then while FLOOD threads each open
connections that STARTTLS and try a wrong password, again and again, as
fast as they can (on two cores that saturates the machine with TLS
handshakes, the load generator's included). Prints the latency percentiles of both runs, the AUTH
replies the flood got, and the daemon's resident memory (VmRSS before, VmHWM
peak).

    python3 tests/scripts/auth-flood.py [--messages 300] [--flood 120]

Needs openssl (the certificate) and Python 3; everything on 127.0.0.1.
"""

import argparse
import base64
import os
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "finaldot")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def memory(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def percentile(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))]


def send_one(port):
    started = time.perf_counter()
    s = smtplib.SMTP("127.0.0.1", port, timeout=60)
    s.sendmail("s@example.org", ["alice@example.test"], b"Subject: t\r\n\r\nhello\r\n")
    took = time.perf_counter() - started
    s.quit()
    return took


def flood(port, stop, replies, lock, once=False):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    token = base64.b64encode(b"\0alice\0wrong").decode()
    while not stop.is_set():
        if once:
            stop.set()
        try:
            s = smtplib.SMTP("127.0.0.1", port, timeout=60)
            s.ehlo("flood.test")
            s.starttls(context=ctx)
            s.ehlo("flood.test")
            code, _ = s.docmd("AUTH", "PLAIN " + token)
            s.close()
        except (OSError, smtplib.SMTPException) as e:
            code = type(e).__name__
        with lock:
            replies[code] = replies.get(code, 0) + 1


def run(port, n):
    return [send_one(port) for _ in range(n)]


def bursts(smtp, sub, clients, rounds, replies, lock):
    """`rounds` times: `clients` threads each try one wrong AUTH at the same
    moment (the issue's probe); port-25 messages are timed until every
    check of the burst has been answered."""
    lat = []
    for _ in range(rounds):
        threads = [threading.Thread(target=flood, args=(sub, threading.Event(), replies, lock, True))
                   for _ in range(clients)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            lat.append(send_one(smtp))
        for t in threads:
            t.join()
    return lat


def report(name, lat):
    ms = [x * 1000 for x in lat]
    print(
        f"{name:>14}: {len(ms)} messages, p50 {percentile(ms, 50):.2f} ms, "
        f"p90 {percentile(ms, 90):.2f} ms, p99 {percentile(ms, 99):.2f} ms, max {max(ms):.2f} ms"
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--flood", type=int, default=120)
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: cargo build --release -p finaldot")
    d = tempfile.mkdtemp(prefix="finaldot-auth-flood-")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem"],
        check=True, capture_output=True)
    smtp, sub = free_port(), free_port()
    cfg = f"""hostname = "mx.test"
data_dir = "{d}/data"
[smtp]
listen = ["127.0.0.1:{smtp}"]
tls = {{ cert = "{d}/cert.pem", key = "{d}/key.pem" }}
[domains."example.test"]
[submission]
listen = ["127.0.0.1:{sub}"]
max_auth_failures_per_ip = 1000000
max_connections = 1000
[[plugins]]
name = "local-delivery"
file = "local_delivery.wasm"
builtin = true
dirs = [{{ name = "mail", path = "{d}/mail", writable = true }}]
[plugins.config]
domains = ["example.test"]
"""
    with open(f"{d}/finaldot.toml", "w") as f:
        f.write(cfg)
    subprocess.run([BIN, "user", "add", "alice", "--config", f"{d}/finaldot.toml"],
                   input=b"the right one\n", check=True, capture_output=True)
    log = open(f"{d}/daemon.log", "w")
    daemon = subprocess.Popen([BIN, "run", "--config", f"{d}/finaldot.toml"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", smtp), timeout=1).close()
                socket.create_connection(("127.0.0.1", sub), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        run(smtp, 20)  # warm up
        rss0, _ = memory(daemon.pid)
        quiet = run(smtp, args.messages)
        lock, burst_replies = threading.Lock(), {}
        burst = bursts(smtp, sub, args.flood, 5, burst_replies, lock)
        stop, replies = threading.Event(), {}
        threads = [threading.Thread(target=flood, args=(sub, stop, replies, lock))
                   for _ in range(args.flood)]
        for t in threads:
            t.start()
        time.sleep(2)
        loud = run(smtp, args.messages)
        stop.set()
        for t in threads:
            t.join()
        rss1, peak = memory(daemon.pid)
        print(f"finaldot {BIN}, {os.cpu_count()} cores; {args.flood} flooding clients")
        report("alone", quiet)
        report("during bursts", burst)
        print(f"AUTH replies to 5 bursts of {args.flood} at once: {burst_replies}")
        report("during flood", loud)
        print(f"AUTH replies during the sustained flood (each client again and again): {replies}")
        print(f"daemon RSS: {rss0 // 1024} MiB before, {peak // 1024} MiB peak, {rss1 // 1024} MiB after")
    finally:
        daemon.terminate()
        daemon.wait(30)
        log.close()


if __name__ == "__main__":
    main()
