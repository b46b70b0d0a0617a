"""Starts a real `tako-vm server` on 127.0.0.1 (free port, temp data dir) for the SDK tests.

Environment: TAKO_VM_BIN (the binary; default target/debug/tako-vm), TAKO_TEST_ROOTFS
(base rootfs), TAKO_TEST_REQUIRE=1 (a missing prerequisite fails instead of skipping).
"""
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]


def _skip_or_fail(msg):
    if os.environ.get("TAKO_TEST_REQUIRE") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server():
    if os.geteuid() != 0:
        _skip_or_fail("SKIP: the SDK tests run sandboxes and need root (run scripts/test as root)")
    binary = Path(os.environ.get("TAKO_VM_BIN", ROOT / "target/debug/tako-vm"))
    if not binary.exists():
        _skip_or_fail(f"SKIP: {binary} not built (cargo build)")
    rootfs = os.environ.get("TAKO_TEST_ROOTFS", "/var/cache/tako-vm/fixtures/rootfs-py311")
    if not Path(rootfs, ".tako-rootfs-ready").exists():
        _skip_or_fail(f"SKIP: no rootfs fixture at {rootfs} (scripts/build-rootfs)")
    tmp = tempfile.TemporaryDirectory(prefix="tako-sdk-")
    data = Path(tmp.name, "data")
    port = _free_port()
    cfg = Path(tmp.name, "tako_vm.yaml")
    # The repository's config (three job types of the doc) plus test settings.
    base = (ROOT / "tako_vm.yaml").read_text()
    base = base.replace("server_port: 8000", f"server_port: {port}")
    cfg.write_text(
        base
        + f"\ndata_dir: {data}\nbase_rootfs: {rootfs}\ncgroup_parent: tako-vm-sdk-test\n"
        + "api_rate_limit_requests: 100000\n"
    )
    env = dict(os.environ, TAKO_VM_DATA_DIR=str(data))
    log = open(Path(tmp.name, "server.log"), "w")
    proc = subprocess.Popen([str(binary), "server", "--config", str(cfg)], stdout=log, stderr=log, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("server did not start: " + Path(tmp.name, "server.log").read_text())
    if proc.poll() is not None:
        pytest.fail("server exited: " + Path(tmp.name, "server.log").read_text())
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    tmp.cleanup()
