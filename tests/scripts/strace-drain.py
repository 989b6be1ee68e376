#!/usr/bin/env python3
"""System calls per delivered message, counted with `strace -f -c` over a
drain (issue 31's "before" and "after" table).

Queues N messages (default 2000, 4 KiB, to alice@localhost) into a daemon
with no chain, stops it, then starts target/release/finaldot with the
embedded default chain (dedup, list-expand, filter, local-delivery) under
`strace -f -c` in the same directory and stops it once every message is in
the Maildir. Prints the counts of the file and sync calls per delivered
message. Needs strace and Python 3; everything on 127.0.0.1.

    cargo build --release -p finaldot
    python3 tests/scripts/strace-drain.py [N]
"""
import os, socket, subprocess, sys, tempfile, threading, time, smtplib, signal
BIN = "/work/main/target/release/finaldot"
N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
d = tempfile.mkdtemp(prefix="drain-")
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
port = free()
cfg = os.path.join(d, "q.toml")
open(cfg, "w").write(f'hostname = "mx.test"\ndata_dir = "{d}/var"\n[smtp]\nlisten = ["127.0.0.1:{port}"]\nlimit_exceptions = ["127.0.0.0/8"]\nmax_connections = 1000\nin_flow_delay_ms = 0\n[domains.localhost]\n')
p = subprocess.Popen([BIN, "run", "--config", cfg], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", port), 1).close(); break
    except OSError: time.sleep(0.05)
body = "Subject: drain\r\nMessage-ID: <{}@bench>\r\n\r\n" + ("x" * 76 + "\r\n") * 50
def worker(k):
    s = smtplib.SMTP("127.0.0.1", port)
    for i in range(k, N, 8):
        s.sendmail("s@remote.test", ["alice@localhost"], body.format(i))
    s.quit()
ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
p.send_signal(signal.SIGTERM); p.wait()
out = os.path.join(d, "strace.txt")
port2 = free()
p = subprocess.Popen(["strace", "-f", "-c", "-o", out, BIN, "run", "--listen", f"127.0.0.1:{port2}"], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
maildir = os.path.join(d, "var", "mail", "alice", "Maildir", "new")
t0 = time.time()
while time.time() - t0 < 600:
    n = len(os.listdir(maildir)) if os.path.isdir(maildir) else 0
    if n >= N: break
    time.sleep(0.5)
took = time.time() - t0
time.sleep(2)
p.send_signal(signal.SIGTERM); p.wait()
print(f"delivered {n} in {took:.1f} s under strace")
lines = open(out).read().splitlines()
want = {"openat","rename","renameat","renameat2","unlink","unlinkat","fsync","fdatasync","sync_file_range","mkdir","mkdirat","linkat","link","creat","ftruncate","write","pwrite64","read","pread64","futex","epoll_wait","statx","newfstatat","close"}
print("syscall            calls  per message")
for l in lines:
    f = l.split()
    if len(f) >= 5 and f[-1] in want:
        calls = int(f[3]) if f[3].isdigit() else int(f[4])
        print(f"{f[-1]:<16} {calls:>8} {calls / max(1,n):>8.2f}")
print("total:", [l for l in lines if "total" in l])
print("dir:", d)
