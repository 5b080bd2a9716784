//! `--html`: a real run against a real server writes a self-contained report, and headless
//! Firefox, given only the file, draws every chart: the screenshot holds each series' colour
//! across the width of its chart (not only in its legend swatch).

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The series colours of loadtest/src/html.rs, one or more per chart.
const CHARTS: &[(&str, &[[u8; 3]])] = &[
    ("latency histogram", &[[0x1f, 0x77, 0xb4]]),
    ("percentile curve", &[[0xd6, 0x27, 0x28]]),
    ("connect percentile curve", &[[0x94, 0x67, 0xbd]]),
    ("open connections", &[[0x2c, 0xa0, 0x2c]]),
    // Sent and received rates coincide: received is drawn over sent.
    ("push rates", &[[0xff, 0x7f, 0x0e], [0x17, 0xbe, 0xcf]]),
    ("server RSS", &[[0xbc, 0xbd, 0x22]]),
    ("server CPU", &[[0xf0, 0x32, 0xe6]]),
];
const WIDTH: u32 = 900;
const HEIGHT: u32 = 2600;

/// Runs `firefox-esr --screenshot` on `page` (in a loopback-only network namespace when one
/// can be made); false if Firefox is not installed.
fn screenshot(dir: &Path, page: &Path, png: &Path) -> bool {
    if Command::new("firefox-esr")
        .arg("--version")
        .output()
        .is_err()
    {
        return false;
    }
    let profile = dir.join("profile");
    std::fs::create_dir_all(&profile).unwrap();
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/firefox/user.js.in");
    let prefs = std::fs::read_to_string(template).expect("tests/firefox/user.js.in");
    std::fs::write(
        profile.join("user.js"),
        prefs.replace("__PUSH_URL__", "ws://127.0.0.1:1/"),
    )
    .unwrap();
    let firefox = format!(
        "firefox-esr --headless --no-remote --profile '{}' --screenshot '{}' --window-size={WIDTH},{HEIGHT} 'file://{}'",
        profile.display(),
        png.display(),
        page.display()
    );
    let isolated = Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up"])
        .output()
        .is_ok_and(|o| o.status.success());
    let script = if isolated {
        format!("ip link set lo up && exec {firefox}")
    } else {
        eprintln!("html_report: no private network namespace (unshare -n); the report needs no network anyway");
        format!("exec {firefox}")
    };
    let mut cmd = if isolated {
        let mut c = Command::new("unshare");
        c.args(["-n", "sh", "-c", &script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    };
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut child = cmd
        .process_group(0)
        .env("MOZ_HEADLESS", "1")
        .env("MOZ_CRASHREPORTER_DISABLE", "1")
        .env("MOZ_REMOTE_SETTINGS_DEVTOOLS", "1")
        .env("HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start firefox-esr");
    // Firefox's content processes share its group: none may outlive the test.
    let _kill = GroupGuard(child.id());
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "firefox-esr --screenshot: {status}");
            return true;
        }
        assert!(Instant::now() < end, "firefox-esr took more than 90 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// RGB pixels of a PNG, with its width.
fn pixels(png: &Path) -> (Vec<[u8; 3]>, u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let step = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    let px = buf[..info.buffer_size()]
        .chunks(step)
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    (px, info.width)
}

/// How many pixels are close to one of `colors`, and how wide a span they cover.
fn coverage(px: &[[u8; 3]], width: u32, colors: &[[u8; 3]]) -> (usize, u32) {
    let near = |p: &[u8; 3], c: &[u8; 3]| p.iter().zip(c).all(|(a, b)| a.abs_diff(*b) <= 24);
    let (mut n, mut lo, mut hi) = (0, u32::MAX, 0);
    for (i, p) in px.iter().enumerate() {
        if colors.iter().any(|c| near(p, c)) {
            n += 1;
            let x = i as u32 % width;
            lo = lo.min(x);
            hi = hi.max(x);
        }
    }
    (n, hi.saturating_sub(lo))
}

#[test]
fn the_report_is_self_contained_and_firefox_draws_its_charts() {
    let dir = temp_dir("html");
    let s = server(&dir, "");
    let page = dir.join("report.html");
    let mut a = args("notify --connections 100 --rate 200 --duration 2 --grace 2");
    a.extend([
        "--ws-url".into(),
        format!("ws://{}/", s.addr),
        "--server-pid".into(),
        s.pid().to_string(),
        "--html".into(),
        page.display().to_string(),
    ]);
    let r = tester_json(&dir, &a);
    assert!(num(&r, "notifications.received") > 0, "{r:#}");
    let html = std::fs::read_to_string(&page).expect("the report");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(
        html.matches("<svg class=\"chart\"").count(),
        6,
        "six charts"
    );
    for outside in ["<script", "<link", "src=", "href=", "url(", "@import"] {
        assert!(!html.contains(outside), "the report refers to {outside}");
    }
    assert!(
        html.contains("notifications.received"),
        "every figure is listed"
    );
    let shot = dir.join("report.png");
    if !screenshot(&dir, &page, &shot) {
        eprintln!("html_report: SKIPPED the rendering check: firefox-esr is not installed");
        return;
    }
    let (px, width) = pixels(&shot);
    assert_eq!(width, WIDTH);
    for (chart, colors) in CHARTS {
        let (n, span) = coverage(&px, width, colors);
        // A legend swatch is 10 x 10 pixels; a drawn series runs across its chart.
        assert!(
            n >= 300 && span >= 200,
            "{chart}: {n} pixels over {span} px"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
