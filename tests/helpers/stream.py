"""Long, rate-limited TCP streams whose bytes are checked end to end (tests/restart.rs).

recv PORT SECONDS: accepts connections for up to SECONDS; each one starts with a 16-byte
header (stream id, size), then carries SIZE bytes of the id's deterministic stream (64 KiB
blocks, block k = SHA-256("vireo:<id>:<k>") repeated). For every connection it prints one JSON
line {"id", "size", "got", "ok", "first_bad"} and answers "OK <got>\n" or "BAD <offset>\n"
before closing. Exits once no connection has been open for 2 s after the first one ended,
or at SECONDS.
send HOST PORT ID SIZE RATE: sends stream ID (SIZE bytes, at most RATE bytes a second), then
waits for the receiver's answer; prints it as JSON {"id", "sent", "answer", "secs"} and exits
0 only if the answer is OK with every byte.
Every socket gives up after 30 s of silence.
"""
import hashlib
import json
import socket
import struct
import sys
import threading
import time

BLOCK = 1 << 16


def block(sid, k):
    return hashlib.sha256(f"vireo:{sid}:{k}".encode()).digest() * (BLOCK // 32)


def check(c, results, lock):
    c.settimeout(30)
    head = b""
    while len(head) < 16:
        d = c.recv(16 - len(head))
        if not d:
            return
        head += d
    sid, size = struct.unpack("!QQ", head)
    got, bad, k, pending = 0, None, 0, b""
    try:
        while got < size:
            d = c.recv(1 << 16)
            if not d:
                break
            pending += d
            got += len(d)
            while len(pending) >= BLOCK or (got == size and pending):
                n = min(BLOCK, len(pending))
                want = block(sid, k)[:n]
                if bad is None and pending[:n] != want:
                    off = next(i for i in range(n) if pending[i] != want[i])
                    bad = k * BLOCK + off
                pending = pending[n:]
                k += 1
    except OSError:
        pass
    ok = got == size and bad is None
    try:
        c.sendall(f"{'OK' if ok else 'BAD'} {got if ok else bad}\n".encode())
    except OSError:
        pass
    c.close()
    with lock:
        results.append({"id": sid, "size": size, "got": got, "ok": ok, "first_bad": bad})
        print(json.dumps(results[-1]), flush=True)


def recv(port, seconds):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    s.settimeout(0.2)
    print("listening", flush=True)
    results, lock, threads = [], threading.Lock(), []
    end = time.time() + seconds
    idle_since = None
    while time.time() < end:
        try:
            c, _ = s.accept()
            t = threading.Thread(target=check, args=(c, results, lock), daemon=True)
            t.start()
            threads.append(t)
        except socket.timeout:
            pass
        threads = [t for t in threads if t.is_alive()]
        if results and not threads:
            idle_since = idle_since or time.time()
            if time.time() - idle_since > 2:
                break
        else:
            idle_since = None


def send(host, port, sid, size, rate):
    start = time.time()
    c = socket.create_connection((host, port), timeout=30)
    c.sendall(struct.pack("!QQ", sid, size))
    sent, k = 0, 0
    while sent < size:
        b = block(sid, k)[: min(BLOCK, size - sent)]
        c.sendall(b)
        sent += len(b)
        k += 1
        ahead = sent / rate - (time.time() - start)
        if ahead > 0:
            time.sleep(ahead)
    c.shutdown(socket.SHUT_WR)
    answer = b""
    while not answer.endswith(b"\n"):
        d = c.recv(64)
        if not d:
            break
        answer += d
    secs = time.time() - start
    answer = answer.decode().strip()
    print(json.dumps({"id": sid, "sent": sent, "answer": answer, "secs": round(secs, 2)}))
    sys.exit(0 if answer == f"OK {size}" else 1)


def main():
    if sys.argv[1] == "recv":
        recv(int(sys.argv[2]), float(sys.argv[3]))
    else:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))


if __name__ == "__main__":
    main()
