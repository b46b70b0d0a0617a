"""What tako-vm runs could leave behind on the host, for the leak checks of scripts/bench and
scripts/bench-api: compare `host_state()` before and after many runs (`leaks(before, after)`).
"""
import os
import tempfile
from pathlib import Path


def host_state(cgroup_parent="tako-vm", server_pid=None):
    """Run cgroups (directories under `cgroup_parent` in every hierarchy, the `supervisor`
    leaf aside), host mounts, processes in other pid namespaces (sandboxes), tako* entries of
    the temporary directories and /run/tako-vm, network interfaces, and for a server its open
    file descriptors."""
    root = Path("/sys/fs/cgroup")
    bases = [root / cgroup_parent] + [d / cgroup_parent for d in root.iterdir()
                                      if d.is_dir() and not d.is_symlink()]
    cgroups = sum(1 for b in bases if b.is_dir()
                  for e in b.iterdir() if e.is_dir() and e.name != "supervisor")
    mine = os.readlink("/proc/self/ns/pid")
    others = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            others += os.readlink(f"/proc/{pid}/ns/pid") != mine
        except OSError:
            pass
    temp = sum(1 for d in {tempfile.gettempdir(), "/var/tmp", "/run/tako-vm"} if os.path.isdir(d)
               for e in os.listdir(d) if e.startswith("tako") and not e.startswith("tako-bench"))
    state = {
        "run cgroups": cgroups,
        "host mounts": len(Path("/proc/self/mountinfo").read_text().splitlines()),
        "processes in other pid namespaces": others,
        "tako* temp entries": temp,
        "network interfaces": len(os.listdir("/sys/class/net")),
    }
    if server_pid is not None:
        state["server open fds"] = len(os.listdir(f"/proc/{server_pid}/fd"))
    return state


def settled(read, timeout=10.0):
    """`read()` once two readings 0.2 s apart agree (a server refilling its pool of
    pre-started helpers, say), or the last reading after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = read()
        if now == last:
            return now
        last = now
    return last


def report(before, after):
    """Prints both states; returns what grew (empty: no leak)."""
    print("host state (before -> after):")
    for k in before:
        print(f"  {k:<36} {before[k]:6} -> {after[k]}")
    grew = {k: (before[k], after[k]) for k in before if after[k] > before[k]}
    print("leaks: none" if not grew else f"LEAKS: {grew}")
    return grew
