"""A TCP transfer whose bytes are checked end to end.

server HOST PORT SIZE: accepts one connection, reads until EOF, exits 0 only if exactly SIZE
bytes arrived and their SHA-256 matches the sender's deterministic stream.
client HOST PORT SIZE: connects and sends SIZE bytes of that stream.
Both give up after 60 s of silence.
"""
import hashlib
import socket
import sys


def stream(n):
    block = hashlib.sha256(b"vireo").digest() * 2048
    sent = 0
    while sent < n:
        b = block[: min(len(block), n - sent)]
        sent += len(b)
        yield b


def expected(n):
    h = hashlib.sha256()
    for b in stream(n):
        h.update(b)
    return h.hexdigest()


def main():
    mode, host, port, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if mode == "server":
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(1)
        s.settimeout(60)
        print("listening", flush=True)
        c, _ = s.accept()
        c.settimeout(60)
        h, got = hashlib.sha256(), 0
        while True:
            d = c.recv(1 << 16)
            if not d:
                break
            h.update(d)
            got += len(d)
        ok = got == size and h.hexdigest() == expected(size)
        print(f"received {got} bytes, sha256 {'matches' if ok else 'MISMATCH'}")
        sys.exit(0 if ok else 1)
    c = socket.create_connection((host, port), timeout=60)
    for b in stream(size):
        c.sendall(b)
    c.close()


if __name__ == "__main__":
    main()
