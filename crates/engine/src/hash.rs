//! Content hashing: SHA-256 of files, directories and canonical JSON, and the stat cache.
//!
//! A file hashes as the SHA-256 of its bytes, streamed. A directory hashes as a Merkle tree: the
//! SHA-256 of a header line and one line per entry in sorted relative-path order
//! (`F <mode> <hash> <path>` for a file, `D <path>` for a subdirectory, `L <target-hash> <path>`
//! for a symlink, which is not followed). Values (params, key ingredients) hash as
//! canonical JSON: sorted keys, no whitespace. The [`StatCache`] remembers the hash of a file by
//! (size, mtime, ctime, inode) so unchanged large files are not read again.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest, shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex digits, for humans.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    pub fn parse(text: &str) -> Option<Digest> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Digest::parse(&text)
            .ok_or_else(|| serde::de::Error::custom("expected a 64-digit hex SHA-256"))
    }
}

/// Buffer size for streaming: large enough that syscalls do not dominate.
const CHUNK: usize = 1 << 20;

thread_local! {
    /// One read buffer per thread: hashing many small files should not allocate each time.
    static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; CHUNK]);
}

/// Streams a reader through SHA-256, returning the digest and the byte count.
pub fn hash_reader(reader: impl Read) -> io::Result<(Digest, u64)> {
    BUFFER.with(|buf| hash_with(reader, &mut buf.borrow_mut()))
}

fn hash_with(mut reader: impl Read, buf: &mut [u8]) -> io::Result<(Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((Digest(hasher.finalize().into()), total))
}

pub fn hash_file(path: &Path) -> io::Result<(Digest, u64)> {
    hash_reader(File::open(path)?)
}

/// The canonical JSON text of a value: object keys sorted, no whitespace.
pub fn canonical_json(value: &serde_json::Value) -> String {
    // serde_json's Map is a BTreeMap (the `preserve_order` feature is off), so keys are sorted.
    serde_json::to_string(value).expect("a JSON value always serializes")
}

/// One entry of a directory tree: a file, a subdirectory or a symlink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    pub path: String,
    /// The content hash of a file; of the target text for a symlink; zero for a directory.
    pub hash: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
    /// The target of a symlink (not followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// Checks that every path of a directory listing stays inside the directory: relative, no `.`
/// or `..` components, and symlink targets that resolve inside it. A listing from a cache entry
/// is data from elsewhere: it must not write outside the output it describes.
pub fn check_tree(tree: &[TreeEntry]) -> Result<(), String> {
    fn depth_ok(parts: impl Iterator<Item = String>) -> bool {
        let mut depth: i64 = 0;
        for part in parts {
            match part.as_str() {
                "" | "." => {}
                ".." => depth -= 1,
                _ => depth += 1,
            }
            if depth < 0 {
                return false;
            }
        }
        true
    }
    for entry in tree {
        let clean = !entry.path.is_empty()
            && !entry.path.starts_with('/')
            && entry
                .path
                .split('/')
                .all(|p| !p.is_empty() && p != "." && p != "..");
        if !clean {
            return Err(format!("tree path `{}` leaves its directory", entry.path));
        }
        if let Some(target) = &entry.link {
            let parent = entry.path.rsplit_once('/').map_or("", |(p, _)| p);
            let parts = parent
                .split('/')
                .chain(target.split('/'))
                .map(str::to_string);
            if target.starts_with('/') || !depth_ok(parts) {
                return Err(format!(
                    "symlink `{}` points outside its directory (`{target}`)",
                    entry.path
                ));
            }
        }
    }
    Ok(())
}

impl TreeEntry {
    /// Whether the entry's content lives in a blob.
    pub fn is_file(&self) -> bool {
        !self.dir && self.link.is_none()
    }
}

/// The hash of a file or directory on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathHash {
    pub hash: Digest,
    /// Total bytes (all files, for a directory).
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
    /// For a directory: its files, sorted by relative path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<Vec<TreeEntry>>,
}

fn is_executable(meta: &std::fs::Metadata) -> bool {
    meta.mode() & 0o111 != 0
}

/// The Merkle hash of a directory listing (SPEC.md, "Keys").
pub fn tree_hash(entries: &[TreeEntry]) -> Digest {
    let mut hasher = Sha256::new();
    hasher.update(b"edgebuild-tree-v1\n");
    for entry in entries {
        let line = if entry.dir {
            format!("D {}\n", entry.path)
        } else if entry.link.is_some() {
            format!("L {} {}\n", entry.hash, entry.path)
        } else {
            let mode = if entry.executable { "755" } else { "644" };
            format!("F {mode} {} {}\n", entry.hash, entry.path)
        };
        hasher.update(line.as_bytes());
    }
    Digest(hasher.finalize().into())
}

/// Stat fingerprint of a file: if all of these are unchanged, so is its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            inode: meta.ino(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StatEntry {
    stamp: Stamp,
    hash: Digest,
}

/// A file modified less than this long before it was hashed may be modified again within the
/// same timestamp tick without its stamp changing ("racy" entries, as git calls them); such a
/// hash is used once but not remembered.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Remembers file hashes by stat fingerprint, keyed by workspace-relative path.
#[derive(Debug, Default)]
pub struct StatCache {
    entries: Mutex<std::collections::HashMap<String, StatEntry>>,
    dirty: std::sync::atomic::AtomicBool,
    /// For commands that run nothing (`plan`): each path's result, so it is looked at once.
    memo: Option<Mutex<std::collections::HashMap<String, MemoizedPath>>>,
}

/// A remembered [`StatCache::path`] result (`io::Error` is not `Clone`).
type MemoizedPath = Result<PathHash, (io::ErrorKind, String)>;

impl StatCache {
    /// Loads a stat cache file; a missing or unreadable one is an empty cache.
    pub fn load(path: &Path) -> StatCache {
        let entries = std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        StatCache {
            entries: Mutex::new(entries),
            dirty: Default::default(),
            memo: None,
        }
    }

    /// Remembers every [`StatCache::path`] result for the rest of the process. Only for
    /// commands during which nothing writes to the workspace.
    pub fn memoize(&mut self) {
        self.memo = Some(Mutex::default());
    }

    pub fn is_memoized(&self) -> bool {
        self.memo.is_some()
    }

    /// Writes the cache atomically, if anything changed.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        if !self.dirty.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let entries = self.entries.lock().expect("stat cache lock poisoned");
        let bytes = serde_json::to_vec(&*entries).map_err(io::Error::other)?;
        crate::files::write_atomic(path, &bytes)
    }

    /// The hash of one regular file, from the cache when its stamp is unchanged.
    pub fn file(&self, root: &Path, rel: &str) -> io::Result<(Digest, std::fs::Metadata)> {
        let full = root.join(rel);
        let meta = std::fs::metadata(&full)?;
        self.file_with(&full, rel, meta)
    }

    /// [`StatCache::file`] for a file whose metadata the caller already has.
    fn file_with(
        &self,
        full: &Path,
        rel: &str,
        meta: std::fs::Metadata,
    ) -> io::Result<(Digest, std::fs::Metadata)> {
        let stamp = Stamp::of(&meta);
        if let Some(entry) = self
            .entries
            .lock()
            .expect("stat cache lock poisoned")
            .get(rel)
            && entry.stamp == stamp
        {
            return Ok((entry.hash, meta));
        }
        let (hash, _) = hash_file(full)?;
        // The later of mtime and ctime: `cp -p` or `touch -r` set an old mtime on a new file.
        let changed_ns = stamp.mtime_ns.max(stamp.ctime_ns);
        let now_ns = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let racy = now_ns - changed_ns < RACY_WINDOW.as_nanos() as i128;
        let mut entries = self.entries.lock().expect("stat cache lock poisoned");
        if racy {
            entries.remove(rel);
        } else {
            entries.insert(rel.to_string(), StatEntry { stamp, hash });
        }
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok((hash, meta))
    }

    /// The hash of a file or directory at workspace-relative `rel`.
    pub fn path(&self, root: &Path, rel: &str) -> io::Result<PathHash> {
        let Some(memo) = &self.memo else {
            return self.path_uncached(root, rel);
        };
        if let Some(known) = memo.lock().expect("stat memo poisoned").get(rel) {
            return known
                .clone()
                .map_err(|(kind, message)| io::Error::new(kind, message));
        }
        let result = self.path_uncached(root, rel);
        let kept = match &result {
            Ok(hash) => Ok(hash.clone()),
            Err(e) => Err((e.kind(), e.to_string())),
        };
        memo.lock()
            .expect("stat memo poisoned")
            .insert(rel.to_string(), kept);
        result
    }

    fn path_uncached(&self, root: &Path, rel: &str) -> io::Result<PathHash> {
        let full = root.join(rel);
        let meta = std::fs::metadata(&full)?;
        if !meta.is_dir() {
            let (hash, meta) = self.file_with(&full, rel, meta)?;
            return Ok(PathHash {
                hash,
                size: meta.len(),
                executable: is_executable(&meta),
                tree: None,
            });
        }
        let mut tree = Vec::new();
        for entry in walkdir::WalkDir::new(&full)
            .sort_by_file_name()
            .min_depth(1)
        {
            let entry = entry.map_err(io::Error::other)?;
            let inner = entry
                .path()
                .strip_prefix(&full)
                .expect("walkdir yields paths under its root")
                .to_string_lossy()
                .into_owned();
            let kind = entry.file_type();
            if kind.is_dir() {
                tree.push(TreeEntry {
                    path: inner,
                    hash: Digest([0; 32]),
                    size: 0,
                    executable: false,
                    dir: true,
                    link: None,
                });
            } else if kind.is_symlink() {
                let target = std::fs::read_link(entry.path())?
                    .to_string_lossy()
                    .into_owned();
                tree.push(TreeEntry {
                    path: inner,
                    hash: Digest::of_bytes(target.as_bytes()),
                    size: 0,
                    executable: false,
                    dir: false,
                    link: Some(target),
                });
            } else if kind.is_file() {
                let (hash, meta) = self.file(root, &format!("{rel}/{inner}"))?;
                tree.push(TreeEntry {
                    path: inner,
                    hash,
                    size: meta.len(),
                    executable: is_executable(&meta),
                    dir: false,
                    link: None,
                });
            } else {
                return Err(io::Error::other(format!(
                    "{rel}/{inner} is neither a file, a directory nor a symlink"
                )));
            }
        }
        tree.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(PathHash {
            hash: tree_hash(&tree),
            size: tree.iter().map(|e| e.size).sum(),
            executable: false,
            tree: Some(tree),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(path: &str, link: Option<&str>) -> TreeEntry {
        TreeEntry {
            path: path.into(),
            hash: Digest([0; 32]),
            size: 0,
            executable: false,
            dir: false,
            link: link.map(str::to_string),
        }
    }

    #[test]
    fn tree_paths_stay_inside_their_directory() {
        assert!(check_tree(&[entry("a/b.txt", None), entry("a/l", Some("../c"))]).is_ok());
        for bad in ["../x", "/etc/passwd", "a/../../b", "a//b", "./a", ""] {
            assert!(check_tree(&[entry(bad, None)]).is_err(), "{bad}");
        }
        for target in ["../../x", "/etc", "../a/../../b"] {
            assert!(
                check_tree(&[entry("a/l", Some(target))]).is_err(),
                "{target}"
            );
        }
    }

    #[test]
    fn file_hash_matches_known_vector() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("abc"), b"abc").unwrap();
        let (digest, size) = hash_file(&dir.path().join("abc")).unwrap();
        assert_eq!(
            digest.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(size, 3);
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": {"d": 2, "c": 3}}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"c":3,"d":2},"b":1}"#);
    }

    #[test]
    fn stat_cache_notices_same_size_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StatCache::default();
        std::fs::write(dir.path().join("f"), b"one").unwrap();
        let first = cache.file(dir.path(), "f").unwrap().0;
        std::fs::write(dir.path().join("f"), b"two").unwrap();
        let second = cache.file(dir.path(), "f").unwrap().0;
        assert_ne!(first, second);
    }

    proptest! {
        #[test]
        fn directory_hash_ignores_creation_order(
            files in proptest::collection::btree_map("[a-z]{1,6}(/[a-z]{1,6})?", proptest::collection::vec(any::<u8>(), 0..64), 1..8)
        ) {
            // Skip sets where a file name is also a directory prefix of another.
            let names: Vec<&String> = files.keys().collect();
            prop_assume!(!names.iter().any(|a| names.iter().any(|b| b.starts_with(&format!("{a}/")))));
            let hash_in_order = |reverse: bool| {
                let dir = tempfile::tempdir().unwrap();
                let mut items: Vec<_> = files.iter().collect();
                if reverse { items.reverse(); }
                for (name, content) in items {
                    let path = dir.path().join("d").join(name);
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(path, content).unwrap();
                }
                StatCache::default().path(dir.path(), "d").unwrap().hash
            };
            prop_assert_eq!(hash_in_order(false), hash_in_order(true));
        }
    }
}
