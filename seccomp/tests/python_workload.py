# Workload run by tests/filter.rs under the tako-vm seccomp policy: it must exit 0.
# It exercises what untrusted Python code commonly needs: subprocess (posix_spawn/vfork,
# pipes), threads, multiprocessing (fork start method), sockets, tempfiles, ssl, hashlib,
# sqlite3 and asyncio.
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading


def square(x):
    return x * x


def check_subprocess():
    out = subprocess.run(
        [sys.executable, "-c", "print('child ok')"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "child ok", out
    out = subprocess.check_output(["/bin/sh", "-c", "echo $((6 * 7))"], text=True)
    assert out.strip() == "42", out


def check_threads():
    results = []
    lock = threading.Lock()

    def work(n):
        with lock:
            results.append(n * 2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [i * 2 for i in range(8)], results


def check_multiprocessing():
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
    q = ctx.Queue()
    p = ctx.Process(target=q.put, args=("from child",))
    p.start()
    assert q.get(timeout=30) == "from child"
    p.join()
    assert p.exitcode == 0, p.exitcode


def check_sockets():
    a, b = socket.socketpair()
    a.sendall(b"ping")
    assert b.recv(4) == b"ping"
    a.close()
    b.close()


def check_files():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.json")
        with open(path, "w") as f:
            json.dump({"k": [1, 2, 3]}, f)
        os.rename(path, path + ".2")
        with open(path + ".2") as f:
            assert json.load(f) == {"k": [1, 2, 3]}
        os.symlink(path + ".2", path + ".lnk")
        assert os.readlink(path + ".lnk") == path + ".2"
        os.chmod(path + ".2", 0o600)
        os.mkdir(os.path.join(d, "sub"))
        assert sorted(os.listdir(d)) == ["f.json.2", "f.json.lnk", "sub"]
        db = sqlite3.connect(os.path.join(d, "t.db"))
        db.execute("create table t (x integer)")
        db.executemany("insert into t values (?)", [(i,) for i in range(100)])
        db.commit()
        assert db.execute("select sum(x) from t").fetchone()[0] == 4950
        db.close()


async def echo_main():
    async def handle(reader, writer):
        writer.write(await reader.read(5))
        await writer.drain()
        writer.close()

    rsock, wsock = socket.socketpair()
    server_reader, server_writer = await asyncio.open_connection(sock=rsock)
    task = asyncio.create_task(handle(server_reader, server_writer))
    reader, writer = await asyncio.open_connection(sock=wsock)
    writer.write(b"hello")
    await writer.drain()
    assert await reader.read(5) == b"hello"
    await task
    writer.close()
    await asyncio.sleep(0.01)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "print(1)", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert out.strip() == b"1" and proc.returncode == 0
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, square, 7) == 49


def check_seccomp(argv):
    # With --expect-seccomp-filters=N, check that the kernel filters this process.
    for arg in argv[1:]:
        if arg.startswith("--expect-seccomp-filters="):
            want = arg.split("=", 1)[1]
            with open("/proc/self/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            assert status["Seccomp"].strip() == "2", status["Seccomp"]
            assert status["Seccomp_filters"].strip() == want, status["Seccomp_filters"]


def main():
    check_seccomp(sys.argv)
    assert hashlib.sha256(b"abc").hexdigest().startswith("ba7816bf")
    assert 0 <= random.random() < 1
    assert len(os.urandom(16)) == 16
    ssl.create_default_context()
    check_subprocess()
    check_threads()
    check_multiprocessing()
    check_sockets()
    check_files()
    asyncio.run(echo_main())
    print("python workload ok")


if __name__ == "__main__":
    main()
