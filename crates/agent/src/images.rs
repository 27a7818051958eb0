//! Images on this node: pulled from an OCI registry by the distribution API, checked against
//! their digests, and unpacked once per manifest digest into a cache that every task of that
//! image shares (read-only). Concurrent starts of one image wait on one pull.

use sha2::Digest;
use tidepool_api::{ImageRef, RegistryCredentials};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The registry's base URL: plain HTTP only on loopback, where no one else can listen.
fn base_url(image: &ImageRef) -> String {
    let registry = image.registry.as_str();
    let host = registry.rsplit_once(':').map_or(registry, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { registry });
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    format!("{}://{registry}", if loopback { "http" } else { "https" })
}


/// What a pull presents to its registry once asked.
#[derive(Clone)]
enum Answer {
    /// The login itself, on every request.
    Basic(RegistryCredentials),
    /// A token the registry's token service gave.
    Bearer(String),
}

/// One pull's dealings with its registry: the login it may present, and the answer found to
/// the registry's first 401, kept for the pull's later requests.
struct PullSession<'a> {
    login: Option<&'a RegistryCredentials>,
    answer: std::sync::Mutex<Option<Answer>>,
}

/// What a registry's error document says (`{"errors":[{"code","message"}]}`, as the
/// distribution API writes them), for the task's message; anything else a server answered is
/// not repeated, so a task cannot read through a node's pull what some other service on it says.
fn registry_errors(body: &str) -> String {
    let doc: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let said: Vec<String> = doc["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .take(3)
                .map(|e| {
                    let code: String = e["code"].as_str().unwrap_or_default().chars().filter(|c| c.is_ascii_uppercase() || *c == '_').take(40).collect();
                    let message: String = e["message"].as_str().unwrap_or_default().chars().filter(|c| !c.is_control()).take(120).collect();
                    format!("{code} {message}").trim().to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    if said.is_empty() {
        String::new()
    } else {
        format!(": {}", said.join("; "))
    }
}

/// The `key="value"` parameters of a `WWW-Authenticate` challenge.
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => after.split_once(',').unwrap_or((after, "")),
        };
        out.push((key, value.to_string()));
        rest = next.trim_start().trim_start_matches(',');
    }
    out
}

/// An unpacked image: its root filesystem and what its configuration asks of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// The manifest's digest (`sha256:...`).
    pub digest: String,
    /// The root filesystem, shared by every task of the image.
    pub rootfs: PathBuf,
    /// The image's environment (`PATH=...`).
    pub env: Vec<String>,
    /// Its working directory, if it names one.
    pub workdir: Option<String>,
    /// Pulled by this call (not found in the cache).
    pub fresh: bool,
}

/// The node's image cache.
pub struct ImageStore {
    dir: PathBuf,
    client: reqwest::Client,
    /// One lock per reference and login: a second start of an image waits for the first's
    /// pull, and a project that presents another login (or none) asks the registry itself
    /// rather than being handed what a login it lacks was allowed to pull.
    pulls: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Unpacked>>>>>,
    /// The only registries this node pulls from, when its operator named them.
    allowed: Option<Vec<String>>,
}

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// The largest manifest or configuration read.
const MAX_DOCUMENT_BYTES: usize = 4 << 20;

impl ImageStore {
    /// A cache under `dir` (made owner-only).
    pub fn new(dir: PathBuf, client: reqwest::Client) -> ImageStore {
        ImageStore { dir, client, pulls: std::sync::Mutex::default(), allowed: None }
    }

    /// Pulls only from these registries (`HOST[:PORT]`, as `--allowed-registry` names them):
    /// an image elsewhere fails its task saying so, and nothing is fetched.
    pub fn allowing_only(mut self, registries: &[String]) -> Result<ImageStore, String> {
        let hosts = registries.iter().map(|r| tidepool_api::registry_host(r)).collect::<Result<Vec<_>, _>>()?;
        self.allowed = (!hosts.is_empty()).then_some(hosts);
        Ok(self)
    }

    /// The image of `reference`, pulled (presenting `login` where the registry asks for one)
    /// and unpacked if this node does not have it yet.
    pub async fn ensure(&self, reference: &str, login: Option<&RegistryCredentials>) -> Result<Unpacked, String> {
        if let Some(allowed) = &self.allowed {
            let host = tidepool_api::registry_host(&ImageRef::parse(reference)?.registry)?;
            if !allowed.contains(&host) {
                return Err(format!("image {reference}: this node pulls only from {} (its operator's --allowed-registry), not from {host}", allowed.join(", ")));
            }
        }
        let key = match login {
            Some(l) => format!("{reference}\0{}", sha256_of(format!("{}\0{}", l.username, l.password).as_bytes())),
            None => reference.to_string(),
        };
        let slot = {
            let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
            pulls.entry(key).or_default().clone()
        };
        let mut held = slot.lock().await;
        if let Some(done) = held.as_ref() {
            if done.rootfs.exists() {
                touch(&done.rootfs);
                return Ok(Unpacked { fresh: false, ..done.clone() });
            }
        }
        let session = PullSession { login, answer: std::sync::Mutex::new(None) };
        let unpacked = self.pull(reference, &session).await?;
        *held = Some(unpacked.clone());
        Ok(unpacked)
    }

    /// The cache's directory: one subdirectory per unpacked image.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The images this node holds, as the server is told.
    pub fn cached(&self) -> Vec<tidepool_api::ImageView> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut images: Vec<tidepool_api::ImageView> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().ends_with(".evicted"))
            .filter_map(|e| {
                let reference = std::fs::read_to_string(e.path().join("ready")).ok()?;
                Some(tidepool_api::ImageView {
                    digest: e.file_name().to_string_lossy().replacen('-', ":", 1),
                    reference,
                    bytes: du(&e.path()),
                })
            })
            .collect();
        images.sort_by(|a, b| a.digest.cmp(&b.digest));
        images
    }

    async fn send(&self, url: &str, accept: &str, answer: Option<&Answer>) -> Result<reqwest::Response, String> {
        let mut request = self.client.get(url).header("Accept", accept);
        request = match answer {
            Some(Answer::Basic(login)) => request.basic_auth(&login.username, Some(&login.password)),
            Some(Answer::Bearer(token)) => request.bearer_auth(token),
            None => request,
        };
        request.send().await.map_err(|e| format!("pulling {url}: {e}"))
    }

    /// What to present to a registry that answered 401 with `challenge`: the login itself
    /// (Basic), or a token fetched from the realm it names with the login, if any (Bearer).
    async fn answer(&self, image: &ImageRef, challenge: &str, login: Option<&RegistryCredentials>) -> Result<Answer, String> {
        let registry = &image.registry;
        let (scheme, params) = challenge.trim().split_once(' ').unwrap_or((challenge.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return login
                .map(|l| Answer::Basic(l.clone()))
                .ok_or_else(|| format!("registry {registry} asks for a login: save one with `tidepool registry login {registry} -u USER --password-stdin`"));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(format!("registry {registry} asks for an authentication Tidepool does not speak ({scheme})"));
        }
        let params = challenge_params(params);
        let realm = params.iter().find(|(k, _)| k == "realm").map(|(_, v)| v).ok_or_else(|| format!("registry {registry}: its Bearer challenge names no realm"))?;
        let realm_url = reqwest::Url::parse(realm).map_err(|e| format!("registry {registry}: realm {realm}: {e}"))?;
        let realm_loopback = matches!(realm_url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
        // A login is sent only over TLS, or to the node itself.
        if realm_url.scheme() != "https" && !realm_loopback {
            return Err(format!("registry {registry}: its token service {realm} is not https"));
        }
        let mut request = self.client.get(realm_url).query(&params.iter().filter(|(k, _)| *k != "realm").collect::<Vec<_>>());
        if let Some(l) = login {
            request = request.basic_auth(&l.username, Some(&l.password));
        }
        let resp = request.send().await.map_err(|e| format!("registry {registry}: token service {realm}: {e}"))?;
        if !resp.status().is_success() {
            let hint = if login.is_none() { " (save a login with `tidepool registry login`)" } else { "" };
            return Err(format!("registry {registry}: token service {realm} answered {}{hint}", resp.status()));
        }
        let body: serde_json::Value = resp.json().await.map_err(|e| format!("registry {registry}: token service {realm}: {e}"))?;
        body["token"].as_str().or(body["access_token"].as_str()).map(|t| Answer::Bearer(t.to_string())).ok_or_else(|| format!("registry {registry}: token service {realm} gave no token"))
    }

    async fn get(&self, session: &PullSession<'_>, image: &ImageRef, what: &str, accept: &str) -> Result<reqwest::Response, String> {
        let url = format!("{}/v2/{}/{what}", base_url(image), image.repository);
        let known = session.answer.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut resp = self.send(&url, accept, known.as_ref()).await?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED && known.is_none() {
            let challenge = resp.headers().get(reqwest::header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let answer = self.answer(image, &challenge, session.login).await?;
            resp = self.send(&url, accept, Some(&answer)).await?;
            *session.answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(answer);
        }
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(format!("pulling {url}: the registry answered {status}{}", registry_errors(&body)));
        }
        Ok(resp)
    }

    async fn document(&self, session: &PullSession<'_>, image: &ImageRef, what: &str, accept: &str) -> Result<(Vec<u8>, String), String> {
        let resp = self.get(session, image, what, accept).await?;
        let media = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let bytes = resp.bytes().await.map_err(|e| format!("pulling {what}: {e}"))?;
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("pulling {what}: over {MAX_DOCUMENT_BYTES} bytes"));
        }
        Ok((bytes.to_vec(), media))
    }

    async fn pull(&self, reference: &str, session: &PullSession<'_>) -> Result<Unpacked, String> {
        let image = ImageRef::parse(reference)?;
        let (mut manifest, mut media) = self.document(session, &image, &format!("manifests/{}", image.reference), MANIFEST_TYPES).await?;
        let mut digest = sha256_of(&manifest);
        if image.reference.starts_with("sha256:") && digest != image.reference {
            return Err(format!("image {reference}: the registry's manifest has digest {digest}"));
        }
        let mut doc: serde_json::Value = serde_json::from_slice(&manifest).map_err(|e| format!("image {reference}: manifest: {e}"))?;
        let media_of = |doc: &serde_json::Value, header: &str| doc["mediaType"].as_str().unwrap_or(header).to_string();
        if media_of(&doc, &media).contains("index") || media_of(&doc, &media).contains("manifest.list") {
            let arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            };
            let chosen = doc["manifests"]
                .as_array()
                .and_then(|list| list.iter().find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch))
                .and_then(|m| m["digest"].as_str())
                .ok_or_else(|| format!("image {reference}: no linux/{arch} image in its index"))?
                .to_string();
            (manifest, media) = self.document(session, &image, &format!("manifests/{chosen}"), MANIFEST_TYPES).await?;
            digest = sha256_of(&manifest);
            if digest != chosen {
                return Err(format!("image {reference}: manifest {chosen} arrived with digest {digest}"));
            }
            doc = serde_json::from_slice(&manifest).map_err(|e| format!("image {reference}: manifest: {e}"))?;
        }
        let _ = media;
        let home = self.dir.join(digest.replacen(':', "-", 1));
        let ready = home.join("ready");
        let fresh = !ready.exists();
        if fresh {
            let config_digest = doc["config"]["digest"].as_str().ok_or_else(|| format!("image {reference}: its manifest names no config"))?;
            let (config, _) = self.document(session, &image, &format!("blobs/{config_digest}"), "*/*").await?;
            if sha256_of(&config) != config_digest {
                return Err(format!("image {reference}: config {config_digest} arrived altered"));
            }
            let staging = self.dir.join(format!(".{}.{}", digest.replacen(':', "-", 1), std::process::id()));
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::create_dir_all(staging.join("rootfs")).map_err(|e| format!("image {reference}: {e}"))?;
            // The container's "/": every identity must enter it (the agent's umask is 077).
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(staging.join("rootfs"), std::fs::Permissions::from_mode(0o755)).map_err(|e| format!("image {reference}: {e}"))?;
            }
            std::fs::write(staging.join("config.json"), &config).map_err(|e| format!("image {reference}: {e}"))?;
            let layers = doc["layers"].as_array().cloned().unwrap_or_default();
            for layer in &layers {
                let layer_digest = layer["digest"].as_str().ok_or_else(|| format!("image {reference}: a layer without a digest"))?;
                let media = layer["mediaType"].as_str().unwrap_or_default();
                let resp = self.get(session, &image, &format!("blobs/{layer_digest}"), "*/*").await?;
                let bytes = resp.bytes().await.map_err(|e| format!("image {reference}: layer {layer_digest}: {e}"))?;
                if sha256_of(&bytes) != layer_digest {
                    return Err(format!("image {reference}: layer {layer_digest} arrived altered"));
                }
                let rootfs = staging.join("rootfs");
                let gzip = media.contains("gzip") || bytes.starts_with(&[0x1f, 0x8b]);
                let applied = tokio::task::spawn_blocking(move || apply_layer(&bytes, gzip, &rootfs))
                    .await
                    .map_err(|e| e.to_string())?;
                applied.map_err(|e| format!("image {reference}: layer {layer_digest}: {e}"))?;
            }
            std::fs::write(staging.join("ready"), reference).map_err(|e| format!("image {reference}: {e}"))?;
            match std::fs::rename(&staging, &home) {
                Ok(()) => {}
                // Another agent of this node unpacked it first: its copy serves.
                Err(_) if ready.exists() => {
                    let _ = std::fs::remove_dir_all(&staging);
                }
                Err(e) => return Err(format!("image {reference}: {e}")),
            }
            tracing::info!(image = reference, digest = %digest, layers = layers.len(), "image pulled and unpacked");
        }
        let config: serde_json::Value = std::fs::read(home.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let env = config["config"]["Env"].as_array().map(|e| e.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default();
        let workdir = config["config"]["WorkingDir"].as_str().filter(|w| !w.is_empty()).map(str::to_string);
        touch(&home.join("rootfs"));
        Ok(Unpacked { digest, rootfs: home.join("rootfs"), env, workdir, fresh })
    }
}

/// An OCI runtime installed on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runtime {
    /// Its executable.
    pub path: PathBuf,
    /// `crun` or `runc`: crun where the name says so, else runc's command line is assumed.
    pub name: &'static str,
}

impl Runtime {
    fn at(path: PathBuf) -> Runtime {
        let crun = path.file_name().is_some_and(|n| n.to_string_lossy().contains("crun"));
        Runtime { path, name: if crun { "crun" } else { "runc" } }
    }
}

/// Where a runtime called `name` is installed.
fn installed(name: &str) -> Option<PathBuf> {
    ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"].into_iter().map(|dir| Path::new(dir).join(name)).find(|p| p.exists())
}

/// The OCI runtime this node runs bundles with: `TIDEPOOL_OCI_RUNTIME` (`crun`, `runc` or a
/// path) where set, else crun (a C runtime, several times quicker to start a container) and
/// runc where crun is not installed.
pub fn runtime() -> Option<Runtime> {
    match std::env::var("TIDEPOOL_OCI_RUNTIME") {
        Ok(chosen) if chosen.contains('/') => Some(Runtime::at(PathBuf::from(chosen))).filter(|r| r.path.exists()),
        Ok(chosen) if !chosen.is_empty() => installed(&chosen).map(Runtime::at),
        _ => installed("crun").or_else(|| installed("runc")).map(Runtime::at),
    }
}

/// runc, where installed: what a node falls back to where crun cannot run.
pub fn runc() -> Option<Runtime> {
    installed("runc").map(Runtime::at)
}

/// The runtime this node runs OCI bundles with, when one is installed and the agent is root.
pub fn offered_runtime() -> Option<Runtime> {
    // SAFETY: geteuid only reads this process's credentials.
    let root = unsafe { libc::geteuid() } == 0;
    runtime().filter(|_| root)
}

/// How recently an image must have been handed to a task to be kept whatever the cache's size:
/// a task given it may not have written its bundle yet.
const RECENT: std::time::Duration = std::time::Duration::from_secs(300);

/// How far the image cache may grow: a size of its own, and watermarks of its disk's use (as
/// the kubelet's image garbage collection: above `high_percent` used, images go until use is
/// at most `low_percent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    /// The most bytes of unpacked images kept, if bounded.
    pub max_bytes: Option<u64>,
    /// Percent of the disk used above which images are removed.
    pub high_percent: u8,
    /// Percent of the disk used that removal stops at.
    pub low_percent: u8,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits { max_bytes: None, high_percent: 85, low_percent: 80 }
    }
}

/// (bytes used, bytes in all) of the file system holding `path`, counting what only root may
/// still write as used.
pub fn disk_use(path: &Path) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills a struct we own from a NUL-terminated path.
    let mut fs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut fs) } != 0 {
        return None;
    }
    let block = fs.f_frsize;
    let total = fs.f_blocks * block;
    Some((total.saturating_sub(fs.f_bavail * block), total))
}

impl ImageStore {
    /// Shrinks the cache to `limits`, least recently used first, never removing an image a
    /// task's bundle names (`run_dir`'s attempts without a result) or one handed out within
    /// `RECENT`; `disk` says the cache disk's (used, total) bytes now. The digests removed.
    pub fn evict(&self, limits: CacheLimits, run_dir: &Path, disk: impl Fn() -> Option<(u64, u64)>) -> Vec<String> {
        let percent_used = || disk().filter(|(_, total)| *total > 0).map_or(0, |(used, total)| used.saturating_mul(100) / total);
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut images: Vec<(std::time::SystemTime, PathBuf, u64)> = entries
            .flatten()
            .filter(|e| e.path().join("ready").exists())
            .map(|e| {
                let used = std::fs::metadata(e.path().join("used")).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                (used, e.path(), du(&e.path()))
            })
            .collect();
        let max_bytes = limits.max_bytes.unwrap_or(u64::MAX);
        let mut total: u64 = images.iter().map(|(_, _, bytes)| bytes).sum();
        let disk_full = percent_used() > u64::from(limits.high_percent);
        if total <= max_bytes && !disk_full {
            return Vec::new();
        }
        let satisfied = |total: u64| total <= max_bytes && (!disk_full || percent_used() <= u64::from(limits.low_percent));
        let in_use = roots_in_use(run_dir);
        images.sort();
        let now = std::time::SystemTime::now();
        let mut removed = Vec::new();
        for (used, dir, bytes) in images {
            if satisfied(total) {
                break;
            }
            let recent = now.duration_since(used).is_ok_and(|age| age < RECENT) || used > now;
            if recent || in_use.contains(&dir.join("rootfs")) {
                continue;
            }
            // Out of the way first, so no task finds it half removed.
            let doomed = dir.with_extension("evicted");
            if std::fs::rename(&dir, &doomed).is_ok() {
                let _ = std::fs::remove_dir_all(&doomed);
                total = total.saturating_sub(bytes);
                removed.push(dir.file_name().map(|n| n.to_string_lossy().replacen('-', ":", 1)).unwrap_or_default());
            }
        }
        if !removed.is_empty() {
            let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
            pulls.retain(|_, slot| slot.try_lock().map_or(true, |held| held.as_ref().is_none_or(|u| !removed.contains(&u.digest))));
        }
        removed
    }
}

/// The root filesystems the bundles of unfinished attempts under `run_dir` name.
fn roots_in_use(run_dir: &Path) -> std::collections::HashSet<PathBuf> {
    let Ok(entries) = std::fs::read_dir(run_dir) else { return Default::default() };
    entries
        .flatten()
        .filter(|e| !e.path().join(crate::rundir::RESULT_FILE).exists())
        .filter_map(|e| {
            let config: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path().join("config.json")).ok()?).ok()?;
            Some(PathBuf::from(config["root"]["path"].as_str()?))
        })
        .collect()
}

/// Marks an image (by its rootfs) as just handed to a task.
fn touch(rootfs: &Path) {
    if let Some(home) = rootfs.parent() {
        let _ = std::fs::write(home.join("used"), b"");
    }
}

fn sha256_of(bytes: &[u8]) -> String {
    let hash = sha2::Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn du(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).map(|entries| entries.flatten().map(|e| du(&e.path())).sum()).unwrap_or(0)
}

/// Applies one layer (a tar, gzipped or not) onto `rootfs`: its whiteouts (`.wh.NAME`) remove
/// what lower layers put there, an opaque marker (`.wh..wh..opq`) empties its directory, and
/// no entry lands outside `rootfs` (the tar reader refuses `..` and paths through links).
pub fn apply_layer(bytes: &[u8], gzip: bool, rootfs: &Path) -> Result<(), String> {
    let reader: Box<dyn Read> = if gzip { Box::new(flate2::read::GzDecoder::new(bytes)) } else { Box::new(bytes) };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(format!("entry {} climbs out of the image", path.display()));
        }
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == ".wh..wh..opq" {
            let dir = rootfs.join(&parent);
            if let Ok(children) = std::fs::read_dir(&dir) {
                for child in children.flatten() {
                    remove_any(&child.path());
                }
            }
            continue;
        }
        // A device node in an image would hand its tasks the node's hardware.
        let kind = entry.header().entry_type();
        if kind.is_block_special() || kind.is_character_special() || kind.is_fifo() {
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            remove_any(&rootfs.join(&parent).join(hidden));
            continue;
        }
        // A file replacing a directory of a lower layer, or the other way round.
        let target = rootfs.join(&path);
        if let Ok(meta) = std::fs::symlink_metadata(&target) {
            if meta.is_dir() != entry.header().entry_type().is_dir() {
                remove_any(&target);
            }
        }
        entry.unpack_in(rootfs).map_err(|e| format!("{}: {e} ({})", path.display(), std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default()))?;
    }
    Ok(())
}

fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_registry_error_document_is_repeated_to_the_task() {
        let registry = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"1"}}]}"#;
        assert_eq!(registry_errors(registry), ": MANIFEST_UNKNOWN manifest unknown");
        assert_eq!(registry_errors("root:x:0:0:root:/root:/bin/bash"), "", "another service's answer is not repeated");
        assert_eq!(registry_errors(r#"{"secret":"value"}"#), "");
    }

    #[test]
    fn a_bearer_challenge_is_read_as_registries_write_it() {
        let params = challenge_params(r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#);
        assert_eq!(
            params,
            [
                ("realm".to_string(), "https://auth.docker.io/token".to_string()),
                ("service".into(), "registry.docker.io".into()),
                ("scope".into(), "repository:library/busybox:pull,push".into())
            ]
        );
        assert_eq!(challenge_params("realm=plain, service=x"), [("realm".to_string(), "plain".to_string()), ("service".into(), "x".into())]);
        assert!(challenge_params("").is_empty());
    }

    #[test]
    fn only_loopback_registries_are_spoken_to_in_plain_http() {
        assert_eq!(base_url(&ImageRef::parse("127.0.0.1:5000/busybox:1").unwrap()), "http://127.0.0.1:5000");
        assert_eq!(base_url(&ImageRef::parse("localhost:5000/busybox").unwrap()), "http://localhost:5000");
        assert_eq!(base_url(&ImageRef::parse("busybox").unwrap()), "https://registry-1.docker.io");
        assert_eq!(base_url(&ImageRef::parse("127.0.0.1.example.com/x").unwrap()), "https://127.0.0.1.example.com");
    }

    #[test]
    fn the_cache_sheds_least_recently_used_images_but_never_one_in_use() {
        let dir = std::env::temp_dir().join(format!("tidepool-evict-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (cache, run) = (dir.join("images"), dir.join("run"));
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for (i, name) in ["sha256-a", "sha256-b", "sha256-c"].iter().enumerate() {
            let home = cache.join(name);
            std::fs::create_dir_all(home.join("rootfs")).unwrap();
            std::fs::write(home.join("rootfs/blob"), vec![0u8; 1000]).unwrap();
            std::fs::write(home.join("ready"), format!("img-{name}")).unwrap();
            let used = std::fs::File::create(home.join("used")).unwrap();
            used.set_modified(old + std::time::Duration::from_secs(i as u64 * 60)).unwrap();
        }
        // A running attempt's bundle names the oldest image.
        std::fs::create_dir_all(run.join("1.0.1")).unwrap();
        let root = cache.join("sha256-a/rootfs");
        std::fs::write(run.join("1.0.1/config.json"), serde_json::json!({"root": {"path": root}}).to_string()).unwrap();
        let store = ImageStore::new(cache.clone(), reqwest::Client::new());
        let guarded = ImageStore::new(cache.clone(), reqwest::Client::new()).allowing_only(&["127.0.0.1:5000".into()]).unwrap();
        let refused = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(guarded.ensure("evil.example:443/tools:1", None));
        assert!(refused.unwrap_err().contains("pulls only from 127.0.0.1:5000"), "refused before any request");
        let sized = |max_bytes| CacheLimits { max_bytes: Some(max_bytes), ..CacheLimits::default() };
        let roomy = || Some((10, 100));
        assert!(store.evict(sized(1_000_000), &run, roomy).is_empty(), "under its size, nothing goes");
        let removed = store.evict(sized(2500), &run, roomy);
        assert_eq!(removed, ["sha256:b"], "the least recently used one not in use");
        assert!(cache.join("sha256-a").exists() && cache.join("sha256-c").exists());
        assert_eq!(store.cached().len(), 2);
        // Under no size limit, a disk above its high watermark sheds images until it is at its
        // low one; the one in use stays whatever the disk.
        let home = cache.join("sha256-d");
        std::fs::create_dir_all(home.join("rootfs")).unwrap();
        std::fs::write(home.join("ready"), "img-d").unwrap();
        let filling = |used: u64| move || Some((used, 100));
        assert!(store.evict(CacheLimits::default(), &run, filling(85)).is_empty(), "at the high watermark, nothing goes");
        let disk = std::cell::Cell::new(90u64);
        let removed = store.evict(CacheLimits::default(), &run, || {
            let used = disk.get();
            disk.set(used - 5);
            Some((used, 100))
        });
        assert_eq!(removed.len(), 1, "one image freed the disk to its low watermark: {removed:?}");
        assert!(store.evict(CacheLimits::default(), &run, filling(99)).len() == 1 && cache.join("sha256-a").exists(), "the image in use stays");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn layers_stack_with_whiteouts_and_never_write_outside() {
        let dir = std::env::temp_dir().join(format!("tidepool-layers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let layer = |files: &[(&str, &str)]| -> Vec<u8> {
            let mut builder = tar::Builder::new(Vec::new());
            for (path, body) in files {
                let mut header = tar::Header::new_gnu();
                header.set_size(body.len() as u64);
                header.set_mode(0o644);
                header.set_uid(0);
                header.set_gid(0);
                header.set_mtime(0);
                header.set_cksum();
                builder.append_data(&mut header, path, body.as_bytes()).unwrap();
            }
            builder.into_inner().unwrap()
        };
        apply_layer(&layer(&[("etc/a", "1"), ("etc/b", "2"), ("opt/x/y", "3")]), false, &dir).unwrap();
        apply_layer(&layer(&[("etc/.wh.a", ""), ("opt/x/.wh..wh..opq", ""), ("opt/x/z", "4")]), false, &dir).unwrap();
        assert!(!dir.join("etc/a").exists() && dir.join("etc/b").exists());
        assert!(!dir.join("opt/x/y").exists() && dir.join("opt/x/z").exists());
        // A raw header naming ../escape is refused before anything is written.
        let mut evil = layer(&[("placeholder", "x")]);
        evil[..11].copy_from_slice(b"../escape\0\0");
        let mut header = tar::Header::from_byte_slice(&evil[..512]).clone();
        header.set_cksum();
        evil[..512].copy_from_slice(header.as_bytes());
        assert!(apply_layer(&evil, false, &dir.join("etc")).is_err());
        assert!(!dir.join("escape").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
