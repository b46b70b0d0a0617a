# Checks of the installed tako-vm.service shared by scripts/systemd-check (a systemd-nspawn
# container, commands run through `inside`) and scripts/vm-guest-check (inside a virtual
# machine, commands run directly). Sourced; the caller sets:
#   IN    the command prefix that runs a command in the machine ("inside", or empty)
#   PORT  the service's port
# check NAME COMMAND... prints PASS/FAIL NAME and the command's output indented; FAILED=1
# after a failure.
FAILED=0
check() {
  local name="$1" out; shift
  if out="$("$@" 2>&1)"; then
    echo "PASS $name"
  else
    echo "FAIL $name"
    FAILED=1
  fi
  [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/     /'
  return 0
}

prop() { $IN systemctl show -P "$1" tako-vm.service; }

wait_active() { # wait_active [OLD_PID]: active with a main pid other than OLD_PID
  local pid
  for _ in $(seq 1 150); do
    pid="$(prop MainPID)"
    if [ "$(prop ActiveState)" = active ] && [ "$pid" != 0 ] && [ "$pid" != "${1:-}" ] &&
      $IN curl -sf -o /dev/null "http://127.0.0.1:$PORT/health"; then
      return 0
    fi
    sleep 0.2
  done
  $IN systemctl --no-pager status tako-vm.service
  $IN journalctl --no-pager -u tako-vm.service -n 40
  return 1
}

runs_unprivileged() {
  local pid uid
  pid="$(prop MainPID)"
  uid="$($IN awk '/^Uid:/ { print $3 }' "/proc/$pid/status")"
  echo "main pid $pid, effective uid $uid ($($IN id -nu "$uid")), cgroup $(prop ControlGroup)"
  [ "$uid" != 0 ] && [ "$($IN id -nu "$uid")" = tako-vm ] && [ "$(prop User)" = tako-vm ]
}
