//! What ops install: the systemd unit and the Debian package.
//!
//! - The unit is clean for `systemd-analyze verify` and scores 2.0 or lower ("OK") in
//!   `systemd-analyze security --offline=true`.
//! - The package (`cargo deb`, metadata in Cargo.toml, maintainer scripts in
//!   systemd/debian/) holds the binary, the unit, the configuration as a conffile and the docs;
//!   its maintainer scripts create the user in group dialout and the state directory, start
//!   nothing on a first install, restart a running daemon on upgrade, and delete the store only
//!   on purge. The shipped binary runs and accepts the shipped configuration.
//!
//! Nothing is compiled here: the package is made with `cargo deb --no-build` around the binary
//! the tests already built. Without `cargo deb` or `systemd-analyze` on the machine a test says
//! so and passes (CI installs both: .ci/run).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn unit_file() -> PathBuf {
    repo().join("systemd/amr-gateway.service")
}

/// Whether `program --version` runs; prints a note when it does not.
fn available(program: &str, args: &[&str], what: &str) -> bool {
    let ok = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("note: `{program}` is not available here; skipping {what} (CI installs it)");
    }
    ok
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_unit_scores_ok_in_systemd_analyze_security() {
    if !available(
        "systemd-analyze",
        &["--version"],
        "the unit's security score",
    ) {
        return;
    }
    let (_, out) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit_file()));
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{out}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in `{line}`"));
    eprintln!("{line}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{out}");
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if !available("systemd-analyze", &["--version"], "verifying the unit") {
        return;
    }
    // verify checks that the commands exist: point them at the binary the tests built, in a
    // copy of the unit with its own name.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(unit_file())
        .unwrap()
        .replace("/usr/bin/amr-gateway", env!("CARGO_BIN_EXE_amr-gateway"));
    let unit = dir.path().join("amr-gateway.service");
    std::fs::write(&unit, text).unwrap();
    let (ok, out) = run(Command::new("systemd-analyze")
        .args(["verify", "--no-pager"])
        .arg(&unit)
        .env("SYSTEMD_LOG_LEVEL", "notice"));
    let complaints: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("amr-gateway.service"))
        .collect();
    assert!(
        ok && complaints.is_empty(),
        "systemd-analyze verify:\n{out}"
    );
}

/// The package made around the already-built binary, in a directory under the target dir.
fn build_package(work: &Path) -> PathBuf {
    // cargo deb packages `target/release/amr-gateway` of the target dir it is given: lay out
    // one with the test binary (a hard link where possible; it is large).
    let release = work.join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    let binary = release.join("amr-gateway");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_amr-gateway"), &binary).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_amr-gateway"), &binary).unwrap();
    }
    let out = work.join("deb");
    let (ok, log) = run(Command::new("cargo")
        .args(["deb", "--no-build", "--no-strip", "--fast", "--output"])
        .arg(&out)
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", work.join("target")));
    assert!(ok, "cargo deb failed:\n{log}");
    std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .unwrap_or_else(|| panic!("no .deb in {out:?}:\n{log}"))
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let (ok, out) = run(Command::new("dpkg-deb").args(args).arg(deb));
    assert!(ok, "dpkg-deb {args:?}:\n{out}");
    out
}

#[test]
fn the_debian_package_installs_what_ops_need_and_its_scripts_keep_the_box_in_order() {
    if !available("cargo", &["deb", "--version"], "the Debian package test")
        || !available("dpkg-deb", &["--version"], "the Debian package test")
    {
        return;
    }
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let deb = build_package(work.path());

    // Contents.
    let contents = dpkg_deb(&["-c"], &deb);
    for path in [
        "./usr/bin/amr-gateway",
        "./usr/lib/systemd/system/amr-gateway.service",
        "./etc/amr-gateway/gateway.toml",
        "./usr/share/doc/amr-gateway/operations.md",
        "./usr/share/doc/amr-gateway/README.md",
        "./usr/share/doc/amr-gateway/copyright",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} not in the package:\n{contents}"
        );
    }
    assert!(
        contents
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("./usr/bin/amr-gateway")),
        "the binary is executable:\n{contents}"
    );

    // Control: the conffile, the dependencies.
    let info = dpkg_deb(&["-I"], &deb);
    assert!(info.contains("Package: amr-gateway"), "{info}");
    assert!(
        info.contains("Depends:") && info.contains("adduser"),
        "{info}"
    );
    let control = work.path().join("control");
    let (ok, out) = run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert!(ok, "{out}");
    let read = |name: &str| std::fs::read_to_string(control.join(name)).unwrap_or_default();
    assert_eq!(read("conffiles").trim(), "/etc/amr-gateway/gateway.toml");

    // Maintainer scripts: valid shell; the user in dialout and the state directory on
    // configure; nothing enabled or started on a first install, a running daemon restarted on
    // upgrade; the store deleted on purge only.
    for script in ["postinst", "postrm", "prerm"] {
        let (ok, out) = run(Command::new("sh").arg("-n").arg(control.join(script)));
        assert!(ok, "{script} is not valid shell: {out}");
    }
    let postinst = read("postinst");
    assert!(
        postinst.contains("adduser --system --group")
            && postinst.contains("adduser amr-gateway dialout")
            && postinst
                .contains("install -d -o amr-gateway -g amr-gateway -m 0750 /var/lib/amr-gateway"),
        "postinst:\n{postinst}"
    );
    assert!(
        !postinst.contains("deb-systemd-invoke start")
            && !postinst.contains("deb-systemd-invoke restart"),
        "a first install must not start the daemon before its configuration is edited:\n{postinst}"
    );
    assert!(
        postinst.contains("if [ -n \"$2\" ]; then")
            && postinst.contains("deb-systemd-invoke try-restart amr-gateway.service"),
        "an upgrade restarts a running daemon:\n{postinst}"
    );
    let postrm = read("postrm");
    let purge_block = postrm
        .split("if [ \"$1\" = \"purge\" ]; then")
        .nth(1)
        .and_then(|rest| rest.split("fi").next())
        .unwrap_or_else(|| panic!("no purge branch in postrm:\n{postrm}"));
    assert!(
        purge_block.contains("rm -rf /var/lib/amr-gateway"),
        "purge deletes the store:\n{postrm}"
    );
    assert_eq!(
        postrm.matches("/var/lib/amr-gateway").count(),
        1,
        "only purge touches the store:\n{postrm}"
    );

    // The shipped binary runs, and accepts the shipped configuration.
    let root = work.path().join("root");
    let (ok, out) = run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    assert!(ok, "{out}");
    let binary = root.join("usr/bin/amr-gateway");
    let (ok, out) = run(Command::new(&binary).arg("--version"));
    assert!(
        ok && out.starts_with(&format!("amr-gateway {}", env!("CARGO_PKG_VERSION"))),
        "--version: {out}"
    );
    let (ok, out) = run(Command::new(&binary)
        .args(["check-config", "--config"])
        .arg(root.join("etc/amr-gateway/gateway.toml")));
    assert!(ok, "check-config of the shipped configuration:\n{out}");
}
