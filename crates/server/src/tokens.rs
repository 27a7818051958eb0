//! API and join tokens: random, kept in files readable only by their owner.

use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A new random token (32 bytes from the kernel, hex).
pub fn random_token(prefix: &str) -> Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::Internal(format!("reading /dev/urandom: {e}")))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}{hex}"))
}

/// Reads the token in `path`, creating it (mode 0600) on first use. Returns it and whether it
/// was created.
pub fn load_or_create(path: &Path, prefix: &str) -> Result<(String, bool)> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let token = text.trim().to_string();
        if !token.is_empty() {
            return Ok((token, false));
        }
    }
    let token = random_token(prefix)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Internal(format!("creating {}: {e}", path.display())))?;
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::Internal(format!("writing {}: {e}", path.display())))?;
    Ok((token, true))
}

/// SHA-256 of a token, hex: what is stored instead of the token.
pub fn hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}
