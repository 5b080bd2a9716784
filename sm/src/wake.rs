//! Wake data: how an offline device can be woken (SimplePush's optional "KICK" drivers).
//!
//! A hello may carry pushgo's `connect` object (opaque, for a proprietary bridge), or Firefox OS's
//! `wakeup_hostport` `{ip, port}` and `mobilenetwork` `{mcc, mnc, netid}`. The server stores it with
//! the UAID and hands it to a wake driver when an update waits for the device.

use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Map, Value};

/// Largest wake data kept, as JSON text: it is stored per UAID and sent on every wake.
pub const MAX_LEN: usize = 1024;

/// What a hello said about waking the device.
#[derive(Clone, Debug, PartialEq)]
pub struct Wake {
    /// pushgo's `connect`: an object for a proprietary driver.
    pub connect: Option<Value>,
    /// Firefox OS's `wakeup_hostport`: where a UDP datagram wakes the device.
    pub hostport: Option<SocketAddr>,
    /// Firefox OS's `mobilenetwork`: the carrier network the device is on.
    pub mobilenetwork: Option<Value>,
}

fn hostport(v: Option<&Value>) -> Option<SocketAddr> {
    let obj = v?.as_object()?;
    let ip: IpAddr = obj.get("ip")?.as_str()?.parse().ok()?;
    let port = match obj.get("port")? {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
    Some(SocketAddr::new(ip, port))
}

fn mobilenetwork(v: Option<&Value>) -> Option<Value> {
    let obj = v?.as_object()?;
    let mut out = Map::new();
    for key in ["mcc", "mnc", "netid"] {
        if let Some(field) = obj.get(key).filter(|f| f.is_string() || f.is_number()) {
            out.insert(key.into(), field.clone());
        }
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

impl Wake {
    /// Reads the wake fields of a hello; `None` when there are none usable (malformed fields are
    /// ignored: they cost the device its wake-ups, not its connection), or when they are too large.
    pub fn parse(
        connect: Option<&Value>,
        hostport_v: Option<&Value>,
        mobile: Option<&Value>,
    ) -> Option<Wake> {
        let wake = Wake {
            connect: connect.filter(|c| c.is_object()).cloned(),
            hostport: hostport(hostport_v),
            mobilenetwork: mobilenetwork(mobile),
        };
        let empty =
            wake.connect.is_none() && wake.hostport.is_none() && wake.mobilenetwork.is_none();
        (!empty && wake.to_json().len() <= MAX_LEN).then_some(wake)
    }

    /// The JSON kept in storage and sent to a webhook.
    pub fn to_json(&self) -> String {
        let mut obj = Map::new();
        if let Some(c) = &self.connect {
            obj.insert("connect".into(), c.clone());
        }
        if let Some(hp) = &self.hostport {
            obj.insert(
                "wakeup_hostport".into(),
                json!({"ip": hp.ip().to_string(), "port": hp.port()}),
            );
        }
        if let Some(m) = &self.mobilenetwork {
            obj.insert("mobilenetwork".into(), m.clone());
        }
        Value::Object(obj).to_string()
    }

    /// The inverse of [`Wake::to_json`].
    pub fn from_json(text: &str) -> Option<Wake> {
        let v: Value = serde_json::from_str(text).ok()?;
        Wake::parse(
            v.get("connect"),
            v.get("wakeup_hostport"),
            v.get("mobilenetwork"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firefox_os_fields_round_trip() {
        let w = Wake::parse(
            None,
            Some(&json!({"ip": "10.1.2.3", "port": 4567})),
            Some(&json!({"mcc": "214", "mnc": "07", "netid": 3, "extra": "x"})),
        )
        .unwrap();
        assert_eq!(w.hostport, Some("10.1.2.3:4567".parse().unwrap()));
        assert_eq!(
            w.mobilenetwork,
            Some(json!({"mcc": "214", "mnc": "07", "netid": 3}))
        );
        assert_eq!(Wake::from_json(&w.to_json()), Some(w));
    }

    #[test]
    fn pushgo_connect_is_kept_as_sent() {
        let w = Wake::parse(Some(&json!({"type": "bridge", "token": "abc"})), None, None).unwrap();
        let back = Wake::from_json(&w.to_json()).unwrap();
        assert_eq!(
            back.connect,
            Some(json!({"type": "bridge", "token": "abc"}))
        );
    }

    #[test]
    fn malformed_or_oversized_wake_data_is_ignored() {
        for bad in [
            json!({"ip": "not-an-ip", "port": 1}),
            json!({"ip": "10.0.0.1", "port": 0}),
            json!({"ip": "10.0.0.1", "port": 70000}),
            json!({"ip": "10.0.0.1"}),
            json!("10.0.0.1:5"),
        ] {
            assert_eq!(Wake::parse(None, Some(&bad), None), None, "{bad}");
        }
        assert_eq!(Wake::parse(Some(&json!("text")), None, None), None);
        let big = json!({"blob": "x".repeat(MAX_LEN)});
        assert_eq!(Wake::parse(Some(&big), None, None), None);
        assert_eq!(
            Wake::parse(None, Some(&json!({"ip": "::1", "port": "9"})), None)
                .unwrap()
                .hostport,
            Some("[::1]:9".parse().unwrap())
        );
    }
}
