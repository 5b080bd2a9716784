//! Many clients at once: a thousand real sockets, each registered, each sent an update.

mod common;

use std::time::Duration;

use common::{chid, put, Client, Server};

#[test]
fn a_thousand_concurrent_clients_each_get_their_update() {
    const N: usize = 1000;
    let s = Server::start();
    let mut clients: Vec<(Client, String)> = Vec::with_capacity(N);
    for i in 0..N {
        let mut c = s.client();
        c.hello_new();
        let ep = c.register(&chid(i as u32));
        clients.push((c, ep));
    }
    let r = common::request(s.addr, "GET", "/status", &[], "");
    assert!(r.body.contains(&format!("\"clients\":{N}")), "{}", r.body);
    // Updates from several app-server threads at once.
    let eps: Vec<String> = clients.iter().map(|(_, e)| e.clone()).collect();
    let workers: Vec<_> = eps
        .chunks(N / 8)
        .enumerate()
        .map(|(w, chunk)| {
            let chunk = chunk.to_vec();
            std::thread::spawn(move || {
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, ep)| put(ep, &format!("version={}", (w * 1000 + i) + 1)).status)
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    for w in workers {
        assert!(w.join().unwrap().iter().all(|&st| st == 200));
    }
    for (i, (c, _)) in clients.iter_mut().enumerate() {
        let n = c.recv();
        let w = i / (N / 8);
        let expect = (w * 1000 + i % (N / 8)) + 1;
        assert_eq!(n["updates"][0]["channelID"], chid(i as u32));
        assert_eq!(n["updates"][0]["version"], expect as u64);
    }
    // And all of them are still open and answering.
    for (c, _) in clients.iter_mut().step_by(50) {
        c.send("{}");
        assert_eq!(c.recv_text(), "{}");
    }
    drop(clients);
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn connections_past_the_descriptor_limit_are_refused_and_survived() {
    let s = Server::start_with_fd_limit(128);
    // max_connections is fitted to the descriptors at start (all but 64 of them).
    assert!(
        s.wait_log("server.max_connections lowered from 100000 to 64"),
        "{}",
        s.log()
    );
    let mut held = Vec::new();
    // Far more connections than descriptors: the extra ones are refused, the server lives on.
    for _ in 0..150 {
        if let Ok(t) = std::net::TcpStream::connect(s.addr) {
            held.push(t);
        }
    }
    assert!(s.wait_log("max_connections reached"), "{}", s.log());
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let mut c = s.client();
    c.hello_new();
    let ep = c.register(&chid(1));
    // The server frees the descriptors as it reads the closes; on a busy machine that takes a moment.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let reply = loop {
        if let Some(r) = common::try_put(&ep, "version=3") {
            break r;
        }
        assert!(
            std::time::Instant::now() < end,
            "never served again: {}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(reply.status, 200);
    assert_eq!(c.recv()["updates"][0]["version"], 3);
}

#[test]
fn devices_and_updates_meet_across_event_loops() {
    const N: u32 = 200;
    let s = Server::start_with("workers = 4", "");
    let mut devices = Vec::new();
    for i in 0..N {
        let mut c = s.client();
        let uaid = c.hello_new();
        let ep = c.register(&chid(i));
        c.close();
        devices.push((uaid, ep));
    }
    // Reconnect with the same UAIDs: most land on a loop that does not own them and move.
    let mut clients = Vec::new();
    for (i, (uaid, ep)) in devices.iter().enumerate() {
        let mut c = s.client();
        assert_eq!(c.hello(uaid, &[&chid(i as u32)])["uaid"], uaid.as_str());
        clients.push((c, ep.clone()));
    }
    assert!(
        s.wait_log("handing the socket over"),
        "no hello crossed loops"
    );
    let r = common::request(s.addr, "GET", "/status", &[], "");
    assert!(r.body.contains(&format!("\"clients\":{N}")), "{}", r.body);
    for (i, (c, ep)) in clients.iter_mut().enumerate() {
        // Each update arrives on whichever loop the kernel picks, and reaches the owner.
        assert_eq!(put(ep, &format!("version={}", i + 1)).status, 200);
        assert_eq!(c.recv()["updates"][0]["version"], i as u64 + 1);
    }
}
