//! The CLI's answers to bad input: one clear line, non-zero status, no panic. No root needed.

mod common;

use common::{run, VIREO};

fn fails_with(args: &[&str], needle: &str) {
    let mut v = vec![VIREO];
    v.extend_from_slice(args);
    let o = run(&v);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

#[test]
fn config_errors_are_one_line_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("vireo-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "interfaces:\n  - {name: a, role: bridge}\n",
            "interfaces[0].role",
        ),
        ("af_xdp: {frame_size: 3000}\n", "af_xdp.frame_size"),
        (
            "interfaces:\n  - {name: a, role: pod, endpoint: {ip: 10.0.0.1, mac: xx}}\n",
            "interfaces[0].endpoint.mac",
        ),
        ("workers: []\n", "workers"),
        ("vxlan_port: 70000\n", "vxlan_port"),
    ];
    for (i, (yaml, field)) in cases.iter().enumerate() {
        let p = dir.join(format!("{i}.yaml"));
        std::fs::write(&p, yaml).unwrap();
        let o = run(&[VIREO, "agent", "--config", p.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("vireo:")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains(field), "{yaml:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_config_and_bad_flags() {
    fails_with(
        &["agent", "--config", "/nonexistent/vireo.yaml"],
        "/nonexistent/vireo.yaml",
    );
    fails_with(&["agent"], "--config");
    fails_with(
        &["status", "--api", "/nonexistent/vireo.sock"],
        "is `vireo agent` running?",
    );
    fails_with(&["no-such-command"], "unrecognized subcommand");
}
