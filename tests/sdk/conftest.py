"""Starts a real `tako-vm server` on 127.0.0.1 (free port, temp data dir) for the SDK tests.

Environment: TAKO_VM_BIN (the binary; default target/debug/tako-vm), TAKO_TEST_ROOTFS
(base rootfs), TAKO_TEST_REQUIRE=1 (a missing prerequisite fails instead of skipping),
TAKO_VM_FIXTURES (the image fixture served by scripts/registry as the docker.io mirror).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.dont_write_bytecode = True
from ports import free_port as _free_port  # noqa: E402


def _skip_or_fail(msg):
    if os.environ.get("TAKO_TEST_REQUIRE") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def registry():
    """A real registry process (scripts/registry) serving the image fixture, or None."""
    fixture = Path(os.environ.get("TAKO_VM_FIXTURES", "/var/cache/tako-vm/fixtures"), "image-py311")
    if not (fixture / ".ready").exists() or not shutil.which("docker-registry"):
        yield None
        return
    proc = subprocess.Popen([str(ROOT / "scripts/registry"), "--fixture", str(fixture)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        proc.kill()
        pytest.fail(f"scripts/registry did not start: {line!r}")
    yield line.split()[1].removeprefix("http://")
    proc.terminate()  # our own child, by PID; it stops docker-registry
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def server(registry):
    if os.geteuid() != 0:
        _skip_or_fail("SKIP: the SDK tests run sandboxes and need root (run scripts/test as root)")
    binary = Path(os.environ.get("TAKO_VM_BIN", ROOT / "target/debug/tako-vm"))
    if not binary.exists():
        _skip_or_fail(f"SKIP: {binary} not built (cargo build)")
    rootfs = os.environ.get("TAKO_TEST_ROOTFS", "/var/cache/tako-vm/fixtures/rootfs-py311")
    if not Path(rootfs, ".tako-rootfs-ready").exists():
        _skip_or_fail(f"SKIP: no rootfs fixture at {rootfs} (scripts/build-rootfs)")
    tmp = tempfile.TemporaryDirectory(prefix="tako-sdk-")
    # The image store inside must be reachable by the builder sandbox's (unprivileged) root.
    os.chmod(tmp.name, 0o755)
    data = Path(tmp.name, "data")
    port = _free_port()
    cfg = Path(tmp.name, "tako_vm.yaml")
    # The repository's config (three job types of the doc) plus test settings.
    base = (ROOT / "tako_vm.yaml").read_text()
    base = base.replace("server_port: 8000", f"server_port: {port}")
    # Job-type snapshots go to a fresh image store; docker.io pulls to the local registry
    # (never Docker Hub).
    cfg.write_text(
        base
        + f"\ndata_dir: {data}\nbase_rootfs: {rootfs}\ncgroup_parent: tako-vm-sdk-test\n"
        + "api_rate_limit_requests: 100000\n"
        + f"image_store: {Path(tmp.name, 'images')}\nregistry_mirror: {registry or '127.0.0.1:9'}\n"
    )
    env = dict(os.environ, TAKO_VM_DATA_DIR=str(data))
    for var in ("TAKO_VM_REGISTRY_MIRROR", "TAKO_VM_IMAGE_STORE"):
        env.pop(var, None)
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
