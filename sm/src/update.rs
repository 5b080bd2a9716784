//! App-server update rules (protocol.md 5.2-5.4): what a `PUT /update/<token>` means and how it is answered.

/// A valid update: the version to store and the data to send live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// The version; missing, empty or 0 became the current Unix time.
    pub version: u64,
    /// Data for a live delivery only; never stored. `None` when absent or empty.
    pub data: Option<String>,
}

/// Why an update request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateError {
    /// Not an integer, negative, or beyond int64.
    BadVersion,
    /// `data` longer than the limit.
    DataTooLong {
        /// The limit in bytes.
        max: usize,
    },
}

/// How a stored update was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written to a live socket: 200.
    Delivered,
    /// Stored for the next hello: 202.
    Stored,
}

impl Outcome {
    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Outcome::Delivered => 200,
            Outcome::Stored => 202,
        }
    }
}

impl UpdateError {
    /// The HTTP status and body (a JSON string, as pushgo answers).
    pub fn response(&self) -> (u16, String) {
        match self {
            UpdateError::BadVersion => (400, "\"Invalid Version\"".into()),
            UpdateError::DataTooLong { max } => {
                (413, format!("\"Data exceeds max length of {max} bytes\""))
            }
        }
    }
}

/// True when the body is to be parsed as a form: no Content-Type, or form-urlencoded with any parameters.
pub fn is_form(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return true;
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.is_empty() || essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

fn lookup(pairs: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(pairs)
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .next()
}

/// Parses an update from the query string and the body. Body values win over the query.
/// `now` is the current Unix time in seconds.
pub fn parse(
    content_type: Option<&str>,
    query: &str,
    body: &[u8],
    now: u64,
    max_data: usize,
) -> Result<Update, UpdateError> {
    let form = is_form(content_type);
    let get = |name| {
        form.then(|| lookup(body, name))
            .flatten()
            .or_else(|| lookup(query.as_bytes(), name))
    };
    let version = parse_version(get("version").as_deref(), now)?;
    let data = get("data").filter(|d| !d.is_empty());
    if data.as_ref().is_some_and(|d| d.len() > max_data) {
        return Err(UpdateError::DataTooLong { max: max_data });
    }
    Ok(Update { version, data })
}

fn parse_version(raw: Option<&str>, now: u64) -> Result<u64, UpdateError> {
    let raw = raw.unwrap_or("");
    if raw.is_empty() {
        return Ok(now);
    }
    if !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UpdateError::BadVersion);
    }
    let v: u64 = raw.parse().map_err(|_| UpdateError::BadVersion)?;
    if v > i64::MAX as u64 {
        return Err(UpdateError::BadVersion);
    }
    Ok(if v == 0 { now } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;
    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    fn p(ct: Option<&str>, query: &str, body: &str) -> Result<Update, UpdateError> {
        parse(ct, query, body.as_bytes(), NOW, 4096)
    }

    #[test]
    fn version_from_form_body() {
        assert_eq!(p(FORM, "", "version=12").unwrap().version, 12);
        assert_eq!(
            p(
                Some("application/x-www-form-urlencoded; charset=utf-8"),
                "",
                "version=13"
            )
            .unwrap()
            .version,
            13
        );
    }

    #[test]
    fn body_without_content_type_is_parsed() {
        assert_eq!(p(None, "", "version=14").unwrap().version, 14);
    }

    #[test]
    fn body_of_other_types_is_ignored() {
        assert_eq!(
            p(Some("application/json"), "", "version=999")
                .unwrap()
                .version,
            NOW
        );
        assert_eq!(
            p(Some("text/plain"), "", "version=999").unwrap().version,
            NOW
        );
    }

    #[test]
    fn query_is_used_and_body_wins() {
        assert_eq!(
            p(Some("text/plain"), "version=7", "version=8")
                .unwrap()
                .version,
            7
        );
        assert_eq!(p(FORM, "version=7", "version=8").unwrap().version, 8);
        assert_eq!(p(FORM, "version=7", "").unwrap().version, 7);
    }

    #[test]
    fn missing_empty_or_zero_version_is_now() {
        assert_eq!(p(FORM, "", "").unwrap().version, NOW);
        assert_eq!(p(FORM, "", "version=").unwrap().version, NOW);
        assert_eq!(p(FORM, "", "version=0").unwrap().version, NOW);
    }

    #[test]
    fn bad_versions_are_400() {
        for b in [
            "version=abc",
            "version=-1",
            "version=1.5",
            "version=%2B5",
            "version=9223372036854775808",
            "version=99999999999999999999999",
            "version= 5",
        ] {
            assert_eq!(p(FORM, "", b), Err(UpdateError::BadVersion), "{b}");
        }
        assert_eq!(UpdateError::BadVersion.response().0, 400);
    }

    #[test]
    fn largest_int64_is_fine_and_backwards_versions_are_allowed() {
        assert_eq!(
            p(FORM, "", "version=9223372036854775807").unwrap().version,
            i64::MAX as u64
        );
        assert_eq!(p(FORM, "", "version=1").unwrap().version, 1);
    }

    #[test]
    fn data_limits() {
        let ok = format!("version=1&data={}", "a".repeat(4096));
        assert_eq!(p(FORM, "", &ok).unwrap().data.unwrap().len(), 4096);
        let long = format!("version=1&data={}", "a".repeat(4097));
        let err = p(FORM, "", &long).unwrap_err();
        assert_eq!(err, UpdateError::DataTooLong { max: 4096 });
        assert_eq!(
            err.response(),
            (413, "\"Data exceeds max length of 4096 bytes\"".into())
        );
        assert_eq!(p(FORM, "", "version=1&data=").unwrap().data, None);
        assert_eq!(
            p(FORM, "", "version=1&data=a%20b+c")
                .unwrap()
                .data
                .as_deref(),
            Some("a b c")
        );
    }

    #[test]
    fn outcomes() {
        assert_eq!(Outcome::Delivered.status(), 200);
        assert_eq!(Outcome::Stored.status(), 202);
    }
}
