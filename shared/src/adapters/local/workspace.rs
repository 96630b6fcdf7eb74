//! Task workspaces, recycled.
//!
//! A workspace is `workspaces/<task_id>/` with an empty `.tmp/` (the task's `TMPDIR`) and,
//! when the task file comes from the tasks directory, a copy of it in `tasks/`. Creating and
//! removing files and directories is the dearest thing a short task does to the file system
//! (on ext4 with `discard`, an `rmdir` costs milliseconds and each new inode a fraction of
//! one), so a removed workspace that holds nothing but that skeleton is parked in
//! `workspaces/.free/`, and the next task takes it over with a rename. Its copy of the tasks
//! directory is parked too, but only what is still equal to the tasks directory (anything a
//! task added or changed is removed first), and the next task brings it level with the tasks
//! directory ([`sync_tasks`]) instead of copying every file again. Anything else a task left
//! behind is removed as before.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Where emptied workspaces wait for their next task.
const FREE: &str = ".free";
/// The task's temporary directory inside its workspace.
pub const TMP: &str = ".tmp";
/// The copy of the tasks directory inside a workspace.
pub const TASKS: &str = "tasks";
/// At most this many emptied workspaces are kept.
const MAX_FREE: u64 = 1024;
/// A file of the tasks directory up to this size is compared with its copy before it is
/// copied again; a larger one is always copied.
const COMPARED_UP_TO: u64 = 1 << 20;

/// Names seen in each `.free/` directory and not taken yet, so that a start does not read
/// the whole directory (a parked workspace gone meanwhile is skipped).
static PARKED: Mutex<Option<HashMap<PathBuf, Vec<OsString>>>> = Mutex::new(None);

/// The next parked workspace of `free` that may still be there: from the names seen
/// before, else from a fresh read of the directory.
fn next_parked(free: &Path) -> Option<PathBuf> {
    let mut parked = PARKED.lock().unwrap_or_else(PoisonError::into_inner);
    let names = parked
        .get_or_insert_with(HashMap::new)
        .entry(free.to_owned())
        .or_default();
    if names.is_empty() {
        let entries = std::fs::read_dir(free).ok()?;
        names.extend(entries.flatten().map(|entry| entry.file_name()));
    }
    names.pop().map(|name| free.join(name))
}

/// Creates the workspace `workspace` (in its parent, the workspaces directory) with its
/// `.tmp`, taking over a parked one when there is one. `with_tasks`: the task will copy the
/// tasks directory in (a parked workspace's copy stays for [`sync_tasks`]); without, a
/// parked copy is removed.
pub fn create(workspace: &Path, with_tasks: bool) -> io::Result<()> {
    if let Some(free) = workspace.parent().map(|root| root.join(FREE)) {
        while let Some(parked) = next_parked(&free) {
            // Another process may take the same one first: then the rename fails.
            if std::fs::rename(&parked, workspace).is_ok() {
                let tasks = workspace.join(TASKS);
                if !with_tasks && tasks.exists() {
                    std::fs::remove_dir_all(tasks)?;
                }
                return Ok(());
            }
        }
    }
    std::fs::create_dir_all(workspace.join(TMP))
}

/// Makes `to` a copy of the directory tree `from` (files and directories; links are
/// followed): what is not equal to its source in `from` (size, permissions, bytes) is
/// removed, then what is missing is copied; an equal file is left as it is.
pub fn sync_tasks(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    prune(to, Some(from))?;
    copy_missing(from, to)
}

/// Copies into `to` what of the tree `from` it does not have (after [`prune`], what it
/// has is equal).
fn copy_missing(from: &Path, to: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        if source.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_missing(&source, &target)?;
        } else if source.is_file() && !target.exists() {
            std::fs::copy(&source, &target)?;
        }
    }
    Ok(())
}

/// Removes from the copy `copy` whatever is not equal to its counterpart in `source`
/// (everything, without a source).
fn prune(copy: &Path, source: Option<&Path>) -> io::Result<()> {
    for entry in std::fs::read_dir(copy)? {
        let entry = entry?;
        let path = entry.path();
        let original = source.map(|dir| dir.join(entry.file_name()));
        let kind = entry.file_type()?;
        let keep = match &original {
            Some(original) if kind.is_dir() && original.is_dir() => {
                prune(&path, Some(original))?;
                true
            }
            Some(original) if kind.is_file() => same_file_content(original, &path)?,
            _ => false,
        };
        if !keep {
            remove_any(&path)?;
        }
    }
    Ok(())
}

/// Whether `target` is a plain file with the size, permissions and bytes of the file
/// `source`.
fn same_file_content(source: &Path, target: &Path) -> io::Result<bool> {
    let (Ok(meta), Ok(target_meta)) = (std::fs::metadata(source), target.symlink_metadata()) else {
        return Ok(false);
    };
    if !meta.is_file()
        || !target_meta.is_file()
        || target_meta.len() != meta.len()
        || target_meta.mode() != meta.mode()
        || meta.len() > COMPARED_UP_TO
    {
        return Ok(false);
    }
    Ok(std::fs::read(source)? == std::fs::read(target)?)
}

/// Removes a file, a link or a whole directory; `Ok` when nothing is there.
fn remove_any(path: &Path) -> io::Result<()> {
    let removed = match path.symlink_metadata() {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes the workspace `workspace` of a task whose tasks directory is `tasks_dir`; `Ok`
/// when it does not exist.
pub fn remove(workspace: &Path, tasks_dir: Option<&Path>) -> io::Result<()> {
    match recycle(workspace, tasks_dir) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    match std::fs::remove_dir_all(workspace) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Parks the workspace in `.free/` when it holds only the skeleton (an empty `.tmp/`, a
/// `tasks/` copy, pruned to what is still equal to `tasks_dir`). False when it holds
/// anything else.
fn recycle(workspace: &Path, tasks_dir: Option<&Path>) -> io::Result<bool> {
    let Some((root, name)) = workspace.parent().zip(workspace.file_name()) else {
        return Ok(false);
    };
    let mut has_tmp = false;
    for entry in std::fs::read_dir(workspace)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        match entry.file_name().to_str() {
            Some(TMP) if kind.is_dir() => {
                if std::fs::read_dir(entry.path())?.next().is_some() {
                    return Ok(false);
                }
                has_tmp = true;
            }
            Some(TASKS) if kind.is_dir() => {}
            _ => return Ok(false),
        }
    }
    let free = root.join(FREE);
    if !has_tmp || free_count(&free) >= MAX_FREE {
        return Ok(false);
    }
    let tasks = workspace.join(TASKS);
    if tasks.is_dir() {
        prune(&tasks, tasks_dir)?;
    }
    std::fs::create_dir_all(&free)?;
    let parked: PathBuf = free.join(name);
    std::fs::rename(workspace, &parked)?;
    Ok(true)
}

/// How many workspaces are parked: from the directory's link count (each subdirectory adds
/// one) where the file system keeps it, else by reading the directory.
fn free_count(free: &Path) -> u64 {
    match std::fs::metadata(free) {
        Ok(meta) if meta.nlink() >= 2 => meta.nlink() - 2,
        Ok(_) => std::fs::read_dir(free).map_or(0, |entries| entries.count() as u64),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tasks directory with `ok.sh` and `lib/util.sh`.
    fn tasks_dir(root: &Path) -> PathBuf {
        let dir = root.join("deployment-tasks");
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::write(dir.join("ok.sh"), "exit 0\n").unwrap();
        std::fs::write(dir.join("lib").join("util.sh"), "util\n").unwrap();
        dir
    }

    fn inode(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn a_removed_skeleton_is_taken_over_with_its_unchanged_copy_of_the_tasks() {
        let root = tempfile::tempdir().unwrap();
        let source = tasks_dir(root.path());
        let workspaces = root.path().join("workspaces");
        let first = workspaces.join("first");
        create(&first, true).unwrap();
        sync_tasks(&source, &first.join(TASKS)).unwrap();
        let copied = inode(&first.join(TASKS).join("ok.sh"));
        remove(&first, Some(&source)).unwrap();
        assert!(!first.exists());
        assert_eq!(free_count(&workspaces.join(FREE)), 1);

        let second = workspaces.join("second");
        create(&second, true).unwrap();
        assert!(second.join(TMP).is_dir());
        assert_eq!(free_count(&workspaces.join(FREE)), 0);
        sync_tasks(&source, &second.join(TASKS)).unwrap();
        assert_eq!(
            inode(&second.join(TASKS).join("ok.sh")),
            copied,
            "an unchanged file is not copied again"
        );
        assert_eq!(
            std::fs::read_to_string(second.join(TASKS).join("lib").join("util.sh")).unwrap(),
            "util\n"
        );

        // A task that copies no tasks directory finds none.
        remove(&second, Some(&source)).unwrap();
        let third = workspaces.join("third");
        create(&third, false).unwrap();
        assert!(third.join(TMP).is_dir());
        assert!(!third.join(TASKS).exists());
    }

    #[test]
    fn what_a_task_changed_in_its_copy_never_reaches_the_next_task() {
        let root = tempfile::tempdir().unwrap();
        let source = tasks_dir(root.path());
        let workspaces = root.path().join("workspaces");
        let first = workspaces.join("first");
        create(&first, true).unwrap();
        let copy = first.join(TASKS);
        sync_tasks(&source, &copy).unwrap();
        std::fs::write(copy.join("ok.sh"), "echo secret-of-the-first-task\n").unwrap();
        std::fs::write(copy.join("added.txt"), "secret-of-the-first-task").unwrap();
        std::fs::create_dir_all(copy.join("lib").join("cache")).unwrap();
        std::fs::write(copy.join("lib").join("cache").join("x"), "secret").unwrap();
        remove(&first, Some(&source)).unwrap();

        // Parked, the copy holds only what still equals the tasks directory.
        let parked = workspaces.join(FREE).join("first").join(TASKS);
        assert!(!parked.join("ok.sh").exists());
        assert!(!parked.join("added.txt").exists());
        assert!(!parked.join("lib").join("cache").exists());
        assert!(parked.join("lib").join("util.sh").exists());

        // And the next task's sync brings it level with the (since changed) tasks directory.
        std::fs::write(source.join("lib").join("util.sh"), "util v2\n").unwrap();
        let second = workspaces.join("second");
        create(&second, true).unwrap();
        sync_tasks(&source, &second.join(TASKS)).unwrap();
        let read = |path: &[&str]| {
            let mut file = second.join(TASKS);
            file.extend(path);
            std::fs::read_to_string(file).unwrap()
        };
        assert_eq!(read(&["ok.sh"]), "exit 0\n");
        assert_eq!(read(&["lib", "util.sh"]), "util v2\n");
        let names: Vec<_> = std::fs::read_dir(second.join(TASKS))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_workspace_with_anything_else_in_it_is_removed_whole() {
        let root = tempfile::tempdir().unwrap();
        for (name, extra) in [("a", "output.txt"), ("b", ".tmp/scratch")] {
            let workspace = root.path().join(name);
            create(&workspace, true).unwrap();
            std::fs::write(workspace.join(extra), "left behind").unwrap();
            remove(&workspace, None).unwrap();
            assert!(!workspace.exists());
        }
        assert_eq!(free_count(&root.path().join(FREE)), 0);
        // Removing what does not exist is fine.
        remove(&root.path().join("never"), None).unwrap();
    }
}
