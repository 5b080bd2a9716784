//! A device new to the cluster costs memcached one round of two adds and no read: the UAID its
//! hello was given a moment ago cannot be in any record yet, and nothing can reach it before its
//! first register, which writes its record and its node record together. Checked against
//! memcached's own command log, and the fallback (an add that finds its key written after all)
//! against a real memcached too.

mod common;

use std::time::Duration;

use common::{chid, have_memcached, memcached_node, put, split_url, Memcached, Server};
use simplepush::store::memcached::{MemcachedStore, Settings};
use simplepush::store::{Backend, PutResult};
use sm::{ChannelId, Id, Uaid};

const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";

fn node(mc: &Memcached) -> Server {
    let cluster = "[cluster]\nrouter_listen = \"127.0.0.1:0\"\nsecret = \"new-devices-secret-0123456789\"\ntimeout_ms = 500";
    memcached_node(mc, KEY, cluster)
}

/// memcached's log lines (`-vv`) of commands on this UAID's keys.
fn commands_on(log: &std::path::Path, uaid: &str) -> Vec<String> {
    let hex = uaid.replace('-', "").to_lowercase();
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(&hex))
        .map(|l| l.split_once(' ').map_or(l, |(_, cmd)| cmd).to_string())
        .collect()
}

#[test]
fn a_new_device_costs_two_adds_written_by_its_first_register_and_no_read() {
    if !have_memcached() {
        return;
    }
    let log = std::env::temp_dir().join(format!("simplepush-mc-{}.log", std::process::id()));
    let mc = Memcached::start_logged(&log);
    let (n1, n2) = (node(&mc), node(&mc));
    let mut c = n1.client();
    let uaid = c.hello_new();
    let ep = c.register(&chid(1));

    let cmds = commands_on(&log, &uaid);
    let _ = std::fs::remove_file(&log);
    // `ms <key> … ME`: a meta set in add mode (fails if the key exists); `mg`: a read. The hello
    // wrote nothing: the record comes first, then the node record, both from the register.
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert!(
        cmds[0].starts_with("ms u/") && cmds[0].contains(" ME"),
        "{cmds:?}"
    );
    assert!(
        cmds[1].starts_with("ms n/") && cmds[1].contains(" ME"),
        "{cmds:?}"
    );

    // The node record is right: an update sent to the other node reaches the device live.
    let other = format!("http://{}{}", n2.addr, split_url(&ep).1);
    assert_eq!(put(&other, "version=7").status, 200);
    assert_eq!(c.recv()["updates"][0]["version"], 7);
}

fn id(b: u8) -> Id {
    Id::fresh([b; 16])
}

#[test]
fn adds_that_find_their_keys_written_fall_back_to_read_and_write() {
    if !have_memcached() {
        return;
    }
    let mc = Memcached::start();
    let store = MemcachedStore::start(Settings {
        servers: vec![mc.addr.to_string()],
        timeout: Duration::from_millis(500),
        pool_size: 1,
        pending_ttl: 3600,
        registration_ttl: 3600,
        max_messages: 10,
        replicas: 1,
        allow_eviction: false,
        cluster: true,
    })
    .expect("store");
    let u = Uaid(id(7));
    let (c1, c2) = (ChannelId(id(1)), ChannelId(id(2)));
    assert_eq!(store.register(&u, &c1, 10), Ok(true));
    assert_eq!(store.bind_node(&u, "http://127.0.0.1:1 1"), Ok(None));

    // Taken for minted although both records exist: neither add may lose what is there.
    assert_eq!(
        store.register_minted(&u, &c2, 10, "http://127.0.0.1:2 2"),
        Ok(true)
    );

    for (c, v) in [(c1, 5), (c2, 6)] {
        match store.put(&u, &c, v) {
            Ok(PutResult::Stored { node, .. }) => {
                assert_eq!(node.as_deref(), Some("http://127.0.0.1:2 2"))
            }
            other => panic!("channel {v}: {other:?}"),
        }
    }
}
