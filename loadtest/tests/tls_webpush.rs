//! The tester against a real server with TLS on loopback (a certificate made for the test):
//! wss:// devices and https:// endpoints, certificate checks (--ca, --insecure), the webpush
//! scenario end to end, and the refusal of non-loopback targets.

mod common;

use common::*;

#[test]
fn webpush_over_tls_decrypts_and_checks_every_message() {
    let dir = temp_dir("tls-webpush");
    let (tls, cert) = self_signed(&dir, "server");
    let s = server(&dir, &tls);
    let mut a = args(
        "webpush --connections 40 --channels 2 --rate 150 --duration 2 --grace 3 \
         --payload-size 8,1000,3993",
    );
    a.extend([
        "--ws-url".into(),
        format!("wss://{}/", s.addr),
        "--ca".into(),
        cert.display().to_string(),
        "--server-pid".into(),
        s.pid().to_string(),
    ]);
    let r = tester_json(&dir, &a);
    assert_eq!(num(&r, "connections.ok"), 40, "{r:#}");
    let sent = num(&r, "notifications.sent");
    assert!(sent >= 150, "{r:#}");
    // Every message was accepted (201), arrived over wss://, decrypted and checked.
    assert_eq!(num(&r, "notifications.responses.201"), sent, "{r:#}");
    assert_eq!(num(&r, "notifications.received"), sent, "{r:#}");
    for k in [
        "lost",
        "corrupted",
        "duplicated",
        "unexpected",
        "misrouted",
        "unanswered",
    ] {
        assert_eq!(num(&r, &format!("notifications.{k}")), 0, "{k}: {r:#}");
    }
    assert_eq!(r["latency_kind"], "push_to_notification");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn certificates_are_checked_unless_insecure() {
    let dir = temp_dir("tls-verify");
    let (tls, _cert) = self_signed(&dir, "server");
    let (_, other_ca) = self_signed(&dir, "other");
    let s = server(&dir, &tls);
    let ws = format!("wss://{}/", s.addr);
    // SimplePush over wss:// and PUTs over https:// with the certificate accepted unchecked.
    let mut a = args("notify --connections 30 --rate 100 --duration 1 --insecure");
    a.extend(["--ws-url".into(), ws.clone()]);
    let r = tester_json(&dir, &a);
    assert_eq!(num(&r, "connections.ok"), 30, "{r:#}");
    let sent = num(&r, "notifications.sent");
    assert!(sent >= 50, "{r:#}");
    assert_eq!(num(&r, "notifications.received"), sent, "{r:#}");
    // Trusting another certificate: every handshake is refused, and says why.
    let mut a = args("connect --connections 5 --duration 0 --timeout 5");
    a.extend([
        "--ws-url".into(),
        ws,
        "--ca".into(),
        other_ca.display().to_string(),
    ]);
    let r = tester_json(&dir, &a);
    assert_eq!(num(&r, "connections.ok"), 0, "{r:#}");
    assert_eq!(num(&r, "connections.failed"), 5, "{r:#}");
    let failures = r["connections"]["failures"].to_string();
    assert!(
        failures.contains("tls:") && failures.contains("certificate"),
        "{failures}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn targets_off_this_machine_need_allow_remote() {
    for url in ["ws://192.0.2.10:8080/", "wss://[2001:db8::1]/"] {
        let out = run_tester(&["connect".into(), "--ws-url".into(), url.into()]);
        assert_eq!(out.status.code(), Some(2), "{url}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("refusing non-loopback host"), "{err}");
        assert!(err.contains("--allow-remote"), "{err}");
    }
    let out = run_tester(&args("connect --endpoint-base https://198.51.100.1"));
    assert_eq!(out.status.code(), Some(2));
    // A --ca file that holds no certificate is a usage error too.
    let dir = temp_dir("tls-badca");
    let bad = dir.join("empty.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let mut a = args("connect --ws-url wss://127.0.0.1:1/ --ca");
    a.push(bad.display().to_string());
    let out = run_tester(&a);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca"));
    let _ = std::fs::remove_dir_all(&dir);
}
