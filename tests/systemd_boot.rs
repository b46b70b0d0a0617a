//! The unit of `systemd/` under a real systemd: `scripts/systemd-check` boots Debian's systemd
//! as PID 1 in a systemd-nspawn container, installs the binary under test with
//! `scripts/install` and checks the service (active, unprivileged, `POST /execute`, clean
//! stop, restart after kill -9). It takes minutes and needs root, so it runs only when
//! `TAKO_TEST_SYSTEMD=1`; otherwise it says so and passes.

mod common;

#[test]
fn the_unit_runs_under_a_real_systemd() {
    let Some(stdout) = common::check_script("TAKO_TEST_SYSTEMD", "systemd-check") else {
        return;
    };
    assert!(stdout.contains("PASS POST /execute"), "{stdout}");
}
