//! Watching the config file and every `downstreams_file` for changes, so that saving one
//! reloads the daemon.
//!
//! The watch is on each file's *directory*, not the file: editors and config managers save
//! by writing a new file and renaming it over the old one, which replaces the inode a
//! file watch would follow; a directory watch sees the rename. Events are filtered to the
//! watched names and debounced ([`DEBOUNCE`]), so one save (often several events) makes one
//! reload, well within the contract's 2 s. The `notify` crate (inotify on Linux) does the
//! watching on a thread of its own; this module only filters and forwards.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

/// How long after the last event of a burst the reload is asked for.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// The set of files to watch, shared with the notify thread.
#[derive(Default)]
struct Watched {
    files: HashSet<PathBuf>,
    dirs: HashSet<PathBuf>,
}

/// A running watch; dropping it stops watching.
pub struct FileWatch {
    watcher: RecommendedWatcher,
    watched: Arc<Mutex<Watched>>,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch").finish_non_exhaustive()
    }
}

/// A file's absolute form (relative names are taken from the current directory), so that
/// events, which carry absolute paths, can be compared with it.
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

impl FileWatch {
    /// Starts watching `files`; every change sends the changed file's path on `changed`
    /// (at most once per [`DEBOUNCE`] burst; the receiver reloads).
    pub fn start(
        files: &[PathBuf],
        changed: UnboundedSender<PathBuf>,
    ) -> notify::Result<FileWatch> {
        let watched = Arc::new(Mutex::new(Watched::default()));
        let pending: Arc<Mutex<Option<PathBuf>>> = Arc::new(Mutex::new(None));
        let (w, p) = (Arc::clone(&watched), Arc::clone(&pending));
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            if matches!(ev.kind, EventKind::Access(_)) {
                return;
            }
            let hit = {
                let w = w.lock().unwrap_or_else(PoisonError::into_inner);
                ev.paths.iter().find(|x| w.files.contains(*x)).cloned()
            };
            let Some(path) = hit else { return };
            // Debounce: the first event of a burst arms a timer thread; later ones only
            // replace the path it will report.
            let first = p
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .replace(path)
                .is_none();
            if first {
                let (p, tx) = (Arc::clone(&p), changed.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(DEBOUNCE);
                    if let Some(path) = p.lock().unwrap_or_else(PoisonError::into_inner).take() {
                        let _ = tx.send(path);
                    }
                });
            }
        })?;
        let mut fw = FileWatch { watcher, watched };
        fw.set(files)?;
        Ok(fw)
    }

    /// Watches exactly `files` from now on (after a reload changed the list).
    pub fn set(&mut self, files: &[PathBuf]) -> notify::Result<()> {
        let files: HashSet<PathBuf> = files.iter().map(|f| absolute(f)).collect();
        let dirs: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_owned))
            .collect();
        let mut w = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        for d in w.dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(d);
        }
        for d in dirs.difference(&w.dirs) {
            self.watcher.watch(d, RecursiveMode::NonRecursive)?;
        }
        w.files = files;
        w.dirs = dirs;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::unbounded_channel;

    async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<PathBuf>) -> Option<PathBuf> {
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn writes_and_renames_over_are_seen_once_each() {
        let dir = tempfile_dir();
        let file = dir.join("udp-fanout.yaml");
        let other = dir.join("unwatched.txt");
        std::fs::write(&file, "a").unwrap();
        let (tx, mut rx) = unbounded_channel();
        let _w = FileWatch::start(std::slice::from_ref(&file), tx).unwrap();
        // In-place write.
        std::fs::write(&file, "b").unwrap();
        std::fs::write(&file, "c").unwrap();
        assert_eq!(next(&mut rx).await, Some(absolute(&file)));
        // Editor style: write a temporary file, rename it over.
        let tmp = dir.join(".udp-fanout.yaml.swp");
        std::fs::write(&tmp, "d").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert_eq!(next(&mut rx).await, Some(absolute(&file)));
        // Other files in the directory do not count.
        std::fs::write(&other, "x").unwrap();
        assert_eq!(next(&mut rx).await, None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fresh directory under the system's temporary directory.
    fn tempfile_dir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("uf-watch-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
