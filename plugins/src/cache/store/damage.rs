//! What the disk tier does with a damaged file. A cache is disposable, so damage is never a
//! reason to stop: the file is moved aside (only the newest damaged file is kept, so a crash
//! loop cannot fill the disk) and the tier starts over empty. redb reports most damage as
//! errors but may panic on pages it cannot make sense of; `quietly` turns such a panic into an
//! error without the panic hook's stderr report, since the panic is handled, not a crash.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{SystemTime, UNIX_EPOCH};

/// Marks the name of a damaged file set aside: `<file name><SET_ASIDE>-<unix seconds>`.
const SET_ASIDE: &str = ".damaged";

thread_local! {
    /// Whether a panic on this thread is being caught by `quietly`.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// What the hook saw of the last quiet panic (its message and where it was raised).
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Runs `work`; a panic inside it comes back as `Err` with its message and location, and is
/// not printed. The caller must not use what `work` touched again (hence `AssertUnwindSafe`:
/// the disk tier drops the database a panic leaves behind).
pub(super) fn quietly<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let at = info
                    .location()
                    .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
                let text = format!("panic{at}: {}", message(info.payload()));
                CAUGHT.with(|c| *c.borrow_mut() = Some(text));
            } else {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let outcome = catch_unwind(AssertUnwindSafe(work));
    QUIET.with(|q| q.set(was));
    outcome.map_err(|payload| {
        CAUGHT
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| format!("panic: {}", message(payload.as_ref())))
    })
}

fn message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Moves the damaged `file` aside as `<file>.damaged-<unix seconds>`, first removing any file
/// set aside before; returns the new name.
pub(super) fn set_aside(file: &Path) -> std::io::Result<PathBuf> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!("{name}{SET_ASIDE}-");
    if let Some(dir) = file.parent() {
        for old in std::fs::read_dir(dir)?.flatten() {
            if old.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(old.path());
            }
        }
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = file.with_file_name(format!("{prefix}{secs}"));
    std::fs::rename(file, &aside)?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message_and_place() {
        let caught = quietly(|| -> u32 { panic!("page {} out of range", 7) });
        let err = caught.expect_err("the panic is caught");
        assert!(err.contains("page 7 out of range"), "{err}");
        assert!(err.contains("damage.rs:"), "{err}");
        assert_eq!(quietly(|| 5), Ok(5));
        assert!(!QUIET.with(Cell::get), "the scope ends with the call");
    }

    #[test]
    fn only_the_newest_damaged_file_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cache.redb");
        std::fs::write(dir.path().join("cache.redb.damaged-1"), b"old").expect("old");
        std::fs::write(dir.path().join("other.redb.damaged-1"), b"other").expect("other");
        std::fs::write(&file, b"new").expect("new");
        let aside = set_aside(&file).expect("set aside");
        assert!(!file.exists());
        assert_eq!(std::fs::read(&aside).expect("aside"), b"new");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let kept = aside
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert_eq!(names, [kept, "other.redb.damaged-1".to_string()]);
    }
}
