//! Cluster routing on the event loop: router requests, kicks, forwards, node records.

use super::*;

/// This node's place in a cluster.
pub(super) struct Cluster {
    pub(super) url: String,
    /// The secret router requests are signed with, and where they may go.
    pub(super) peering: Arc<router::Peering>,
}

/// The router URL of a node record (`<url> <connection id>`).
pub(super) fn node_url(record: &str) -> &str {
    record.split_once(' ').map_or(record, |(url, _)| url)
}

/// The connection id of a node record.
pub(super) fn node_conn(record: &str) -> &str {
    record.split_once(' ').map_or("", |(_, id)| id)
}

impl Server {
    /// Tells the node that held the UAID before to close that socket (only that one: by then the
    /// device may have connected there again).
    pub(super) fn kick_elsewhere(&mut self, uaid: Uaid, previous: Option<String>) {
        let (Some(c), Some(record)) = (&self.cluster, previous) else {
            return;
        };
        let (url, conn) = (
            node_url(&record).to_string(),
            node_conn(&record).to_string(),
        );
        if url == c.url {
            // Our own older socket: the registry closed it already.
            return;
        }
        let peering = c.peering.clone();
        self.store.forward(Box::new(move || {
            router::kick(&url, &peering, &uaid, &conn);
            Done::Nothing
        }));
    }

    /// This socket's node record: `<router url> <loop>.<key>.<gen>`.
    pub(super) fn node_id(&self, key: usize, gen: u32) -> Option<String> {
        self.cluster
            .as_ref()
            .map(|c| format!("{} {}.{key}.{gen}", c.url, self.id))
    }

    pub(super) fn route_request(&mut self, key: usize, head: &Head, body: &[u8]) {
        let Some(peering) = self.cluster.as_ref().map(|c| c.peering.clone()) else {
            return self.respond(key, endpoint::not_found(), head.keep_alive);
        };
        let resp = match router::parse(head, body, &peering.secret, wall_secs()) {
            Err(r) => r,
            Ok(RouteRequest::Deliver(d)) => {
                // Check the version is still pending (not acked, not unregistered) before writing
                // it: it was stored on another node, possibly before an unregister handled here.
                let Some(conn) = self.park(key, head.keep_alive) else {
                    return;
                };
                return self.submit_owned(Job::Check { conn, d });
            }
            Ok(RouteRequest::Broadcasts(changes)) => {
                self.spread_broadcasts(std::sync::Arc::new(changes));
                Response::json(200, "{}")
            }
            Ok(RouteRequest::Kick { uaid, conn }) => {
                let w = owner(&uaid, self.peers.mail.len());
                if w == self.id {
                    self.kick_here(uaid, &conn);
                } else {
                    // A stopped loop has closed its sockets already.
                    let _ = self.peers.send(w, Cross::Kick { uaid, conn });
                }
                Response::json(200, "{}")
            }
        };
        self.respond(key, resp, head.keep_alive);
    }

    /// Closes this loop's socket for the UAID if it is the one a node record named.
    pub(super) fn kick_here(&mut self, uaid: Uaid, conn: &str) {
        let target = self.registry.get(&uaid).filter(|&old| {
            self.bound_to(old) == Some(uaid)
                && self
                    .conn_ref(old)
                    .is_some_and(|r| format!("{}.{}.{}", r.worker, r.key, r.gen) == conn)
        });
        if let Some(old) = target {
            debug!(conn:% = ConnName(self.id, old), uaid:%; "connected to another node");
            self.begin_close(old, CloseCode::Normal, "connected elsewhere");
        }
    }
}
