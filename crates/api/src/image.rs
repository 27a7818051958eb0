//! Image references as registries read them.

/// The node feature of agents that run tasks in OCI images; a job with an image requires it.
pub const CONTAINER_FEATURE: &str = "oci";

/// A registry login: what a node presents to pull a project's private images.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    /// The registry's user name.
    pub username: String,
    /// Its password or access token.
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Logs and panics name the user, never the password.
        f.debug_struct("RegistryCredentials").field("username", &self.username).field("password", &"<hidden>").finish()
    }
}

/// `POST /registries`: a project's login to one registry, kept like a secret.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryLoginRequest {
    /// `host[:port]` as image references name it (`docker.io` is Docker Hub's).
    pub host: String,
    /// The registry's user name.
    pub username: String,
    /// Its password or access token.
    pub password: String,
    /// The project it is for (the admin's choice; a project token acts for its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

impl std::fmt::Debug for RegistryLoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLoginRequest").field("host", &self.host).field("username", &self.username).field("project", &self.project).finish_non_exhaustive()
    }
}

/// `POST /registries/logout`: forget a project's login to one registry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryLogoutRequest {
    /// `host[:port]`.
    pub host: String,
    /// The project (the admin's choice; a project token acts for its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// A registry login as listed: never its password.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegistryLoginView {
    /// The project it is for.
    pub project: String,
    /// `host[:port]`.
    pub host: String,
    /// The user name.
    pub username: String,
}

/// The registry host an image reference or a login names, as pulls compare them: Docker
/// Hub's aliases are one host, and case does not matter.
pub fn registry_host(host: &str) -> Result<String, String> {
    let lower = host.trim().to_ascii_lowercase();
    let valid = !lower.is_empty()
        && lower.len() <= 255
        && lower.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        && !lower.starts_with(['.', '-', ':']);
    if !valid {
        return Err(format!("'{host}' is not a registry host (HOST[:PORT])"));
    }
    Ok(match lower.as_str() {
        "docker.io" | "index.docker.io" | "registry.hub.docker.com" => "registry-1.docker.io".to_string(),
        _ => lower,
    })
}

/// An image reference: `[HOST[:PORT]/]NAME[:TAG][@sha256:HEX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry, `host[:port]`.
    pub registry: String,
    /// The repository, `library/busybox`.
    pub repository: String,
    /// A tag or a digest.
    pub reference: String,
}

impl ImageRef {
    /// Reads a reference; a name without a registry is Docker Hub's, without a tag `latest`.
    pub fn parse(text: &str) -> Result<ImageRef, String> {
        let bad = |why: &str| format!("image '{text}': {why}");
        if text.is_empty() || text.len() > 512 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("not an image reference (HOST[:PORT]/NAME[:TAG][@sha256:DIGEST])"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                let hex = digest.strip_prefix("sha256:").ok_or_else(|| bad("only sha256 digests are read"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                    return Err(bad("a sha256 digest is 64 lowercase hex digits"));
                }
                (rest, Some(digest.to_string()))
            }
            None => (text, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => (first.to_string(), path.to_string()),
            _ => ("registry-1.docker.io".to_string(), if rest.contains('/') { rest.to_string() } else { format!("library/{rest}") }),
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), Some(tag.to_string())),
            _ => (path, None),
        };
        let name_ok = |s: &str| !s.is_empty() && s.split('/').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)));
        if !name_ok(&repository) {
            return Err(bad("a name is lowercase letters, digits, '.', '_', '-' and '/'"));
        }
        if let Some(tag) = &tag {
            if tag.is_empty() || tag.len() > 128 || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                return Err(bad("a tag is letters, digits, '.', '_' and '-'"));
            }
        }
        let reference = digest.or(tag).unwrap_or_else(|| "latest".to_string());
        Ok(ImageRef { registry, repository, reference })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_read_as_registries_read_them() {
        let r = ImageRef::parse("127.0.0.1:5000/tools/busybox:1.36").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str(), r.reference.as_str()), ("127.0.0.1:5000", "tools/busybox", "1.36"));
        let hub = ImageRef::parse("busybox").unwrap();
        assert_eq!((hub.registry.as_str(), hub.repository.as_str(), hub.reference.as_str()), ("registry-1.docker.io", "library/busybox", "latest"));
        let digest = format!("sha256:{}", "a".repeat(64));
        let pinned = ImageRef::parse(&format!("ghcr.io/org/img:v1@{digest}")).unwrap();
        assert_eq!(pinned.reference, digest);
        assert_eq!(registry_host("Docker.IO").unwrap(), hub.registry, "a login to docker.io serves Docker Hub's images");
        assert_eq!(registry_host("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        for bad in ["", "a/b", "-x", "host name", "a@b"] {
            assert!(registry_host(bad).is_err(), "{bad}");
        }
        for bad in ["", "UPPER/case", "img:bad tag", "img@sha256:abc", "img@md5:00", "a//b"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
