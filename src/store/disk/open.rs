//! Opening the data directory: checks that name the file and what to do, and the endpoint key
//! kept there.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use redb::{Database, DatabaseError, StorageError};

/// The database file in the data directory.
pub const DB_FILE: &str = "simplepush.redb";
/// The endpoint key generated into the data directory when `endpoint.token_keys` is not set.
pub const KEY_FILE: &str = "endpoint.key";

/// Why the store could not be opened (the server exits with 2).
#[derive(Debug)]
pub struct OpenError(pub String);

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OpenError {}

/// Creates the data directory if needed and checks that files can be written in it.
pub fn prepare_dir(dir: &Path) -> Result<(), OpenError> {
    let named = |what: &str, e: std::io::Error| {
        OpenError(format!(
            "storage.path {}: {what}: {e} (make it a directory this user can write, or set \
             storage.path to one)",
            dir.display()
        ))
    };
    fs::create_dir_all(dir).map_err(|e| named("cannot create it", e))?;
    let probe = dir.join(".write-test");
    fs::write(&probe, b"ok").map_err(|e| named("not writable", e))?;
    fs::remove_file(&probe).map_err(|e| named("not writable", e))
}

/// Opens (or creates) the database file, checking every page of an existing one, so that a
/// damaged file is refused at start rather than found by a request later.
pub fn open_database(file: &Path, cache_bytes: usize) -> Result<Database, OpenError> {
    let opened = catch_unwind(AssertUnwindSafe(|| {
        Database::builder()
            .set_cache_size(cache_bytes)
            .set_check_integrity_on_open(true)
            .create(file)
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(explain(file, &e)),
        Err(_) => Err(damaged(file, "the store library could not read it")),
    }
}

fn damaged(file: &Path, why: &str) -> OpenError {
    OpenError(format!(
        "{}: the store file is damaged or not a simplepush store ({why}). Restore it from a \
         backup, or move it away to start with an empty store (every registration in it is \
         then lost, and its endpoints answer 410)",
        file.display()
    ))
}

fn explain(file: &Path, e: &DatabaseError) -> OpenError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => OpenError(format!(
            "{}: another process has this store open (one data directory per server)",
            file.display()
        )),
        DatabaseError::Storage(StorageError::Corrupted(why)) => damaged(file, why),
        DatabaseError::Storage(StorageError::Io(io))
            if matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof) =>
        {
            damaged(file, &io.to_string())
        }
        DatabaseError::UpgradeRequired(v) => OpenError(format!(
            "{}: written in an older store format ({v}); upgrade it with the redb tools first",
            file.display()
        )),
        other => OpenError(format!(
            "{}: {other} (check the file's permissions and the disk; the server keeps one store \
             per data directory)",
            file.display()
        )),
    }
}

/// The endpoint key kept in the data directory: read, or made once (32 random bytes,
/// base64url, mode 0600) so that endpoints survive restarts.
pub fn endpoint_key(dir: &Path) -> Result<String, OpenError> {
    prepare_dir(dir)?;
    let path = dir.join(KEY_FILE);
    match read_key(&path) {
        Ok(Some(k)) => return Ok(k),
        Ok(None) => {}
        Err(e) => return Err(e),
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)
        .map_err(|e| OpenError(format!("{}: no system randomness: {e}", path.display())))?;
    let key = URL_SAFE_NO_PAD.encode(raw);
    write_key(&path, &key)?;
    log::info!(
        "generated the endpoint key {} (keep it with the data: endpoints need it)",
        path.display()
    );
    Ok(key)
}

fn read_key(path: &PathBuf) -> Result<Option<String>, OpenError> {
    let mut text = String::new();
    match fs::File::open(path) {
        Ok(mut f) => f
            .read_to_string(&mut text)
            .map_err(|e| OpenError(format!("{}: {e}", path.display())))?,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(OpenError(format!("{}: {e}", path.display()))),
    };
    let key = text.trim().to_string();
    let valid = URL_SAFE_NO_PAD
        .decode(key.trim_end_matches('='))
        .is_ok_and(|b| b.len() == 32);
    if !valid {
        return Err(OpenError(format!(
            "{}: not a key (base64url of 32 bytes). Restore it from a backup; deleting it makes \
             every endpoint handed out so far answer 404",
            path.display()
        )));
    }
    Ok(Some(key))
}

fn write_key(path: &Path, key: &str) -> Result<(), OpenError> {
    let failed = |e: std::io::Error| OpenError(format!("{}: cannot write: {e}", path.display()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    f.write_all(format!("{key}\n").as_bytes()).map_err(failed)?;
    f.sync_all().map_err(failed)?;
    // The file's name must be durable too, or a crash could forget the key after its first use.
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sp-open-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_key_is_made_once_private_and_read_back() {
        let d = temp_dir("key");
        let k = endpoint_key(&d).unwrap();
        assert_eq!(endpoint_key(&d).unwrap(), k);
        let mode = fs::metadata(d.join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(d.join(KEY_FILE), "garbage").unwrap();
        let e = endpoint_key(&d).unwrap_err().0;
        assert!(e.contains(KEY_FILE) && e.contains("not a key"), "{e}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_that_is_not_a_store_is_refused_with_its_name() {
        let d = temp_dir("bad");
        prepare_dir(&d).unwrap();
        let file = d.join(DB_FILE);
        fs::write(&file, vec![7u8; 10_000]).unwrap();
        let e = open_database(&file, 1 << 20).err().unwrap().0;
        assert!(e.contains(DB_FILE) && e.contains("damaged"), "{e}");
        let _ = fs::remove_dir_all(&d);
    }
}
