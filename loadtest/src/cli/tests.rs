//! The command line keeps every flag the scripts, tests and README use, with its meaning.

use super::*;

fn run(args: &str) -> Result<Config, String> {
    match parse(args.split_whitespace().map(String::from)) {
        Ok(Command::Run(c)) => Ok(c),
        Ok(Command::Child(_)) => Err("not a run".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn defaults_and_forms() {
    let c = run("notify").unwrap();
    assert_eq!(
        (c.connections, c.channels, c.rate, c.max_handshakes),
        (100, 1, 100.0, 500)
    );
    assert_eq!(c.ws_urls, ["ws://127.0.0.1:8080/"]);
    assert_eq!(c.run_devices, 100);
    assert_eq!(
        (c.duration, c.max_seconds, c.timeout, c.grace),
        (10.0, 600.0, 15.0, 5.0)
    );
    assert_eq!((c.http_conns, c.pipeline, c.procs), (8, 64, 1));
    assert!(c.progress && !c.allow_remote && !c.insecure && c.ca.is_none());
    assert_eq!(run("churn").unwrap().rate, 50.0);
    assert_eq!(run("offline").unwrap().rate, 0.0);
    let c = run("churn --connections=2_000 --rate 300 --no-progress").unwrap();
    assert_eq!((c.connections, c.rate, c.progress), (2000, 300.0, false));
    let help = parse(["--help".to_string()].into_iter()).err().unwrap();
    assert!(help.is_help());
    let text = help.to_string();
    for flag in [
        "--ws-url",
        "--allow-remote",
        "--payload-size",
        "--html",
        "SCENARIOS",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
    assert!(!text.contains("--child"));
}

#[test]
fn refusals() {
    assert!(run("").is_err());
    assert!(run("connect --bogus 1").is_err());
    assert!(run("bogus").is_err());
    assert!(run("connect --rate -1").is_err());
    assert!(run("connect --rate").is_err());
    assert!(run("connect --channels 0").is_err());
    assert!(run("connect --ws-url ws://192.168.0.1/").is_err());
    assert!(run("connect --endpoint-base http://8.8.8.8").is_err());
    assert!(run("connect --source-addrs 10.1.1.1").is_err());
    assert!(run("connect --source-addrs ::1").is_err());
    assert!(run("churn --rate 0").is_err());
    assert!(run("notify --devices 10").is_err());
    assert!(run("churn --devices 10 --connections 20").is_err());
    assert!(run("churn --rounds 2").is_err());
    assert!(run("churn --devices 10 --connections 5 --rotate 1.5").is_err());
    assert!(run("churn --devices 10 --connections 5 --rss-csv x.csv").is_err());
    assert!(run("churn --devices 10 --connections 5 --rounds 2 --duration 400").is_err());
    let c = run("churn --devices 10 --connections 5 --rounds 2 --put-rate 50").unwrap();
    assert_eq!((c.devices, c.rounds, c.put_rate), (10, 2, 50.0));
    assert_eq!(c.run_devices, 10);
}

#[test]
fn remote_targets_need_allow_remote() {
    let e = run("connect --ws-url wss://192.0.2.1/").unwrap_err();
    assert!(e.contains("--allow-remote"), "{e}");
    let c =
        run("connect --ws-url wss://192.0.2.1/ --allow-remote --endpoint-base https://192.0.2.2")
            .unwrap();
    assert!(c.allow_remote);
    assert!(
        run("connect --allow-remote --source-addrs 10.1.1.1-10.1.1.3 --ws-url ws://10.2.0.1/")
            .is_ok()
    );
    assert!(run("connect --ws-url ws://localhost:9/").is_ok());
    assert!(run("connect --ca x.pem --insecure").is_err());
}

#[test]
fn payload_sizes() {
    assert_eq!(run("webpush").unwrap().payload_sizes, [256]);
    let c = run("webpush --payload-size 8,100 --payload-size 3993").unwrap();
    assert_eq!(c.payload_sizes, [8, 100, 3993]);
    assert_eq!(c.scenario, Scenario::Webpush);
    assert!(run("webpush --payload-size 7").is_err());
    assert!(run("webpush --payload-size 3994").is_err());
}

#[test]
fn end_waits_grow_with_the_whole_run() {
    let c = run("connect --connections 1000000 --procs 56").unwrap();
    assert_eq!(c.end_wait(6.0), std::time::Duration::from_secs(106));
    let small = run("connect --connections 100").unwrap();
    assert_eq!(small.end_wait(5.0), std::time::Duration::from_millis(5010));
}

#[test]
fn several_targets() {
    let c = run(
        "connect --ws-url ws://127.0.0.1:1/,ws://127.0.0.2:2/ --ws-url ws://127.0.0.3:3/ \
         --endpoint-base http://127.0.0.1:4 --endpoint-base=http://127.0.0.1:5,",
    )
    .unwrap();
    assert_eq!(
        c.ws_urls,
        [
            "ws://127.0.0.1:1/",
            "ws://127.0.0.2:2/",
            "ws://127.0.0.3:3/"
        ]
    );
    assert_eq!(
        c.endpoint_bases,
        ["http://127.0.0.1:4", "http://127.0.0.1:5"]
    );
    assert!(run("connect --ws-url ws://127.0.0.1:1/,ws://10.0.0.1:2/").is_err());
    assert!(run("connect --ws-url ,").is_err());
    assert!(run("connect --ws-url ws://127.0.0.1:1/ --source-addrs ::1").is_err());
}

/// The command lines of bench.sh, scale.sh, soak.sh and the README, as they pass their flags.
#[test]
fn the_scripts_command_lines_still_parse() {
    let ws = "--ws-url ws://127.0.0.1:18480/";
    for line in [
        format!("connect --connections 19000 --channels 1 --duration 10 {ws} --source-addrs 127.0.0.2-127.0.0.20 --server-pid 1 --max-seconds 150 --json x.json --no-progress"),
        format!("notify --connections 19000 --channels 1 --rate 1000 --duration 20 --grace 3 {ws}"),
        format!("churn --connections 1000 --rate 2000 --duration 30 {ws}"),
        format!("offline --connections 2000 --channels 1 {ws}"),
        format!("churn --devices 6000 --connections 3000 --channels 2 --rate 600 --dwell 4 --put-rate 1000 --rotate 0.1 --drop 0.1 --duration 300 --rounds 2 --settle 10 --source-addrs 127.0.0.2-127.0.0.20 --server-pid 1 --rss-csv rss.csv --sample-secs 10 {ws}"),
        "connect --no-progress --ws-url ws://127.0.0.1:1/,ws://127.0.0.1:2/ --procs 11 --connections 200002 --source-addrs 127.0.1.1-127.0.1.50 --ramp 5000 --max-handshakes 2000 --timeout 60 --duration 5 --max-seconds 900".to_string(),
        "notify --no-progress --ws-url ws://127.0.0.1:1/ --endpoint-base http://127.0.0.1:2 --connections 2000 --rate 2000 --duration 5 --http-conns 16 --pipeline 128".to_string(),
    ] {
        run(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
}
